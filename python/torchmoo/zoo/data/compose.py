"""Two-item images built as MultiMNIST (Sabour et al. 2017; Ma et al. 2020, supplement 2.3).

Each image puts one item in the upper-left and one in the lower-right corner of a square canvas
``d + 4 * shift`` wide (36 for 28 x 28 items and ``shift = 2``), each moved by up to ``shift`` pixels
in each direction from its nominal place, sums them (clipped to 255) and resizes the canvas back to
``d x d`` by nearest-neighbour sampling at pixel centres (what PIL's ``NEAREST`` does). The labels are
the classes of the upper-left and lower-right items.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["compose_pairs", "nearest_indices", "PairedItems"]

_CHUNK = 8192  # images composed at once: bounds the temporary buffers to a few tens of MB


def nearest_indices(src: int, dst: int) -> Tensor:
    """Source index of each of ``dst`` output pixels when resizing ``src`` pixels by nearest neighbour
    at pixel centres: ``floor((i + 1/2) * src / dst)``."""
    return ((2 * torch.arange(dst) + 1) * src) // (2 * dst)


def _place(items: Tensor, corner: Tensor, sample: Tensor) -> Tensor:
    """``(n, s, s)`` int16: the canvas pixels at ``sample x sample`` of items whose top-left corners are ``corner``."""
    n, d = items.shape[0], items.shape[1]
    rows = sample.unsqueeze(0) - corner[:, 0:1]  # (n, s) item row under each sampled canvas row
    cols = sample.unsqueeze(0) - corner[:, 1:2]
    inside = ((rows >= 0) & (rows < d)).unsqueeze(2) & ((cols >= 0) & (cols < d)).unsqueeze(1)
    vals = items[
        torch.arange(n, device=items.device).view(n, 1, 1), rows.clamp(0, d - 1).unsqueeze(2),
        cols.clamp(0, d - 1).unsqueeze(1),
    ]
    return vals.to(torch.int16) * inside


def compose_pairs(
    left: Tensor,
    right: Tensor,
    *,
    shift: int = 2,
    generator: Optional[torch.Generator] = None,
    out_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Compose ``left[n]`` (upper-left) and ``right[n]`` (lower-right) into one image for every ``n``.

    Args:
        left, right: ``(N, d, d)`` uint8 items, on one device.
        shift: largest move, in pixels, of each item along each axis (2 in Ma et al.).
        generator: source of the random moves, a CPU generator: the moves are drawn on the CPU, so
            the images are the same on every device.
        out_size: side of the output; default ``d`` (the canvas is resized back to the item size).

    Returns:
        ``images`` ``(N, out_size, out_size)`` uint8 and ``positions`` ``(N, 2, 2)`` int64, both on the
        items' device; ``positions`` holds the (row, column) of the top-left corner of the left
        (``[:, 0]``) and right (``[:, 1]``) item on the canvas: the left corner lies in ``[0, 2 shift]``,
        the right one in ``[2 shift, 4 shift]`` along each axis, and the two never coincide (that would
        hide one item under the other).

    Raises:
        TypeError: ``left`` or ``right`` is not uint8.
        ValueError: ``left`` and ``right`` not both ``(N, d, d)`` of one shape, or on different devices;
            ``shift`` not an int ``>= 0``; ``out_size < 1``.
    """
    if left.dtype != torch.uint8 or right.dtype != torch.uint8:
        raise TypeError(f"compose_pairs takes uint8 items, got {left.dtype} and {right.dtype}.")
    if left.dim() != 3 or left.shape[1] != left.shape[2] or left.shape != right.shape:
        raise ValueError(
            f"left and right must both be (N, d, d) with the same shape, got {tuple(left.shape)} and {tuple(right.shape)}."
        )
    if left.device != right.device:
        raise ValueError(f"left and right must be on one device, got {left.device} and {right.device}.")
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be a non-negative int, got {shift!r}.")
    n, d = left.shape[0], left.shape[1]
    canvas_size = d + 4 * shift
    out_size = d if out_size is None else out_size
    if out_size < 1:
        raise ValueError(f"out_size must be at least 1, got {out_size}.")
    span = 2 * shift + 1
    corners = torch.randint(0, span, (n, 2, 2), generator=generator)
    corners[:, 1] += 2 * shift
    if shift > 0:
        # the only coincident placement is both items at (2 shift, 2 shift): move the right one again
        same = (corners[:, 0] == corners[:, 1]).all(dim=1)
        while bool(same.any()):
            k = int(same.sum())
            corners[same, 1] = torch.randint(0, span, (k, 2), generator=generator) + 2 * shift
            same = (corners[:, 0] == corners[:, 1]).all(dim=1)
    # Only the canvas pixels that the nearest-neighbour resize samples are computed: each output pixel
    # gathers the item pixel under it (or 0 outside the item) from both items. The indices and the
    # output live on the items' device (CUDA items masked by CPU tensors would fail).
    corners = corners.to(left.device)
    sample = nearest_indices(canvas_size, out_size).to(left.device)
    images = torch.empty(n, out_size, out_size, dtype=torch.uint8, device=left.device)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        total = _place(left[start:stop], corners[start:stop, 0], sample)
        total += _place(right[start:stop], corners[start:stop, 1], sample)
        images[start:stop] = total.clamp_(0, 255).to(torch.uint8)
    return images, corners


class PairedItems(Dataset):
    """Two-item images with one label per item; the base of MultiMNIST, its variants and MultiDigits.

    ``dataset[i]`` is ``(image, target)``: ``image`` a float32 ``(1, H, W)`` tensor
    ``(pixel / 255 - mean) / std``, ``target`` an int64 ``(2,)`` tensor (upper-left class,
    lower-right class).

    Attributes:
        images: ``(N, H, W)`` raw pixels in ``[0, 255]`` (uint8, or float32 for downsampled sets).
        targets: ``(N, 2)`` int64 labels.
        positions: ``(N, 2, 2)`` int64 corners of the two items on the canvas (see :func:`compose_pairs`).
        sources: ``(N, 2)`` int64 indices of the two items in their source sets.
        mean, std: the normalisation.

    ``len(dataset)`` is ``N``; :attr:`num_tasks` is 2. The constructor stores its arguments as given
    (the data sets below build them).
    """

    num_tasks = 2

    def __init__(
        self, images: Tensor, targets: Tensor, positions: Tensor, sources: Tensor, mean: float, std: float
    ) -> None:
        self.images, self.targets, self.positions, self.sources = images, targets, positions, sources
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _normalise(self, pixels: Tensor) -> Tensor:
        return (pixels.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self._normalise(self.images[index]).unsqueeze(0), self.targets[index]

    def tensors(self) -> Tuple[Tensor, Tensor]:
        """All images ``(N, 1, H, W)`` (normalised, float32) and targets ``(N, 2)``, for full-batch use."""
        return self._normalise(self.images).unsqueeze(1), self.targets

    def __repr__(self) -> str:
        h, w = self.images.shape[1:]
        return f"{type(self).__name__}(images={len(self)} x {h} x {w}, mean={self.mean:.4f}, std={self.std:.4f})"
