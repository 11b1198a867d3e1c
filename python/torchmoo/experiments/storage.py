"""Crash-safe files for experiment results and checkpoints.

Every file is written to a temporary name in the same folder and renamed over the target, so a crash
mid-write leaves either the old file or the new one, never half of one. Checkpoints are loaded with
``torch.load(..., weights_only=True)``: a foreign file cannot execute code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]


def _atomic_write(path: PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode()
    _atomic_write(path, lambda f: f.write(data + b"\n"))


def read_json(path: PathLike) -> Any:
    """Reads a JSON file, with an error that names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a valid JSON results file ({err}).") from None


def save_checkpoint(path: PathLike, state: dict) -> None:
    """``torch.save`` of a dict of tensors / numbers / strings / lists, atomically."""
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: PathLike) -> dict:
    """Loads a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which one
        raise ValueError(f"{path} is not a readable torchmoo checkpoint ({type(err).__name__}: {err}).") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
