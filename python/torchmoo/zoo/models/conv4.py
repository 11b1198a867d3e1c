"""Conv-4 backbone with the self-supervised heads of PSST (Chen et al., supplement B.1)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from torchmoo.zoo.models.base import MultiTaskModel, _check_dims, _check_positive
from torchmoo.zoo.models.cosine import CosineClassifier

__all__ = ["Conv4", "RotationHead", "RelativePatchLocationHead", "Conv4SelfSupervised"]


class Conv4(nn.Module):
    """Four blocks of ``conv 3x3 (padding 1) -> BatchNorm -> ReLU -> maxpool 2``.

    ``channels=(64, 64, 64, 64)`` is Conv-4-64 (113,088 parameters on RGB input): 84 x 84 images give a
    5 x 5 x 64 map (1,600 features), 32 x 32 images 2 x 2 x 64 (256 features). The same blocks make
    the CNN4 of SIMOL 5.2 and MAML, which on MiniImageNet has 32 channels per block
    (``channels=(32, 32, 32, 32)``, Finn et al. 2017).

    Args:
        in_channels: input channels.
        channels: output channels of the four blocks.
        flatten: return ``(B, C * h * w)`` features instead of the ``(B, C, h, w)`` map.

    Input ``(B, in_channels, H, W)``; output ``(B, channels[-1] * h * w)`` (``flatten``) or
    ``(B, channels[-1], h, w)``, with ``h = H // 2 ** len(channels)`` (:meth:`output_side`).

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or ``channels`` empty.
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 64, 64, 64), flatten: bool = True) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels)
        channels = _check_dims("channels", channels)
        blocks: List[nn.Module] = []
        c = in_channels
        for out in channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.flatten = flatten
        self.out_channels = c
        self.num_blocks = len(channels)

    def output_side(self, image_size: int) -> int:
        """Side of the output map for ``image_size`` x ``image_size`` input (each block halves, rounding down)."""
        side = image_size
        for _ in range(self.num_blocks):
            side //= 2
        return side

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> the flattened features or the feature map (see the class)."""
        z = self.blocks(x)
        return z.flatten(1) if self.flatten else z


class RotationHead(nn.Module):
    """Rotation prediction network of PSST B.1 for Conv-4: two ``conv 3x3 -> BN -> ReLU`` layers
    (128 and 256 channels for Conv-4-64), global average pooling, and a linear classifier over the
    four rotations {0, 90, 180, 270} degrees.

    Input: the backbone's feature map ``(B, in_channels, h, w)``; output ``(B, num_rotations)``.

    Raises:
        TypeError / ValueError: a size that is not a positive int, or ``channels`` empty.
    """

    def __init__(self, in_channels: int = 64, channels: Sequence[int] = (128, 256), num_rotations: int = 4) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_rotations=num_rotations)
        channels = _check_dims("channels", channels)
        layers: List[nn.Module] = []
        c = in_channels
        for out in channels:
            # no conv bias: BatchNorm's shift makes it redundant
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_rotations)]
        self.net = nn.Sequential(*layers)

    def forward(self, feature_map: Tensor) -> Tensor:
        """``(B, in_channels, h, w)`` -> logits ``(B, num_rotations)``; ``ValueError`` if not 4-D."""
        if feature_map.dim() != 4:
            raise ValueError(f"RotationHead expects a (B, C, h, w) feature map, got shape {tuple(feature_map.shape)}.")
        return self.net(feature_map)


class RelativePatchLocationHead(nn.Module):
    """Relative patch location network of PSST B.1 (Doersch et al. 2015).

    The features of the central patch ``x0`` and of one neighbour ``xp`` are concatenated and sent
    through ``Linear(2d, hidden) -> BN -> ReLU -> Linear(hidden, 8)`` (hidden 256 for Conv-4-64).
    Patches are numbered row-major over the 3 x 3 grid, the centre is number 4; neighbour ``p`` of
    ``(0, 1, 2, 3, 5, 6, 7, 8)`` has the label ``0..7`` in that order.

    Args:
        feature_dim: ``d``, the size of one patch's features.
        hidden: width of the hidden layer.
        num_positions: outputs of the classifier (8 neighbours).

    Raises:
        TypeError / ValueError: an argument that is not a positive int.
    """

    NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)

    def __init__(self, feature_dim: int = 64, hidden: int = 256, num_positions: int = 8) -> None:
        super().__init__()
        _check_positive(feature_dim=feature_dim, hidden=hidden, num_positions=num_positions)
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Linear(2 * feature_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_positions),
        )

    def pair_logits(self, center: Tensor, other: Tensor) -> Tensor:
        """Logits ``(N, 8)`` of the position of ``other`` relative to ``center``, both ``(N, d)``."""
        return self.net(torch.cat([center, other], dim=1))

    def forward(self, patch_features: Tensor) -> Tensor:
        """``(B, 9, d)`` features of the 3 x 3 patch grid -> ``(B, 8, 8)`` logits; the target of
        ``[:, k]`` is ``k`` (see :meth:`targets`). ``ValueError`` for another shape."""
        if patch_features.dim() != 3 or patch_features.shape[1:] != (9, self.feature_dim):
            raise ValueError(
                f"RelativePatchLocationHead expects (B, 9, {self.feature_dim}) patch features, "
                f"got {tuple(patch_features.shape)}."
            )
        B = patch_features.shape[0]
        center = patch_features[:, 4:5].expand(B, 8, self.feature_dim)
        others = patch_features[:, list(self.NEIGHBOURS)]
        logits = self.pair_logits(center.reshape(B * 8, -1), others.reshape(B * 8, -1))
        return logits.reshape(B, 8, -1)

    @staticmethod
    def targets(batch_size: int, device: Optional[torch.device] = None) -> Tensor:
        """The int64 labels ``(B, 8)`` matching :meth:`forward`: ``targets[b, k] = k`` (an expanded,
        read-only view: ``.clone()`` it to write)."""
        return torch.arange(8, device=device).expand(batch_size, 8)


class Conv4SelfSupervised(MultiTaskModel):
    """Conv-4 shared by PSST's three tasks: few-shot object classification (a cosine classifier),
    rotation prediction and relative patch location (supplement B.1, Figure 1).

    ``forward(images, patches=None)`` returns ``[class_logits (B, num_classes), rotation_logits (B, 4)]``
    and, when ``patches`` ``(B, 9, C, p, p)`` (the 3 x 3 grid of one image each) are given, also
    ``location_logits (B, 8, 8)``. Rotating the inputs and cropping the patches is the method's job.

    Args:
        num_classes: base classes of the object classifier (64 for MiniImageNet).
        in_channels: image channels.
        image_size: side of the images (84 for MiniImageNet, 32 for CIFAR-FS).
        patch_size: side of the patches (24).
        channels: Conv-4 widths (Conv-4-64 by default).
        rotation_channels: the two conv widths of the rotation head (128, 256 for Conv-4-64).
        location_hidden: hidden width of the location head (256 for Conv-4-64).
        scale: initial inverse temperature of the cosine classifier.

    Raises:
        TypeError / ValueError: a size that is not a positive int; ``image_size`` or ``patch_size``
            below ``2 ** len(channels)``; a bad ``scale``.
    """

    def __init__(
        self,
        num_classes: int = 64,
        in_channels: int = 3,
        image_size: int = 84,
        patch_size: int = 24,
        channels: Sequence[int] = (64, 64, 64, 64),
        rotation_channels: Sequence[int] = (128, 256),
        location_hidden: int = 256,
        scale: float = 10.0,
    ) -> None:
        trunk = Conv4(in_channels, channels, flatten=False)
        side, patch_side = trunk.output_side(image_size), trunk.output_side(patch_size)
        if side < 1 or patch_side < 1:
            raise ValueError(
                f"image_size={image_size} and patch_size={patch_size} must be at least {2 ** trunk.num_blocks} "
                f"so that {trunk.num_blocks} poolings leave a non-empty map."
            )
        c = trunk.out_channels
        heads = [
            CosineClassifier(c * side * side, num_classes, scale=scale),
            RotationHead(c, rotation_channels),
            RelativePatchLocationHead(c * patch_side * patch_side, location_hidden),
        ]
        super().__init__(trunk, heads)
        self.image_size, self.patch_size = image_size, patch_size

    def forward(self, images: Tensor, patches: Optional[Tensor] = None) -> List[Tensor]:  # type: ignore[override]
        """``images`` ``(B, C, S, S)`` (and ``patches`` ``(B, 9, C, p, p)``) -> ``[class (B, num_classes),
        rotation (B, 4)]`` (+ ``location (B, 8, 8)``). ``ValueError`` for patches of another shape."""
        fmap = self.trunk(images)
        outs = [self.heads[0](fmap.flatten(1)), self.heads[1](fmap)]
        if patches is not None:
            if patches.dim() != 5 or patches.shape[1] != 9:
                raise ValueError(f"patches must be (B, 9, C, p, p), got shape {tuple(patches.shape)}.")
            B = patches.shape[0]
            pf = self.trunk(patches.flatten(0, 1)).flatten(1).reshape(B, 9, -1)
            outs.append(self.heads[2](pf))
        return outs
