"""UCI Census-Income (KDD) with the three tasks of Ma et al. (2020, supplement 2.4), from a CSV the
user points to: the raw ``census-income.data`` / ``census-income.test`` files (header-less, 42 fields)
or any CSV with a header naming the columns of the UCI description."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from torchmoo.zoo.data._paths import PathLike, find_file, resolve_root
from torchmoo.zoo.data.csv_table import CSVFormatError, CSVTable, normalise_name, read_csv_table

__all__ = ["CENSUS_ENV", "UCI_CENSUS_COLUMNS", "CensusEncoding", "CensusIncome"]

CENSUS_ENV = "TORCHMOO_CENSUS_DIR"

#: The 42 columns of census-income.data, in order (census-income.names), normalised.
UCI_CENSUS_COLUMNS: Tuple[str, ...] = tuple(
    normalise_name(c)
    for c in (
        "age", "class of worker", "detailed industry recode", "detailed occupation recode", "education",
        "wage per hour", "enroll in edu inst last wk", "marital stat", "major industry code",
        "major occupation code", "race", "hispanic origin", "sex", "member of a labor union",
        "reason for unemployment", "full or part time employment stat", "capital gains", "capital losses",
        "dividends from stocks", "tax filer stat", "region of previous residence", "state of previous residence",
        "detailed household and family stat", "detailed household summary in household", "instance weight",
        "migration code-change in msa", "migration code-change in reg", "migration code-move within reg",
        "live in this house 1 year ago", "migration prev res in sunbelt", "num persons worked for employer",
        "family members under 18", "country of birth father", "country of birth mother",
        "country of birth self", "citizenship", "own business or self employed",
        "fill inc questionnaire for veteran's admin", "veterans benefits", "weeks worked in year", "year",
        "income",
    )
)
#: Numeric columns that are measurements; the other numeric UCI columns are codes (one-hot encoded).
_CONTINUOUS = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
               "num_persons_worked_for_employer", "weeks_worked_in_year")
#: Task sources (not features) and the sampling weight (not a feature either).
_LABEL_COLUMNS = ("age", "education", "marital_stat")
_DROPPED = ("instance_weight",)
_COLLEGE = ("some college", "associates degree", "bachelors degree", "masters degree", "prof school degree",
            "doctorate degree")
_BELOW_COLLEGE = ("children", "less than 1st grade", "1st 2nd 3rd or 4th grade", "5th or 6th grade",
                  "7th and 8th grade", "9th grade", "10th grade", "11th grade", "12th grade no diploma",
                  "high school graduate")


@dataclass(frozen=True)
class CensusEncoding:
    """How rows become feature vectors: one-hot categories and standardised numbers, fitted on one
    file (the training set) and reused for the others, so every split has the same columns.

    Attributes:
        categorical: ``(column, categories)`` pairs; each category gets one feature, in this order.
        continuous: ``(column, mean, std)`` triples; the feature is ``(value - mean) / std``.
    """

    categorical: Tuple[Tuple[str, Tuple[str, ...]], ...]
    continuous: Tuple[Tuple[str, float, float], ...]

    @property
    def num_features(self) -> int:
        """The length of an encoded row: one per continuous column plus one per category."""
        return len(self.continuous) + sum(len(c) for _, c in self.categorical)

    def feature_names(self) -> List[str]:
        """``column`` for each number, ``column=category`` for each one-hot feature."""
        return [c for c, _, _ in self.continuous] + [f"{c}={v}" for c, cats in self.categorical for v in cats]

    @classmethod
    def fit(cls, table: CSVTable, exclude: Sequence[str] = (), standardize: bool = True) -> "CensusEncoding":
        """The encoding of ``table``'s columns, except the task sources (age, education, marital
        status), the sampling weight and ``exclude`` (names compare as :func:`normalise_name` does).

        Numeric UCI measurements, and unnamed columns whose cells are all numbers, become standardised
        features (mean and population std of this table; ``standardize=False`` keeps them as they are);
        every other column is one-hot over its sorted categories.

        Raises:
            CSVFormatError: a numeric column holds a cell that is not a finite number, or ``exclude``
                names a column the table does not have (a misspelt name would leave it among the features).
        """
        excluded = [normalise_name(c) for c in exclude]
        unknown = [c for c in excluded if c not in table.columns]
        if unknown:
            raise CSVFormatError(
                f"{table.path}: exclude names column(s) {', '.join(unknown)} that the file does not have; "
                f"the columns are {', '.join(table.columns)}."
            )
        skip = set(_LABEL_COLUMNS) | set(_DROPPED) | set(excluded)
        categorical, continuous = [], []
        for name in table.columns:
            if name in skip:
                continue
            known_numeric = name in _CONTINUOUS
            # a column that the UCI layout does not name is a measurement when every cell is a number
            if known_numeric or (name not in UCI_CENSUS_COLUMNS and table.is_numeric(name)):
                values = table.floats(name)
                mean, std = (float(values.mean()), float(values.std())) if standardize else (0.0, 1.0)
                continuous.append((name, mean, std if std > 0 else 1.0))
            else:
                categorical.append((name, tuple(sorted(set(table.strings(name))))))
        return cls(tuple(categorical), tuple(continuous))

    def transform(self, table: CSVTable) -> np.ndarray:
        """``(rows, num_features)`` float32; a category not seen when fitting encodes as all zeros.

        Raises:
            CSVFormatError: ``table`` lacks a column of the encoding, or a numeric cell is not a finite number.
        """
        table.require([c for c, _, _ in self.continuous] + [c for c, _ in self.categorical])
        out = np.zeros((len(table.rows), self.num_features), dtype=np.float32)
        for j, (name, mean, std) in enumerate(self.continuous):
            out[:, j] = (table.floats(name) - mean) / std
        offset = len(self.continuous)
        rows = np.arange(len(table.rows))
        for name, cats in self.categorical:
            lookup = {v: k for k, v in enumerate(cats)}
            idx = np.array([lookup.get(v, -1) for v in table.strings(name)])
            seen = idx >= 0
            out[rows[seen], offset + idx[seen]] = 1.0
            offset += len(cats)
        return out


def _education_label(table: CSVTable) -> np.ndarray:
    out = np.empty(len(table.rows), dtype=np.int64)
    for k, value in enumerate(table.strings("education")):
        v = " ".join(value.lower().split())
        if v.startswith(_COLLEGE):
            out[k] = 1
        elif v.startswith(_BELOW_COLLEGE):
            out[k] = 0
        else:
            raise CSVFormatError(
                f"{table.path}, line {table.lines[k]}: education {value!r} is not one of the levels of the UCI "
                f"Census-Income description (e.g. 'High school graduate', 'Bachelors degree(BA AB BS)')."
            )
    return out


def _is_census_header(first: List[str]) -> bool:
    return any(normalise_name(name) in UCI_CENSUS_COLUMNS for name in first)


def _uci_layout(fields: int) -> Optional[Sequence[str]]:
    return UCI_CENSUS_COLUMNS if fields == len(UCI_CENSUS_COLUMNS) else None


_NAMES = {
    "train": ("census-income.data", "census-income.data.gz", "census-income.csv", "train.csv"),
    "test": ("census-income.test", "census-income.test.gz", "census-income-test.csv", "test.csv"),
}


def _read(file: Path) -> CSVTable:
    table = read_csv_table(file, is_header=_is_census_header, default_columns=_uci_layout, what="CensusIncome")
    table.require(_LABEL_COLUMNS)
    return table


def _fit(base: Path, split: str, table: CSVTable, exclude: Sequence[str], standardize: bool) -> CensusEncoding:
    """The encoding of the training file: ``table`` itself, or for the test split of a folder the
    folder's training file (read here and dropped on return), so that the test file gets the training
    file's one-hot columns and statistics."""
    if split == "test" and base.is_dir():
        train_file = next((base / n for n in _NAMES["train"] if (base / n).is_file()), None)
        if train_file is not None:
            return CensusEncoding.fit(_read(train_file), exclude, standardize)
    return CensusEncoding.fit(table, exclude, standardize)


