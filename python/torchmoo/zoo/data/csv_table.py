"""A small CSV reader for the tabular data sets: every error names the file, the line and the column."""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np

__all__ = ["CSVFormatError", "CSVTable", "normalise_name", "read_csv_table"]


class CSVFormatError(ValueError):
    """A CSV file is malformed or lacks what the data set needs; the message names the file and the problem."""


def normalise_name(name: str) -> str:
    """Column names compare case-insensitively, with runs of other characters than letters and
    digits read as one underscore: ``"Marital stat"`` and ``"marital_stat"`` are the same column."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class CSVTable:
    """The cells of a CSV file as stripped strings, with normalised column names.

    Attributes:
        path: the file.
        columns: normalised column names (from the header, or given for a header-less file).
        rows: one list of cells per data row.
        lines: the line number of each row in the file, for messages.
    """

    path: Path
    columns: List[str]
    rows: List[List[str]]
    lines: List[int]

    def index(self, name: str) -> int:
        """Position of column ``name``; raises :class:`CSVFormatError` listing the columns there are."""
        try:
            return self.columns.index(name)
        except ValueError:
            raise CSVFormatError(
                f"{self.path}: no column {name!r}; the columns are {', '.join(self.columns)}."
            ) from None

    def require(self, names: Sequence[str]) -> None:
        """Raise :class:`CSVFormatError` naming every missing column of ``names``."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise CSVFormatError(
                f"{self.path}: missing column(s) {', '.join(missing)}; the columns are {', '.join(self.columns)}."
            )

    def strings(self, name: str) -> List[str]:
        j = self.index(name)
        return [row[j] for row in self.rows]

    def floats(self, name: str) -> np.ndarray:
        """Column ``name`` as float64; a cell that is not a finite number raises with its line."""
        j = self.index(name)
        out = np.empty(len(self.rows), dtype=np.float64)
        for k, row in enumerate(self.rows):
            try:
                v = float(row[j])
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise CSVFormatError(
                    f"{self.path}, line {self.lines[k]}: column {name!r} must hold finite numbers, found {row[j]!r}."
                )
            out[k] = v
        return out

    def is_numeric(self, name: str) -> bool:
        j = self.index(name)
        return all(_is_number(row[j]) for row in self.rows)


def read_csv_table(
    path: Path,
    *,
    is_header: Callable[[List[str]], bool],
    default_columns: Optional[Callable[[int], Optional[Sequence[str]]]] = None,
    what: str = "the data set",
) -> CSVTable:
    """Read a comma-separated file (gzip-compressed or not).

    Args:
        path: the file.
        is_header: called on the first row's cells as written (stripped, not normalised: a number such
            as ``1.5e-03`` must stay recognisable as one); True when the row is a header.
        default_columns: for a header-less file, called with the number of fields of the first row; it
            returns the column names, or None when such a file cannot be read (an error then says so).
        what: the data set, for messages.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CSVFormatError: empty file, no usable header, a row with another number of fields than the header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {str(path)!r} does not exist.")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise CSVFormatError(f"{path}: gzip-compressed data is truncated or corrupt ({e}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CSVFormatError(f"{path}: not a UTF-8 text file ({e}).") from None
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    rows: List[List[str]] = []
    lines: List[int] = []
    columns: Optional[List[str]] = None
    try:
        for record in reader:
            cells = [c.strip() for c in record]
            if not any(cells):
                continue
            if columns is None:
                first = [normalise_name(c) for c in cells]
                if is_header(cells):
                    if len(set(first)) != len(first):
                        dup = sorted({c for c in first if first.count(c) > 1})
                        raise CSVFormatError(f"{path}, line {reader.line_num}: repeated column name(s) {', '.join(dup)}.")
                    columns = first
                    continue
                names = default_columns(len(cells)) if default_columns is not None else None
                if names is None:
                    raise CSVFormatError(
                        f"{path}, line {reader.line_num}: the first row is not a header that {what} can use, "
                        f"and a header-less file with {len(cells)} fields per row is not a layout it knows."
                    )
                columns = list(names)
            if len(cells) != len(columns):
                raise CSVFormatError(
                    f"{path}, line {reader.line_num}: {len(cells)} fields where the file has {len(columns)} columns."
                )
            rows.append(cells)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise CSVFormatError(f"{path}, line {reader.line_num}: {e}.") from None
    if columns is None:
        raise CSVFormatError(f"{path}: the file is empty.")
    if not rows:
        raise CSVFormatError(f"{path}: the file has a header but no data rows.")
    return CSVTable(path, columns, rows, lines)
