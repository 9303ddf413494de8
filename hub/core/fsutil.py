"""Files: fsync a file or a directory, write a file atomically, hash a file."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync ``path``: a directory after a rename into it, or a file by name."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, directory=True)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600) -> None:
    """Write ``path`` whole or not at all: a synced temporary file renamed over it."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read a MiB at a time."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
