"""Files written whole or not at all: readers (a worker reading LATEST, Feast reading a parquet file, a
trainer reading its offsets) never see half a file, and a crash leaves no stub under the real name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir"]


def atomic_write(path: Path, data: bytes | str | Callable[[Path], object], mode: int | None = None) -> None:
    """Write ``data`` (bytes, text as UTF-8, or ``write(tmp_path)`` for a library that writes files itself)
    to a temporary file beside ``path``, flush it to disk, then rename it over ``path``. ``mode``: the
    file's permissions (a temporary file is private to its owner)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                data = data.encode("utf-8")
            if isinstance(data, bytes):
                f.write(data)
        if callable(data):
            data(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
