"""Few-shot sinusoid regression (Finn et al. 2017; SIMOL 5.1): task ``y = a sin(x + b)``."""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["RegressionTask", "SinusoidTasks"]


class RegressionTask(NamedTuple):
    """One few-shot regression task: ``(K, 1)`` support and ``(Q, 1)`` query inputs and targets.

    A ``DataLoader`` batches tasks field by field: ``(T, K, 1)``, ...
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor


_AMPLITUDE, _PHASE, _POINTS = 1, 2, 3  # the streams of random numbers of a task family
_MASK = 2**64 - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a bijection that scatters keys."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _stream_key(seed: int, stream: int) -> np.ndarray:
    return _splitmix64(_splitmix64(np.array([seed & _MASK], dtype=np.uint64)) ^ np.uint64(stream))


def _uniform(seed: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Uniform numbers in ``[0, 1)`` (float64), number ``i`` a function of ``(seed, stream, index[i])`` alone.

    Each number is hashed from its own key, so task ``i`` does not depend on how many tasks there are,
    and no stream of one family is another family's stream (as consecutive integer seeds of
    :class:`torch.Generator` would be).
    """
    h = _splitmix64(_stream_key(seed, stream) ^ np.asarray(index, dtype=np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _check_range(name: str, r: Tuple[float, float]) -> Tuple[float, float]:
    lo, hi = (float(v) for v in r)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be a finite (low, high) pair with low <= high, got {r!r}.")
    return lo, hi


class SinusoidTasks(Dataset):
    """``num_tasks`` sinusoid tasks: amplitude ``a ~ U[0.1, 5.0]``, phase ``b ~ U[0, pi]`` (SIMOL 5.1),
    inputs ``x ~ U[-5, 5]`` (Finn et al.). SIMOL uses 160,000 meta-training and 1,000 meta-testing
    tasks with 5 or 2 shots.

    ``dataset[i]`` is a :class:`RegressionTask`; task ``i`` (its parameters and its points) depends
    on ``(seed, i)`` only (not on ``num_tasks``), so the same index always gives the same task, and
    families of different seeds share no random numbers.

    Args:
        num_tasks: number of tasks.
        num_support: ``K``, support points per task (the shots).
        num_query: ``Q``, query points per task.
        amplitude, phase, x_range: ``(low, high)`` of the uniform distributions.
        seed: seed of the task family (use different seeds for meta-training and meta-testing).

    Attributes:
        amplitude, phase: ``(num_tasks,)`` float32 parameters of the tasks.

    Raises:
        ValueError: ``num_tasks`` or ``num_support`` not an int ``>= 1``, ``num_query`` not an int ``>= 0``,
            ``seed`` not an int ``>= 0``, a range that is not a finite ``(low, high)`` with ``low <= high``.
        IndexError: (indexing) a task index out of range.
    """

    def __init__(
        self,
        num_tasks: int = 160_000,
        num_support: int = 5,
        num_query: int = 10,
        amplitude: Tuple[float, float] = (0.1, 5.0),
        phase: Tuple[float, float] = (0.0, math.pi),
        x_range: Tuple[float, float] = (-5.0, 5.0),
        seed: int = 0,
    ) -> None:
        for name, v, low in (("num_tasks", num_tasks, 1), ("num_support", num_support, 1), ("num_query", num_query, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}.")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        self.num_tasks, self.num_support, self.num_query, self.seed = num_tasks, num_support, num_query, seed
        a_lo, a_hi = _check_range("amplitude", amplitude)
        b_lo, b_hi = _check_range("phase", phase)
        self.x_range = _check_range("x_range", x_range)
        tasks = np.arange(num_tasks, dtype=np.uint64)
        self.amplitude = torch.from_numpy(a_lo + (a_hi - a_lo) * _uniform(seed, _AMPLITUDE, tasks)).float()
        self.phase = torch.from_numpy(b_lo + (b_hi - b_lo) * _uniform(seed, _PHASE, tasks)).float()
        self._points_key = _stream_key(seed, _POINTS)

    def __len__(self) -> int:
        return self.num_tasks

    def function(self, index: int, x: Tensor) -> Tensor:
        """The target function of task ``index`` at ``x`` (any shape): ``a sin(x + b)``."""
        return self.amplitude[index] * torch.sin(x + self.phase[index])

    def __getitem__(self, index: int) -> RegressionTask:
        if not -self.num_tasks <= index < self.num_tasks:
            raise IndexError(f"task index {index} out of range for {self.num_tasks} tasks.")
        index %= self.num_tasks
        # a generator per task, seeded by a hash of (seed, index): random access gives the same points
        # as sequential access, and the seeds are not small integers that other generators also use
        key = int(_splitmix64(self._points_key ^ np.uint64(index))[0]) >> 1
        g = torch.Generator().manual_seed(key)
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(self.num_support + self.num_query, 1, generator=g)
        y = self.function(index, x)
        k = self.num_support
        return RegressionTask(x[:k], y[:k], x[k:], y[k:])
