"""MultiMNIST, MultiFashion and MultiFashion+MNIST (Ma et al. 2020, supplement 2.3; ParetoMTL), built
from the MNIST / Fashion-MNIST IDX files the user points to, and the 14 x 14 MultiMNIST subset
(supplement 2.2). Nothing is downloaded.

Construction, exactly as in the paper: every source image of the split (60,000 train, 10,000 test) is
the upper-left item of one image; the lower-right item is drawn by a random permutation of the
(other) source set; both are moved by up to 2 pixels in each direction on a 36 x 36 canvas, which is
resized to 28 x 28 and normalised with mean 0.1307 and standard deviation 0.3081. Deterministic under
``seed``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torchmoo.zoo.data._paths import DataNotFoundError, PathLike, find_file, resolve_root
from torchmoo.zoo.data.compose import PairedItems, compose_pairs
from torchmoo.zoo.data.idx import IDXError, read_idx

__all__ = [
    "MNIST_ENV",
    "FASHION_MNIST_ENV",
    "MULTIMNIST_MEAN",
    "MULTIMNIST_STD",
    "load_idx_split",
    "MultiMNIST",
    "MultiFashion",
    "MultiFashionMNIST",
    "MultiMNISTSubset",
]

MNIST_ENV = "TORCHMOO_MNIST_DIR"
FASHION_MNIST_ENV = "TORCHMOO_FASHION_MNIST_DIR"
MULTIMNIST_MEAN, MULTIMNIST_STD = 0.1307, 0.3081
_SPLITS = {"train": ("train", 0), "test": ("t10k", 1)}


def _generator(seed: int, salt: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    return torch.Generator().manual_seed((seed * 1_000_003 + salt) % (2**63))


def _split_info(split: str) -> Tuple[str, int]:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return _SPLITS[split]


def _candidates(stem: str, kind: str) -> Tuple[str, ...]:
    base = f"{stem}-{kind}"  # e.g. train-images-idx3-ubyte
    dotted = base.replace("-idx", ".idx")  # the train-images.idx3-ubyte spelling of some mirrors
    return (base, base + ".gz", dotted, dotted + ".gz")


def load_idx_split(
    root: Optional[PathLike], split: str, dataset: str, env_var: str, argument: str = "root", folder: str = "MNIST"
) -> Tuple[Tensor, Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split of an MNIST-format data set.

    Looks in ``root``, ``root/raw`` and ``root/<folder>/raw`` (torchvision's layout) for
    ``train-images-idx3-ubyte`` / ``t10k-images-idx3-ubyte`` and the matching labels, gzip-compressed
    or not. ``root`` None reads ``env_var``.
    """
    stem, _ = _split_info(split)
    base = resolve_root(root, env_var, dataset, f"the {folder} IDX files", argument)
    if not base.is_dir():
        raise DataNotFoundError(f"{dataset}: {argument} must be the folder holding the {folder} IDX files, got the file {str(base)!r}.")
    subdirs = ("", "raw", f"{folder}/raw")
    images_path = find_file(base, _candidates(stem, "images-idx3-ubyte"), subdirs, dataset, env_var, argument)
    labels_path = find_file(base, _candidates(stem, "labels-idx1-ubyte"), subdirs, dataset, env_var, argument)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise IDXError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), found {images.dtype} of shape {tuple(images.shape)}."
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise IDXError(f"{labels_path}: expected uint8 labels of shape (N,), found {labels.dtype} of shape {tuple(labels.shape)}.")
    if labels.shape[0] != images.shape[0]:
        raise IDXError(
            f"{labels_path}: {labels.shape[0]} labels for the {images.shape[0]} images of {images_path.name}."
        )
    if images.shape[0] == 0:
        raise IDXError(f"{images_path}: the file holds no images.")
    if int(labels.max()) > 9:
        raise IDXError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}.")
    return images, labels.long()


def _right_indices(n_left: int, n_right: int, g: torch.Generator) -> Tensor:
    """A random permutation of the right source set, repeated (fresh each time) to length ``n_left``."""
    reps = math.ceil(n_left / n_right)
    return torch.cat([torch.randperm(n_right, generator=g) for _ in range(reps)])[:n_left]


