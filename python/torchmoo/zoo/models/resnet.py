"""ResNet-18 (He et al. 2016) with one head per task, written here (no torchvision needed)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from torchmoo.zoo.models.base import MultiTaskModel, _check_dims, _check_positive

__all__ = ["BasicBlock", "ResNet18", "MultiHeadResNet18"]


class BasicBlock(nn.Module):
    """``conv3x3 -> BN -> ReLU -> conv3x3 -> BN`` plus the (projected when needed) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels, momentum=bn_momentum),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The ResNet-18 feature extractor: stem, four stages of two basic blocks (64, 128, 256, 512
    channels), global average pooling. 11,176,512 parameters on RGB input with the ImageNet stem.

    Args:
        in_channels: image channels.
        stem: ``"imagenet"``: 7x7 stride-2 conv and 3x3 stride-2 max pooling (the standard network);
            ``"cifar"``: one 3x3 stride-1 conv and no pooling, for small images.
        bn_momentum: BatchNorm momentum (0.1, as in Ma et al.).

    Input ``(B, in_channels, H, W)``; output ``(B, 512)``.

    Raises:
        TypeError / ValueError: ``in_channels`` not a positive int; an unknown ``stem``.
    """

    out_features = 512

    def __init__(self, in_channels: int = 3, stem: str = "imagenet", bn_momentum: float = 0.1) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels)
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64, momentum=bn_momentum),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        elif stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64, momentum=bn_momentum), nn.ReLU()
            )
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}.")
        stages = []
        c = 64
        for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(c, out, stride, bn_momentum), BasicBlock(out, out, 1, bn_momentum)))
            c = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> pooled features ``(B, 512)``."""
        return self.pool(self.stages(self.stem(x)))


class MultiHeadResNet18(MultiTaskModel):
    """ResNet-18 shared by all tasks, one linear head ``512 -> head_dims[i]`` per task.

    The default ``head_dims=(1, 2, 5)`` is Ma et al.'s UTKFace network (age regression, gender,
    race): 11,176,512 + 4,104 = 11,180,616 parameters, the paper's count.

    Input ``(B, in_channels, H, W)``; output a list of ``(B, head_dims[i])`` tensors.

    Args:
        head_dims: output size of each task's head.
        in_channels, stem, bn_momentum: as :class:`ResNet18`.

    Raises:
        TypeError / ValueError: ``head_dims`` empty or not positive ints; as :class:`ResNet18`.
    """

    def __init__(
        self,
        head_dims: Sequence[int] = (1, 2, 5),
        in_channels: int = 3,
        stem: str = "imagenet",
        bn_momentum: float = 0.1,
    ) -> None:
        head_dims = _check_dims("head_dims", head_dims)
        super().__init__(
            ResNet18(in_channels, stem, bn_momentum), [nn.Linear(ResNet18.out_features, d) for d in head_dims]
        )
