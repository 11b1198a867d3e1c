"""Locating data files the user points to (an argument or an environment variable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["DataNotFoundError", "resolve_root", "find_file"]

PathLike = Union[str, "os.PathLike[str]"]


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where the user said, or the user said nothing; the message says
    which argument or environment variable to set."""


def _hint(argument: str, env_var: str) -> str:
    return f"pass {argument}=PATH or set the environment variable {env_var}=PATH"


def resolve_root(root: Optional[PathLike], env_var: str, dataset: str, wants: str, argument: str = "root") -> Path:
    """The path given as ``root``, else the value of ``env_var``; raises :class:`DataNotFoundError`
    naming both when neither is set or the path does not exist.

    Args:
        root: the path the caller passed, or None.
        env_var: the environment variable read when ``root`` is None.
        dataset: the data set's name, for the message.
        wants: what the path must hold, for the message (e.g. "the MNIST IDX files").
        argument: the name of the constructor argument, for the message.
    """
    if root is None:
        value = os.environ.get(env_var, "").strip()
        if not value:
            raise DataNotFoundError(
                f"{dataset} is built from {wants}, which are not shipped with torchmoo: "
                f"{_hint(argument, env_var)} (the folder that holds them)."
            )
        path, source = Path(value).expanduser(), f"the environment variable {env_var}"
    else:
        path, source = Path(root).expanduser(), f"{argument}"
    if not path.exists():
        raise DataNotFoundError(
            f"{dataset}: {source} points to {str(path)!r}, which does not exist; it must hold {wants} "
            f"({_hint(argument, env_var)})."
        )
    return path


def find_file(
    root: Path, names: Sequence[str], subdirs: Sequence[str], dataset: str, env_var: str, argument: str = "root"
) -> Path:
    """The first ``root/subdir/name`` that is a file; ``root`` itself if it is a file.

    Raises :class:`DataNotFoundError` listing every place looked at.
    """
    if root.is_file():
        return root
    tried = []
    for sub in subdirs:
        for name in names:
            candidate = root / sub / name if sub else root / name
            tried.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise DataNotFoundError(
        f"{dataset}: none of these files exists: {', '.join(tried)}. "
        f"Point {argument}= or {env_var} to the folder that holds {names[0]}."
    )
