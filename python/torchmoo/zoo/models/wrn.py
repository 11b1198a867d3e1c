"""Wide residual networks (Zagoruyko & Komodakis 2016), WRN-28-10 of PSST, written here."""

from __future__ import annotations

from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from torchmoo.zoo.models.base import _check_positive

__all__ = ["WideBlock", "WideResNet", "wrn28_10"]


class WideBlock(nn.Module):
    """Pre-activation block ``BN -> ReLU -> conv3x3 -> BN -> ReLU -> (dropout) -> conv3x3`` plus the
    input (through a 1x1 conv when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut: Optional[nn.Module] = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        # the projection sees the activated input, as in the reference implementation
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: a 3x3 conv with 16 channels, three groups of ``(depth - 4) / 6``
    wide blocks with ``16k, 32k, 64k`` channels, BN -> ReLU -> global average pooling.

    WRN-28-10 has 36,472,784 parameters as a feature extractor (640 features), 36,479,194 with a
    10-class linear classifier. PSST's MiniImageNet network downsamples in every group
    (``strides=(2, 2, 2)``: 80 x 80 -> 10 x 10 x 640); the standard CIFAR network (and PSST's CIFAR-FS
    one) uses ``strides=(1, 2, 2)`` (32 x 32 -> 8 x 8 x 640).

    Args:
        depth: ``6n + 4``.
        widen_factor: width multiplier ``k``.
        in_channels: image channels.
        strides: stride of the first block of each group.
        dropout: dropout between the two convs of each block.
        num_classes: add a linear classifier with this many outputs; ``None`` returns features.

    Input ``(B, in_channels, H, W)``; output ``(B, 64k)`` features or ``(B, num_classes)`` logits.

    Raises:
        TypeError / ValueError: ``depth``, ``widen_factor``, ``in_channels`` or ``num_classes`` not a
            positive int; ``depth`` not ``6n + 4`` with ``n >= 1``; ``strides`` not three values in {1, 2};
            ``dropout`` outside [0, 1).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_channels: int = 3,
        strides: Sequence[int] = (1, 2, 2),
        dropout: float = 0.0,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        _check_positive(depth=depth, widen_factor=widen_factor, in_channels=in_channels)
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}.")
        strides = tuple(strides)
        if len(strides) != 3 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be three values in {{1, 2}}, got {strides}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        groups = []
        c = 16
        for width, stride in zip(widths, strides):
            blocks = [WideBlock(c, width, stride, dropout)] + [WideBlock(width, width, 1, dropout) for _ in range(n - 1)]
            groups.append(nn.Sequential(*blocks))
            c = width
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(c)
        self.out_features = c
        self.fc: Optional[nn.Linear] = None
        if num_classes is not None:
            _check_positive(num_classes=num_classes)
            self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: Tensor) -> Tensor:
        """The last group's activated map ``(B, 64k, h, w)`` before pooling."""
        return F.relu(self.bn(self.groups(self.conv(x))))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W)`` -> features ``(B, 64k)``, or logits ``(B, num_classes)``."""
        z = self.feature_map(x).mean(dim=(2, 3))
        return z if self.fc is None else self.fc(z)


def wrn28_10(in_channels: int = 3, strides: Sequence[int] = (1, 2, 2), num_classes: Optional[int] = None) -> WideResNet:
    """WRN-28-10 (28 layers, width 10): the largest backbone of PSST, without dropout.

    ``in_channels``, ``strides`` and ``num_classes`` as :class:`WideResNet`; output ``(B, 640)`` features
    (36,472,784 parameters) or ``(B, num_classes)`` logits.
    """
    return WideResNet(28, 10, in_channels, strides, 0.0, num_classes)
