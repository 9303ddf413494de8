"""Files: fsync a file or a directory, write a file atomically, hash a file,
keep private files private.

What a hub keeps on disk (the store, the Raft journal and dump, backups, the
cluster secret) holds device keys and password hashes: such files are 0600
in 0700 folders (``private_dir``, ``make_private``), and a secret file that
its group or others can read is worth a warning (``exposed``)."""

from __future__ import annotations

import hashlib
import os
import stat
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


def private_dir(path: Path) -> Path:
    """``path`` made if missing (with its parents), and mode 0700 either way."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_opener(path: str, flags: int) -> int:
    """``open(..., opener=private_opener)``: a new file is 0600 whatever the umask."""
    return os.open(path, flags, 0o600)


def make_private(path: Path) -> None:
    """Take group and other permissions away from ``path``: 0600 for a file,
    0700 for a folder (and everything below it)."""
    if path.is_symlink() or not path.exists():
        return
    if path.is_dir():
        path.chmod(0o700)
        for child in path.iterdir():
            make_private(child)
    else:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)


def exposed(path: Path) -> int:
    """The permission bits of ``path`` that give its group or others any access
    (0: none)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077
