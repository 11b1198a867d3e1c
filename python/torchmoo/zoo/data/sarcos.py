"""SARCOS inverse dynamics (21 inputs, 7 joint torques; MT-SGD supplement 2.1.3) from a CSV file."""

from __future__ import annotations

from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchmoo.zoo.data._paths import PathLike, find_file, resolve_root
from torchmoo.zoo.data.csv_table import CSVFormatError, _is_number, normalise_name, read_csv_table

__all__ = ["SARCOS_ENV", "SarcosStats", "Sarcos"]

SARCOS_ENV = "TORCHMOO_SARCOS_DIR"
_IN, _OUT = 21, 7


class SarcosStats(NamedTuple):
    """Standardisation of inputs and targets: ``(x - x_mean) / x_std``, ``(y - y_mean) / y_std``.

    ``x_mean``, ``x_std``: ``(21,)``; ``y_mean``, ``y_std``: ``(7,)``; float64 in :attr:`Sarcos.stats`
    (any float dtype is accepted as ``stats=``).
    """

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor


def _positional(fields: int) -> Optional[Sequence[str]]:
    if fields != _IN + _OUT:
        return None
    return [f"x{i}" for i in range(_IN)] + [f"y{i}" for i in range(_OUT)]


def _header(first: List[str]) -> bool:
    # the cells as written: normalised, "1.5e-03" would read "1_5e_03" and a data row would pass for a header
    if not all(_is_number(c) for c in first):
        return True
    # positional names 0..n-1 (what pandas writes for an unnamed array) or 1..n are a header too
    n = len(first)
    return first in ([str(i) for i in range(n)], [str(i + 1) for i in range(n)])


_NAMES = {"train": ("sarcos_inv.csv", "train.csv"), "test": ("sarcos_inv_test.csv", "test.csv")}


def _read(
    file: Path, input_columns: Optional[Sequence[str]], target_columns: Optional[Sequence[str]]
) -> Tuple[Tensor, Tensor]:
    """Inputs ``(N, 21)`` and targets ``(N, 7)``, float64, of one CSV file."""
    table = read_csv_table(file, is_header=_header, default_columns=_positional, what="Sarcos")
    if input_columns is None:
        if len(table.columns) != _IN + _OUT:
            raise CSVFormatError(
                f"{file}: {len(table.columns)} columns; SARCOS has {_IN + _OUT} (21 inputs, then 7 torques). "
                f"Name the columns to use with input_columns= and target_columns=."
            )
        xs, ys = table.columns[:_IN], table.columns[_IN:]
    else:
        xs = [normalise_name(c) for c in input_columns]
        ys = [normalise_name(c) for c in target_columns]
        if len(xs) != _IN or len(ys) != _OUT:
            raise ValueError(f"input_columns must name {_IN} columns and target_columns {_OUT}, got {len(xs)} and {len(ys)}.")
        table.require(xs + ys)
    x = torch.from_numpy(np.stack([table.floats(c) for c in xs], axis=1))
    y = torch.from_numpy(np.stack([table.floats(c) for c in ys], axis=1))
    return x, y


def _fit_stats(x: Tensor, y: Tensor, standardize: bool) -> SarcosStats:
    ones_x, ones_y = torch.ones(_IN, dtype=torch.float64), torch.ones(_OUT, dtype=torch.float64)
    if not standardize:
        return SarcosStats(torch.zeros(_IN, dtype=torch.float64), ones_x, torch.zeros(_OUT, dtype=torch.float64), ones_y)
    x_std = x.std(0, unbiased=False) if x.shape[0] > 1 else ones_x
    y_std = y.std(0, unbiased=False) if y.shape[0] > 1 else ones_y
    # a constant column stays as it is, shifted to 0
    return SarcosStats(x.mean(0), torch.where(x_std > 0, x_std, ones_x), y.mean(0), torch.where(y_std > 0, y_std, ones_y))


