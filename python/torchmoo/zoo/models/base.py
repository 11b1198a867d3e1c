"""The multi-task model contract: a shared trunk, one head per task, one output per task."""

from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn

__all__ = ["MultiTaskModel", "count_parameters"]


class MultiTaskModel(nn.Module):
    """A shared trunk followed by one head per task.

    ``forward(x)`` returns a list with one output per task, ``[head_0(z), ..., head_{m-1}(z)]`` with
    ``z = trunk(x)``. Multi-objective methods take gradients with respect to
    :meth:`shared_parameters` (where the tasks conflict) and :meth:`task_parameters` (where they do not).

    Args:
        trunk: the shared feature extractor.
        heads: one module per task, each applied to the trunk's output.

    Raises:
        ValueError: ``heads`` is empty.
    """

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(heads) == 0:
            raise ValueError("a multi-task model needs at least one head.")
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    @property
    def num_tasks(self) -> int:
        """The number of tasks (heads)."""
        return len(self.heads)

    def features(self, x: Tensor) -> Tensor:
        """The shared representation ``trunk(x)``."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> List[Tensor]:
        """``[head_0(z), ..., head_{m-1}(z)]`` with ``z = trunk(x)``: one output per task."""
        z = self.trunk(x)
        return [head(z) for head in self.heads]

    def shared_parameters(self) -> List[nn.Parameter]:
        """The parameters of the trunk, shared by every task."""
        return list(self.trunk.parameters())

    def task_parameters(self, i: int) -> List[nn.Parameter]:
        """The parameters that only task ``i`` uses (its head).

        Raises:
            TypeError: ``i`` is not an int.
            ValueError: ``i`` is not in ``0 .. num_tasks - 1``.
        """
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"task index must be an int, got {type(i).__name__}.")
        if not 0 <= i < len(self.heads):
            raise ValueError(f"task index {i} is out of range for a model with {len(self.heads)} tasks.")
        return list(self.heads[i].parameters())


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """The number of scalar parameters of ``module``: those that require grad, or all of them when
    ``trainable_only`` is False (buffers are never counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}.")
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}.")


def _check_dims(name: str, dims: Sequence[int]) -> tuple:
    dims = tuple(dims)
    if len(dims) == 0:
        raise ValueError(f"{name} must name at least one size.")
    for d in dims:
        _check_positive(**{f"every entry of {name}": d})
    return dims

