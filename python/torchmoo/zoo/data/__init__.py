"""Data sets of the papers' experiments, built from files on disk or from data bundled with a
dependency; nothing is downloaded. A missing path raises :class:`DataNotFoundError` naming the
argument and the environment variable to set; a malformed file raises :class:`IDXError` or
:class:`CSVFormatError` (both ``ValueError``) naming the file and the problem.
"""

from torchmoo.zoo.data._paths import DataNotFoundError
from torchmoo.zoo.data.census import CENSUS_ENV, CensusEncoding, CensusIncome
from torchmoo.zoo.data.compose import PairedItems, compose_pairs
from torchmoo.zoo.data.csv_table import CSVFormatError
from torchmoo.zoo.data.digits import MultiDigits, render_digits
from torchmoo.zoo.data.episodes import EpisodeSampler, labels_of, split_episode
from torchmoo.zoo.data.image_folder import load_image_folder, resize_square
from torchmoo.zoo.data.idx import IDXError, read_idx, write_idx
from torchmoo.zoo.data.multimnist import (
    FASHION_MNIST_ENV,
    MNIST_ENV,
    MultiFashion,
    MultiFashionMNIST,
    MultiMNIST,
    MultiMNISTSubset,
)
from torchmoo.zoo.data.sarcos import SARCOS_ENV, Sarcos, SarcosStats
from torchmoo.zoo.data.sinusoid import RegressionTask, SinusoidTasks

__all__ = [
    "DataNotFoundError",
    "IDXError",
    "CSVFormatError",
    "read_idx",
    "write_idx",
    "compose_pairs",
    "PairedItems",
    "MultiDigits",
    "render_digits",
    "MultiMNIST",
    "MultiFashion",
    "MultiFashionMNIST",
    "MultiMNISTSubset",
    "MNIST_ENV",
    "FASHION_MNIST_ENV",
    "CensusIncome",
    "CensusEncoding",
    "CENSUS_ENV",
    "Sarcos",
    "SarcosStats",
    "SARCOS_ENV",
    "SinusoidTasks",
    "RegressionTask",
    "EpisodeSampler",
    "split_episode",
    "labels_of",
    "load_image_folder",
    "resize_square",
]