class CensusIncome(Dataset):
    """UCI Census-Income with Ma et al.'s three binary tasks: age >= 40, education at least college
    (some college, an associate's, bachelor's, master's, professional or doctoral degree), never married.

    Features: every other column, categorical ones one-hot, numeric ones standardised (the sampling
    weight ``instance weight`` is dropped; ``income`` is an ordinary categorical feature here, as
    Ma et al. do not use it as a task). The encoding is fitted on the training file and reused for the
    test file: ``test = CensusIncome(..., split="test", encoding=train.encoding)`` (without ``encoding``,
    a folder's training file is read again to fit it).

    ``dataset[i]`` is ``(x (num_features,) float32, y (3,) int64)``.

    Args:
        path: a CSV file, or a folder holding ``census-income.data`` (train) and ``census-income.test``
            (test); None reads ``$TORCHMOO_CENSUS_DIR``.
        split: ``"train"`` or ``"test"`` (which file of a folder to read).
        encoding: a fitted :class:`CensusEncoding`; None fits one on the training file: this file for
            ``split="train"`` or a file path, the folder's training file for ``split="test"`` (this file
            when the folder has none), so that both splits have the same features.
        exclude: more columns to leave out of the features.
        standardize: standardise the numeric columns (when fitting).

    Raises:
        DataNotFoundError: no path given or found, or the expected file is not in the folder.
        CSVFormatError: a malformed file, a missing column, an education value that is not a UCI level,
            or an ``exclude`` name that is not a column.
        ValueError: an unknown ``split``.
    """

    TASKS = ("age>=40", "education>=college", "never_married")
    num_tasks = 3

    def __init__(
        self,
        path: Optional[PathLike] = None,
        split: str = "train",
        encoding: Optional[CensusEncoding] = None,
        exclude: Sequence[str] = (),
        standardize: bool = True,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        base = resolve_root(path, CENSUS_ENV, "CensusIncome", "the UCI Census-Income CSV files", "path")
        file = find_file(base, _NAMES[split], ("",), "CensusIncome", CENSUS_ENV, "path")
        table = _read(file)
        self.encoding = encoding if encoding is not None else _fit(base, split, table, exclude, standardize)
        self.features = torch.from_numpy(self.encoding.transform(table))
        age = table.floats("age")
        marital = [" ".join(v.lower().split()) for v in table.strings("marital_stat")]
        labels = np.stack(
            [(age >= 40).astype(np.int64), _education_label(table), np.array([m == "never married" for m in marital], dtype=np.int64)],
            axis=1,
        )
        self.targets = torch.from_numpy(labels)
        self.path: Path = file

    @property
    def num_features(self) -> int:
        """The length of a feature vector (that of :attr:`encoding`)."""
        return self.features.shape[1]

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.features[index], self.targets[index]

    def tensors(self) -> Tuple[Tensor, Tensor]:
        """Features ``(N, num_features)`` and targets ``(N, 3)``."""
        return self.features, self.targets
