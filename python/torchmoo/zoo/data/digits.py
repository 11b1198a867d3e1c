"""MultiDigits: MultiMNIST's construction applied to scikit-learn's bundled 8 x 8 digits.

It needs no download, so every image experiment runs on a fresh machine. The 1,797 digits
(``sklearn.datasets.load_digits``, intensities 0..16) are rendered like MNIST items: intensities scaled
to 0..255, each pixel drawn as a 3 x 3 block (24 x 24) centred in a 28 x 28 frame (a 2-pixel margin, as
MNIST digits sit inside their frame). The digits are split into disjoint train and test sources, and
each split is composed exactly as MultiMNIST (:func:`~torchmoo.zoo.data.compose.compose_pairs`: upper
left and lower right, up to 2 pixels of random move each way on a 36 x 36 canvas, resized to 28 x 28),
so the networks of MultiMNIST run on it unchanged.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torchmoo.zoo.data.compose import PairedItems, compose_pairs
from torchmoo.zoo.data.multimnist import _generator, _right_indices, _split_info

__all__ = ["load_sklearn_digits", "render_digits", "MultiDigits"]

_SCALE, _MARGIN = 3, 2  # 8 x 3 + 2 x 2 = 28


def load_sklearn_digits() -> Tuple[Tensor, Tensor]:
    """scikit-learn's bundled digits: images ``(1797, 8, 8)`` float32 in ``[0, 16]`` and labels ``(1797,)`` int64."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MultiDigits is built from scikit-learn's bundled digits; install scikit-learn (pip install scikit-learn)."
        ) from None
    bunch = load_digits()
    return torch.as_tensor(bunch.images, dtype=torch.float32), torch.as_tensor(bunch.target, dtype=torch.int64)


def render_digits(digits: Tensor) -> Tensor:
    """``(N, 8, 8)`` intensities in ``[0, 16]`` -> ``(N, 28, 28)`` uint8 items: ``round(v * 255 / 16)``,
    each pixel a 3 x 3 block, 2 pixels of margin. Values outside ``[0, 16]`` are clamped.

    Raises:
        ValueError: ``digits`` is not ``(N, 8, 8)``.
    """
    if digits.dim() != 3 or tuple(digits.shape[1:]) != (8, 8):
        raise ValueError(f"render_digits expects (N, 8, 8) digits, got {tuple(digits.shape)}.")
    v = torch.round(digits.float().clamp(0, 16) * (255.0 / 16.0))
    big = v.repeat_interleave(_SCALE, dim=1).repeat_interleave(_SCALE, dim=2)
    return F.pad(big, (_MARGIN, _MARGIN, _MARGIN, _MARGIN)).to(torch.uint8)


def _split_sources(n: int, seed: int, test_fraction: float) -> Tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=_generator(seed, 3))
    n_test = int(round(n * test_fraction))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _compose_split(
    frames: Tensor, labels: Tensor, sources: Tensor, seed: int, salt: int, num_images: Optional[int], shift: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _generator(seed, salt)
    n_src = sources.shape[0]
    n = n_src if num_images is None else num_images
    left = sources[torch.arange(n) % n_src]
    right = sources[_right_indices(n, n_src, g)]
    images, positions = compose_pairs(frames[left], frames[right], shift=shift, generator=g)
    return images, torch.stack([labels[left], labels[right]], dim=1), positions, torch.stack([left, right], dim=1)


class MultiDigits(PairedItems):
    """Two of scikit-learn's 8 x 8 digits per 28 x 28 image, upper-left and lower-right, as MultiMNIST.

    ``dataset[i]`` is ``(image (1, 28, 28) float32, target (2,) int64)``. The default train split has
    1,438 images and the test split 359 (each source digit is the upper-left item of one image, as in
    MultiMNIST); ``num_images`` makes more (or fewer) pairs from the same sources.

    Args:
        split: ``"train"`` or ``"test"``; the two splits draw their items from disjoint source digits.
        seed: the split of the sources, the pairing and the moves are functions of ``seed``.
        test_fraction: share of the 1,797 digits that are test sources.
        num_images: number of images of this split; default the number of its source digits.
        shift: largest move of each item in each direction (2, as MultiMNIST).

    Attributes (besides :class:`PairedItems`'): ``sources`` index the 1,797 digits of
    ``sklearn.datasets.load_digits``; ``mean`` and ``std`` are the pixel statistics of the training
    split (for both splits).

    Raises:
        ValueError: an unknown ``split``; ``seed`` not an int ``>= 0``; ``test_fraction`` outside
            ``(0, 1)`` or leaving a split without sources; ``num_images`` not ``None`` or a positive int;
            a bad ``shift``.
        ImportError: scikit-learn is not installed.
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        test_fraction: float = 0.2,
        num_images: Optional[int] = None,
        shift: int = 2,
    ) -> None:
        salt = _split_info(split)[1]
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
        if num_images is not None and (not isinstance(num_images, int) or num_images < 1):
            raise ValueError(f"num_images must be a positive int or None, got {num_images!r}.")
        digits, labels = load_sklearn_digits()
        frames = render_digits(digits)
        train_src, test_src = _split_sources(digits.shape[0], seed, test_fraction)
        if train_src.numel() == 0 or test_src.numel() == 0:
            raise ValueError(f"test_fraction={test_fraction} leaves one split without source digits.")
        own = train_src if split == "train" else test_src
        built = _compose_split(frames, labels, own, seed, 4 + salt, num_images, shift)
        # normalise both splits with the statistics of the default training split
        stats_images = built[0] if split == "train" and num_images is None else _compose_split(
            frames, labels, train_src, seed, 4, None, shift
        )[0]
        pixels = stats_images.float() / 255.0
        super().__init__(*built, float(pixels.mean()), float(pixels.std()))
        self.split = split
