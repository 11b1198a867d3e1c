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
    if not all(_is_number(c) for c in first):
        return True
    # positional names 0..n-1 (what pandas writes for an unnamed array) or 1..n are a header too
    n = len(first)
    return first in ([str(i) for i in range(n)], [str(i + 1) for i in range(n)])


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
            None computes them on this file.

    Attributes:
        inputs: ``(N, 21)`` float32. targets: ``(N, 7)`` float32. stats: the :class:`SarcosStats` used.
        path: the file read.

    Raises:
        DataNotFoundError: no path given or found, or the expected file is not in the folder.
        CSVFormatError: a malformed file, another number of columns than 28 without column names, a
            missing column, or a cell that is not a finite number.
        ValueError: an unknown ``split``; only one of ``input_columns`` / ``target_columns``, or not 21
            and 7 names.
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
        base = resolve_root(path, SARCOS_ENV, "Sarcos", "the SARCOS CSV files", "path")
        names = ("sarcos_inv.csv", "train.csv") if split == "train" else ("sarcos_inv_test.csv", "test.csv")
        file = find_file(base, names, ("",), "Sarcos", SARCOS_ENV, "path")
        table = read_csv_table(file, is_header=_header, default_columns=_positional, what="Sarcos")
        if (input_columns is None) != (target_columns is None):
            raise ValueError("give both input_columns and target_columns, or neither.")
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
        if stats is None:
            ones_x, ones_y = torch.ones(_IN, dtype=x.dtype), torch.ones(_OUT, dtype=y.dtype)
            if standardize:
                x_std = x.std(0, unbiased=False) if x.shape[0] > 1 else ones_x
                y_std = y.std(0, unbiased=False) if y.shape[0] > 1 else ones_y
                # a constant column stays as it is, shifted to 0
                stats = SarcosStats(x.mean(0), torch.where(x_std > 0, x_std, ones_x), y.mean(0), torch.where(y_std > 0, y_std, ones_y))
            else:
                stats = SarcosStats(torch.zeros(_IN, dtype=x.dtype), ones_x, torch.zeros(_OUT, dtype=y.dtype), ones_y)
        self.stats = SarcosStats(*(s.to(torch.float64) for s in stats))
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