def _build(
    left: Tuple[Tensor, Tensor], right: Tuple[Tensor, Tensor], g: torch.Generator, shift: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    (li, ll), (ri, rl) = left, right
    n = li.shape[0]
    left_idx = torch.arange(n)
    right_idx = _right_indices(n, ri.shape[0], g)
    images, positions = compose_pairs(li, ri[right_idx], shift=shift, generator=g)
    targets = torch.stack([ll, rl[right_idx]], dim=1)
    return images, targets, positions, torch.stack([left_idx, right_idx], dim=1)


class MultiMNIST(PairedItems):
    """MultiMNIST from the MNIST IDX files (``root`` or ``$TORCHMOO_MNIST_DIR``).

    ``dataset[i]`` is ``(image (1, 28, 28) float32, target (2,) int64)``; 60,000 train or 10,000 test
    images with full MNIST.

    Args:
        root: folder holding ``train-images-idx3-ubyte[.gz]`` etc. (also ``root/raw``, ``root/MNIST/raw``).
        split: ``"train"`` or ``"test"``.
        seed: the pairing and the moves are a function of ``(seed, split)``.
        shift: largest move of each item in each direction (2 in the paper).

    Raises:
        DataNotFoundError: neither ``root`` nor the environment variable points to an existing folder,
            or the IDX files are not in it.
        IDXError: a malformed IDX file, or images that are not ``(N, 28, 28)`` uint8 with labels in 0..9.
        ValueError: an unknown ``split``; ``seed`` not an int ``>= 0``; ``shift`` not an int ``>= 0``.

    Example:
        >>> train = MultiMNIST("~/data/mnist", split="train")     # or set $TORCHMOO_MNIST_DIR
        >>> images, targets = train.tensors()                      # (60000, 1, 28, 28), (60000, 2)
    """

    def __init__(self, root: Optional[PathLike] = None, split: str = "train", seed: int = 0, shift: int = 2) -> None:
        salt = _split_info(split)[1]
        g = _generator(seed, salt)
        src = load_idx_split(root, split, type(self).__name__, MNIST_ENV)
        super().__init__(*_build(src, src, g, shift), MULTIMNIST_MEAN, MULTIMNIST_STD)
        self.split = split


class MultiFashion(PairedItems):
    """MultiFashion: MultiMNIST's construction on Fashion-MNIST (``root`` or ``$TORCHMOO_FASHION_MNIST_DIR``,
    also ``root/raw`` and ``root/FashionMNIST/raw``). Same arguments, items and errors as :class:`MultiMNIST`."""

    def __init__(self, root: Optional[PathLike] = None, split: str = "train", seed: int = 0, shift: int = 2) -> None:
        salt = _split_info(split)[1]
        g = _generator(seed, salt)
        src = load_idx_split(root, split, type(self).__name__, FASHION_MNIST_ENV, folder="FashionMNIST")
        super().__init__(*_build(src, src, g, shift), MULTIMNIST_MEAN, MULTIMNIST_STD)
        self.split = split


class MultiFashionMNIST(PairedItems):
    """MultiFashion+MNIST: an MNIST digit upper-left, a Fashion-MNIST item lower-right (ParetoMTL).

    Args:
        mnist_root: MNIST folder (or ``$TORCHMOO_MNIST_DIR``).
        fashion_root: Fashion-MNIST folder (or ``$TORCHMOO_FASHION_MNIST_DIR``).
        split, seed, shift: as :class:`MultiMNIST`.

    Labels: ``target[0]`` the digit, ``target[1]`` the Fashion-MNIST class. Raises as :class:`MultiMNIST`.
    """

    def __init__(
        self,
        mnist_root: Optional[PathLike] = None,
        fashion_root: Optional[PathLike] = None,
        split: str = "train",
        seed: int = 0,
        shift: int = 2,
    ) -> None:
        salt = _split_info(split)[1]
        g = _generator(seed, salt)
        name = type(self).__name__
        mnist = load_idx_split(mnist_root, split, name, MNIST_ENV, argument="mnist_root")
        fashion = load_idx_split(fashion_root, split, name, FASHION_MNIST_ENV, argument="fashion_root", folder="FashionMNIST")
        super().__init__(*_build(mnist, fashion, g, shift), MULTIMNIST_MEAN, MULTIMNIST_STD)
        self.split = split


class MultiMNISTSubset(PairedItems):
    """The MultiMNIST subset of Ma et al. (supplement 2.2): ``size`` images (2,048) drawn at random from
    the MultiMNIST training set and downsampled from 28 x 28 to ``image_size`` (14) by area averaging.

    ``dataset[i]`` is ``(image (1, 14, 14) float32, target (2,) int64)``; :meth:`tensors` gives the
    whole set at once (the paper evaluates both losses on all 2,048 images).
    ``indices`` ``(size,)`` holds the positions of the chosen images in :class:`MultiMNIST` (same seed).
    ``images`` are float32 (area averages of the uint8 pixels).

    Args:
        root, seed: as :class:`MultiMNIST` (the training split is read).
        size: number of images, in ``[1, len(MultiMNIST train)]``.
        image_size: side of the downsampled images, in ``[1, 28]``.

    Raises:
        ValueError: ``size`` or ``image_size`` out of range; as :class:`MultiMNIST`.
    """

    def __init__(self, root: Optional[PathLike] = None, size: int = 2048, seed: int = 0, image_size: int = 14) -> None:
        full = MultiMNIST(root, "train", seed)
        if not isinstance(size, int) or not 1 <= size <= len(full):
            raise ValueError(f"size must be an int in [1, {len(full)}] (the MultiMNIST training set), got {size!r}.")
        if not isinstance(image_size, int) or not 1 <= image_size <= 28:
            raise ValueError(f"image_size must be an int in [1, 28], got {image_size!r}.")
        pick = torch.randperm(len(full), generator=_generator(seed, 2))[:size]
        small = F.interpolate(full.images[pick].unsqueeze(1).float(), size=(image_size, image_size), mode="area")
        super().__init__(
            small.squeeze(1),
            full.targets[pick],
            full.positions[pick],
            full.sources[pick],
            MULTIMNIST_MEAN,
            MULTIMNIST_STD,
        )
        self.indices = pick
