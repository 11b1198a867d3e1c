"""Fully connected networks: the Census and SARCOS multi-task MLPs and the sinusoid regressor."""

from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn

from torchmoo.zoo.models.base import MultiTaskModel, _check_dims, _check_positive

__all__ = ["mlp", "MultiHeadMLP", "CensusMLP", "SarcosMLP", "SinusoidMLP"]


def mlp(in_features: int, hidden: Sequence[int], out_features: int = 0) -> nn.Sequential:
    """``Linear -> ReLU`` for each size in ``hidden``, then a final ``Linear`` if ``out_features > 0``.

    Input ``(..., in_features)``; output ``(..., out_features)``, or ``(..., hidden[-1])`` without the
    final layer (``(..., in_features)`` when both are empty). The sizes are not validated here
    (:class:`MultiHeadMLP` validates its own).
    """
    layers: List[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if out_features > 0:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MultiHeadMLP(MultiTaskModel):
    """An MLP trunk (``Linear -> ReLU`` per hidden size) and one linear head per task.

    Args:
        in_features: input size.
        hidden: sizes of the shared hidden layers.
        head_dims: output size of each task's head.

    Input ``(B, in_features)``; output a list with one ``(B, head_dims[i])`` tensor per task.

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or ``hidden`` / ``head_dims`` empty.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], head_dims: Sequence[int]) -> None:
        _check_positive(in_features=in_features)
        hidden = _check_dims("hidden", hidden)
        head_dims = _check_dims("head_dims", head_dims)
        super().__init__(mlp(in_features, hidden), [nn.Linear(hidden[-1], d) for d in head_dims])


class CensusMLP(MultiHeadMLP):
    """Ma et al. (supplement 2.4): 487 -> 256 -> 128 shared, one 2-way head per task.

    With the defaults: 124,928 + 32,896 + 3 x 258 = 158,598 parameters, the paper's count.
    Input ``(B, in_features)``; output ``num_tasks`` tensors ``(B, 2)`` (logits). Raises as
    :class:`MultiHeadMLP`.
    """

    def __init__(self, in_features: int = 487, num_tasks: int = 3, hidden: Sequence[int] = (256, 128)) -> None:
        _check_positive(num_tasks=num_tasks)
        super().__init__(in_features, hidden, [2] * num_tasks)


class SarcosMLP(MultiHeadMLP):
    """MT-SGD (supplement 2.1.3): 21 -> 256 -> 256 -> 256 -> 7, one scalar output per joint torque.

    The last ``256 x 7`` layer is kept as seven ``256 -> 1`` heads (the same 1,799 parameters) so
    that each task owns its output row: 5,632 + 65,792 + 65,792 + 1,799 = 139,015 parameters.
    Input ``(B, in_features)``; output ``num_tasks`` tensors ``(B,)``. Raises as :class:`MultiHeadMLP`.
    """

    def __init__(self, in_features: int = 21, num_tasks: int = 7, hidden: Sequence[int] = (256, 256, 256)) -> None:
        _check_positive(num_tasks=num_tasks)
        super().__init__(in_features, hidden, [1] * num_tasks)

    def forward(self, x: Tensor) -> List[Tensor]:
        """``(B, in_features)`` -> ``num_tasks`` torques ``(B,)``."""
        return [out.squeeze(-1) for out in super().forward(x)]


class SinusoidMLP(nn.Module):
    """The few-shot regressor of SIMOL 5.1: two hidden layers of 32 with ReLU, ``1 -> 32 -> 32 -> 1``.

    1 x 32 + 32 + 32 x 32 + 32 + 32 + 1 = 1,153 parameters. ``hidden=(40, 40)`` gives the network of
    Finn et al. (2017), 1,761 parameters. Input ``(..., in_features)``; output ``(..., out_features)``
    (``(..., 1)`` by default).

    Raises:
        TypeError: a size that is not an int.
        ValueError: a size below 1, or ``hidden`` empty.
    """

    def __init__(self, hidden: Sequence[int] = (32, 32), in_features: int = 1, out_features: int = 1) -> None:
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.net = mlp(in_features, _check_dims("hidden", hidden), out_features)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``."""
        return self.net(x)
