"""Crash-safe files for experiment results and checkpoints.

Every file is written to a temporary name in the same folder and renamed over the target, so a crash
mid-write leaves either the old file or the new one, never half of one. Checkpoints are loaded with
``torch.load(..., weights_only=True)``: a foreign file cannot execute code. :class:`FolderLock` keeps
two processes from writing into one run folder at once.
"""

from __future__ import annotations

import errno
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system
    fcntl = None

PathLike = Union[str, os.PathLike]

LOCK_FILE = ".lock"

_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # the names _create_temporary gives


def _create_temporary(path: Path) -> Tuple[int, Path]:
    """A new file beside ``path``, opened for writing. Made with ``os.open(..., 0o666)`` so the umask
    sets its permissions, as for any file the user writes (``tempfile.mkstemp`` would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 48-bit name collision
            continue


def _atomic_write(path: PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
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


def remove_temporaries(folder: PathLike) -> None:
    """Deletes the temporary files of writes that were killed (SIGKILL, power loss) in ``folder``: nothing
    else removes them, and a checkpoint's is as large as the model. Call it only while holding the folder's
    :class:`FolderLock`, so that no write is in progress."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            try:
                path.unlink()
            except OSError:  # best effort: a leftover costs space, not correctness
                pass


def write_json(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    data = json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode()
    _atomic_write(path, lambda f: f.write(data + b"\n"))


def read_json(path: PathLike) -> Any:
    """Reads a JSON file, with an error that names the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())  # bytes: JSON's own encodings, whatever the locale's
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a binary file would not be named otherwise
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


class FolderLock:
    """An exclusive lock on a run folder, held while a run writes into it.

    Two runs writing one ``results.json`` would each rewrite it from their own copy and drop the
    other's units. The lock is ``fcntl.flock`` on ``<folder>/.lock`` (which holds the owner's process
    id): the system releases it when the process ends, even when it is killed, so it never goes stale.
    Where file locks are unavailable (no ``fcntl``, or a file system without them) it locks nothing.

    Raises:
        ValueError: on :meth:`acquire`, another process (or another lock in this one) holds the folder.
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        if fcntl is None or self._fd is not None:
            return self
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {owner}" if owner.isdigit() else "another process"
            raise ValueError(
                f"{self.folder} is in use by another torchmoo run ({who}); wait for it to finish or pass another --out."
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return self  # the file system has no locks
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:  # a full disk, Ctrl-C: an fd left open would hold the lock until the process ends
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None


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