def _check_stats(stats: SarcosStats) -> SarcosStats:
    """``stats`` as float64 tensors; a wrong shape would broadcast silently, so it is an error."""
    if not isinstance(stats, tuple) or len(stats) != 4:
        raise ValueError(f"stats must be a SarcosStats (x_mean, x_std, y_mean, y_std), got {type(stats).__name__}.")
    out = []
    for name, value, size in zip(SarcosStats._fields, stats, (_IN, _IN, _OUT, _OUT)):
        t = torch.as_tensor(value, dtype=torch.float64, device="cpu")
        if tuple(t.shape) != (size,):
            raise ValueError(f"stats.{name} must have shape ({size},), got {tuple(t.shape)}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"stats.{name} must be finite.")
        if name.endswith("std") and not bool((t > 0).all()):
            raise ValueError(f"stats.{name} must be positive.")
        out.append(t)
    return SarcosStats(*out)


class Sarcos(Dataset):
    """SARCOS as a 7-task regression data set: ``dataset[i]`` is ``(x (21,) float32, y (7,) float32)``.

    The CSV has 28 columns, the 21 inputs (7 joint positions, velocities, accelerations) then the 7
    torques, with or without a header (the layout of ``sarcos_inv.mat`` saved as CSV); or a header and
    ``input_columns`` / ``target_columns`` naming the columns to use.

    Args:
        path: a CSV file or a folder holding ``sarcos_inv.csv`` (train) and ``sarcos_inv_test.csv``
            (test); None reads ``$TORCHMOO_SARCOS_DIR``.
        split: ``"train"`` or ``"test"`` (which file of a folder to read).
        input_columns, target_columns: column names (21 and 7 of them) in a file with a header.
        standardize: standardise inputs and targets.
        stats: the :class:`SarcosStats` to standardise with (the training set's, for the test set);
            None computes them on the training file: this file for ``split="train"`` or a file path,
            the folder's training file for ``split="test"`` (this file when the folder has none), so
            that both splits are standardised alike without the test set's own statistics.

    Attributes:
        inputs: ``(N, 21)`` float32. targets: ``(N, 7)`` float32. stats: the :class:`SarcosStats` used.
        path: the file read.

    Raises:
        DataNotFoundError: no path given or found, or the expected file is not in the folder.
        CSVFormatError: a malformed file, another number of columns than 28 without column names, a
            missing column, or a cell that is not a finite number.
        ValueError: an unknown ``split``; only one of ``input_columns`` / ``target_columns``, or not 21
            and 7 names; ``stats`` whose fields are not ``(21,)``, ``(21,)``, ``(7,)``, ``(7,)`` finite
            values with positive standard deviations.
    """

    num_tasks = _OUT

    def __init__(
        self,
        path: Optional[PathLike] = None,
        split: str = "train",
        input_columns: Optional[Sequence[str]] = None,
        target_columns: Optional[Sequence[str]] = None,
        standardize: bool = True,
        stats: Optional[SarcosStats] = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if (input_columns is None) != (target_columns is None):
            raise ValueError("give both input_columns and target_columns, or neither.")
        if stats is not None:
            stats = _check_stats(stats)
        base = resolve_root(path, SARCOS_ENV, "Sarcos", "the SARCOS CSV files", "path")
        file = find_file(base, _NAMES[split], ("",), "Sarcos", SARCOS_ENV, "path")
        x, y = _read(file, input_columns, target_columns)
        if stats is None:
            fit_x, fit_y = x, y
            if standardize and split == "test" and base.is_dir():
                # the test set is standardised with the training statistics, never its own
                train_file = next((base / n for n in _NAMES["train"] if (base / n).is_file()), None)
                if train_file is not None:
                    fit_x, fit_y = _read(train_file, input_columns, target_columns)
            stats = _fit_stats(fit_x, fit_y, standardize)
        self.stats = stats
        self.inputs = ((x - self.stats.x_mean) / self.stats.x_std).float()
        self.targets = ((y - self.stats.y_mean) / self.stats.y_std).float()
        self.path: Path = file

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.inputs[index], self.targets[index]

    def tensors(self) -> Tuple[Tensor, Tensor]:
        """Inputs ``(N, 21)`` and targets ``(N, 7)``."""
        return self.inputs, self.targets
