"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed)."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["IDXError", "read_idx", "write_idx"]

# IDX type code -> (big-endian numpy dtype, torch dtype)
_CODES = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}
_TORCH_TO_CODE = {t: code for code, (_, t) in _CODES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A file is not a well-formed IDX file; the message names the file and what is wrong."""


def _load_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:  # compressed whatever the name says
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise IDXError(f"{path}: gzip-compressed data is truncated or corrupt ({e}).") from None
    return raw


def read_idx(path: Union[str, "os.PathLike[str]"]) -> Tensor:
    """Read an IDX file (``.gz`` or not) into a tensor of its declared type and shape.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then one big-endian uint32 per dimension.

    Returns:
        A CPU tensor of the declared shape and dtype (uint8, int8, int16, int32, float32 or float64).

    Raises:
        FileNotFoundError: the file does not exist.
        IDXError: (a ``ValueError``) the file is truncated, has extra bytes, or has a bad header;
            the message names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist.")
    data = _load_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: {len(data)} bytes is too short for an IDX file (the header alone has at least 4).")
    if data[0] != 0 or data[1] != 0:
        raise IDXError(
            f"{path}: not an IDX file (it starts with bytes 0x{data[0]:02x} 0x{data[1]:02x}, an IDX file with 0x00 0x00)."
        )
    code, ndim = data[2], data[3]
    if code not in _CODES:
        known = ", ".join(f"0x{c:02x}" for c in _CODES)
        raise IDXError(f"{path}: unknown IDX type code 0x{code:02x} (known: {known}).")
    if ndim == 0:
        raise IDXError(f"{path}: the header declares 0 dimensions.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(
            f"{path}: truncated header: it declares {ndim} dimensions ({header} header bytes) "
            f"but the file has only {len(data)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    np_dtype, torch_dtype = _CODES[code]
    count = math.prod(shape)  # exact: a corrupt header's huge dimensions must not wrap around
    expected = count * np_dtype.itemsize
    found = len(data) - header
    if found < expected:
        raise IDXError(
            f"{path}: truncated: the header declares shape {tuple(shape)} ({expected} bytes of data) "
            f"but only {found} bytes follow the header."
        )
    if found > expected:
        raise IDXError(
            f"{path}: malformed: {found - expected} unexpected bytes after the {expected} bytes of data "
            f"of shape {tuple(shape)}."
        )
    array = np.frombuffer(data, dtype=np_dtype, count=count, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(np_dtype.newbyteorder("="), copy=True))


def write_idx(path: Union[str, "os.PathLike[str]"], tensor: Tensor, compress: bool = False) -> None:
    """Write ``tensor`` (uint8, int8, int16, int32, float32 or float64; at least 1-D) as an IDX file,
    gzip-compressed when ``compress`` is True; :func:`read_idx` reads it back exactly.

    Raises:
        TypeError: ``tensor`` is not a tensor, or of a dtype IDX cannot store.
        ValueError: ``tensor`` is 0-dim or has more than 255 dims.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.dtype not in _TORCH_TO_CODE:
        raise TypeError(f"IDX cannot store {tensor.dtype}; use uint8, int8, int16, int32, float32 or float64.")
    if tensor.dim() == 0 or tensor.dim() > 255:
        raise ValueError(f"IDX stores 1 to 255 dimensions, got a {tensor.dim()}-d tensor.")
    code = _TORCH_TO_CODE[tensor.dtype]
    np_dtype = _CODES[code][0]
    payload = bytes([0, 0, code, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    payload += tensor.detach().cpu().contiguous().numpy().astype(np_dtype).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)
