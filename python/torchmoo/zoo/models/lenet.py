"""Multi-head LeNets of Ma et al. (ICML 2020) and ParetoMTL (Lin et al., NeurIPS 2019)."""

from __future__ import annotations

from typing import Optional

from torch import nn

from torchmoo.zoo.models.base import MultiTaskModel, _check_positive

__all__ = ["MultiLeNet", "MultiLeNetSubset"]


class MultiLeNet(MultiTaskModel):
    """The modified LeNet of Ma et al. (supplement 2.3), one 10-way head per item of the image.

    ``conv(5x5, 10) -> ReLU -> maxpool 2 -> conv(5x5, 20) -> ReLU -> maxpool 2 -> FC 50 -> ReLU``
    shared, then one ``FC 50 -> num_classes`` head per task. On 28 x 28 inputs (MultiMNIST and its
    variants as built by Ma et al.) it has 22,350 parameters, the paper's count.
    With ``image_size=36`` the first kernel is 9 x 9, the network of ParetoMTL and MT-SGD on 36 x 36
    inputs (31,910 parameters).

    Args:
        num_tasks: number of heads (2 for the upper-left and lower-right items).
        num_classes: classes per task.
        image_size: side of the square input image.
        in_channels: input channels.
        conv1_kernel: kernel of the first convolution; default 9 when ``image_size == 36``, else 5.

    Input ``(B, in_channels, image_size, image_size)``; output a list of ``num_tasks`` tensors
    ``(B, num_classes)`` (logits).

    Raises:
        TypeError: an argument that is not an int.
        ValueError: an argument below 1, or an ``image_size`` too small for the two convolutions and
            poolings.
    """

    def __init__(
        self,
        num_tasks: int = 2,
        num_classes: int = 10,
        image_size: int = 28,
        in_channels: int = 1,
        conv1_kernel: Optional[int] = None,
    ) -> None:
        _check_positive(num_tasks=num_tasks, num_classes=num_classes, image_size=image_size, in_channels=in_channels)
        k1 = conv1_kernel if conv1_kernel is not None else (9 if image_size == 36 else 5)
        _check_positive(conv1_kernel=k1)
        side = ((image_size - k1 + 1) // 2 - 4) // 2  # conv k1, pool 2, conv 5, pool 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for MultiLeNet (conv1 kernel {k1}).")
        trunk = nn.Sequential(
            nn.Conv2d(in_channels, 10, k1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(10, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(20 * side * side, 50),
            nn.ReLU(),
        )
        super().__init__(trunk, [nn.Linear(50, num_classes) for _ in range(num_tasks)])


class MultiLeNetSubset(MultiTaskModel):
    """The 1,500-parameter LeNet of Ma et al. (supplement 2.2) for the 14 x 14 MultiMNIST subset.

    ``conv(5x5, 10, stride 2) -> ReLU -> maxpool 2 -> FC 40 -> 20 -> ReLU`` shared, then one
    ``FC 20 -> 10`` head per task: 260 + 820 + 2 x 210 = 1,500 parameters.

    Args:
        num_tasks: number of heads.
        num_classes: classes per task.
        image_size: side of the square single-channel input (14 in the paper; at least 7).

    Input ``(B, 1, image_size, image_size)``; output a list of ``num_tasks`` tensors ``(B, num_classes)``.

    Raises:
        TypeError: an argument that is not an int.
        ValueError: an argument below 1, or ``image_size < 7``.
    """

    def __init__(self, num_tasks: int = 2, num_classes: int = 10, image_size: int = 14) -> None:
        _check_positive(num_tasks=num_tasks, num_classes=num_classes, image_size=image_size)
        side = ((image_size - 5) // 2 + 1) // 2
        if image_size < 5 or side < 1:
            raise ValueError(f"image_size={image_size} is too small for MultiLeNetSubset (needs at least 7).")
        trunk = nn.Sequential(
            nn.Conv2d(1, 10, 5, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(10 * side * side, 20),
            nn.ReLU(),
        )
        super().__init__(trunk, [nn.Linear(20, num_classes) for _ in range(num_tasks)])
