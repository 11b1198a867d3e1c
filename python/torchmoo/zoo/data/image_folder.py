"""Labelled images from a folder tree ``root/<class name>/<image file>`` (the layout of torchvision's
``ImageFolder`` and of the usual MiniImageNet / CIFAR-FS / Omniglot exports), loaded into one tensor.

Few-shot experiments need every image of a class at once (episodes draw from all of them), and the
data sets they use are small enough to hold in memory after resizing, so the whole tree is decoded
once with Pillow and returned as tensors. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from torchmoo.zoo.data._paths import DataNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "resize_square"]

#: File suffixes read as images (case-insensitive); every other file is ignored.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image_folder(
    root: Union[str, "os.PathLike[str]"], image_size: int
) -> Tuple[Tensor, Tensor, List[str]]:
    """All the images of ``root/<class>/*`` as one tensor, resized to ``image_size`` x ``image_size``.

    Classes are the sub-folders of ``root`` (hidden ones, starting with ``.``, are skipped) in sorted
    order; class ``j`` gets label ``j``. Each image file of a class folder (suffix in
    :data:`IMAGE_EXTENSIONS`, sorted by name; hidden files such as macOS's ``._name.png`` and
    sub-folders are skipped) is converted to RGB (16-bit grayscale scaled to 8 bits) and resized with
    Pillow's bilinear filter (with its anti-aliasing when shrinking), without keeping the aspect ratio
    (as MiniImageNet's 84 x 84 exports do).

    Args:
        root: the folder that holds one sub-folder per class.
        image_size: side of the returned images, ``>= 1``.

    Returns:
        ``(images, labels, class_names)``: ``images`` ``(N, 3, image_size, image_size)`` float32 in
        ``[0, 1]``, ``labels`` ``(N,)`` int64 in ``0..len(class_names)-1``, images of class 0 first;
        ``class_names`` the folder names.

    Raises:
        DataNotFoundError: ``root`` does not exist or is not a folder.
        ValueError: ``image_size`` is not a positive int, ``root`` has no class folder, a class folder
            has no image, or a file cannot be decoded (the message names the file).
        ImportError: Pillow is not installed.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataNotFoundError(f"image folder {str(path)!r} does not exist; it must hold one sub-folder per class.")
    if not path.is_dir():
        raise DataNotFoundError(
            f"image folder {str(path)!r} is a file; pass the folder that holds one sub-folder per class."
        )
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("load_image_folder decodes images with Pillow; install it (pip install pillow).") from None

    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"image folder {str(path)!r} has no class sub-folder (expected root/<class name>/<images>).")
    files: List[Path] = []
    labels: List[int] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
        )
        if not found:
            raise ValueError(
                f"class folder {str(d)!r} has no image file (suffixes {', '.join(IMAGE_EXTENSIONS)})."
            )
        files += found
        labels += [label] * len(found)
    # each image is written into the output as it is decoded: no list of images and no uint8 copy of
    # the whole set next to the float32 one (MiniImageNet at 84 x 84 is 5 GB in float32)
    x = torch.empty(len(files), 3, image_size, image_size, dtype=torch.float32)
    for k, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = _to_rgb(im).resize((image_size, image_size), Image.BILINEAR)
                data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (OSError, ValueError) as err:
            raise ValueError(f"{f}: cannot be read as an image ({err}).") from None
        x[k] = data.reshape(image_size, image_size, 3).permute(2, 0, 1)
    x.div_(255.0)
    return x, torch.tensor(labels, dtype=torch.int64), [d.name for d in class_dirs]


def _to_rgb(im):
    """An RGB copy of a Pillow image. Pillow's own conversion clips 16-bit grayscale (modes ``I;16*``,
    and ``I`` as PNG and PGM files open) to 255, which turns such images white: they are scaled to
    8 bits first."""
    from PIL import Image

    if im.mode.startswith("I;16") or (im.mode == "I" and im.format in ("PNG", "PPM")):
        pixels = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(pixels * (255.0 / 65535.0)), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


def resize_square(x: Tensor, size: int) -> Tensor:
    """Square images ``(N, C, S, S)`` resized to ``(N, C, size, size)``: whole-pixel blocks when ``size`` is a
    multiple of ``S`` (nearest neighbour, e.g. 8x8 digits to 32x32), bilinear otherwise
    (:func:`torch.nn.functional.interpolate`). ``x`` itself is returned when ``S == size``; the dtype
    and device are kept.

    Raises:
        ValueError: ``x`` is not ``(N, C, S, S)`` (a non-square image would come back with the wrong
            shape), or ``size`` is not a positive int.
    """
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"resize_square expects square images (N, C, S, S), got shape {tuple(x.shape)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    if x.shape[-1] == size:
        return x
    if size % x.shape[-1] == 0:  # whole pixel blocks (nearest neighbour)
        f = size // x.shape[-1]
        return x.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
