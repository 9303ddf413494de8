"""Firmware bundles on a hub node: checking, storing and listing them.

A bundle is what `aiot firmware build` writes to ``OUT/ota/``: ``manifest.json``
(format, platform, .mpy version, each file's size and sha256) and the files.
Its name is the sha256 of the manifest's bytes. An upload is checked in full
(the manifest's hash, every file's size and hash, safe relative paths, no
file missing or extra) and stored under ``<data_dir>/firmware/<sha>/``
through a temporary directory renamed into place, so a bundle is whole or
absent. Bundles are not replicated through Raft (they are large and
immutable): `aiot firmware ota` uploads to every node.

hub/http/firmware.py serves them over HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

MAX_BUNDLE_BYTES: Final = 4 * 1024 * 1024
MANIFEST: Final = "manifest.json"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def safe_path(path: str) -> bool:
    """A relative path of 1 to 4 plain parts (no ``..``, no hidden names)."""
    parts = path.split("/")
    return 0 < len(parts) <= 4 and all(_PART.match(p) and p not in (".", "..") for p in parts)


def check_bundle(manifest: bytes, files: dict[str, bytes]) -> tuple[str, dict[str, Any]]:
    """(sha256, parsed manifest) of a well-formed bundle; ValueError otherwise."""
    try:
        m = json.loads(manifest)
    except ValueError:
        raise ValueError("manifest is not JSON") from None
    if not isinstance(m, dict) or m.get("format") != 1 or not isinstance(m.get("files"), dict):
        raise ValueError("manifest: expected format 1 with a files table")
    listed: dict[str, Any] = m["files"]
    for path, entry in listed.items():
        if not safe_path(path) or path == MANIFEST:
            raise ValueError(f"manifest: bad file path {path!r}")
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)):
            raise ValueError(f"manifest: {path}: expected [size, sha256]")
    if set(files) != set(listed):
        extra = sorted(set(files) - set(listed))
        missing = sorted(set(listed) - set(files))
        raise ValueError(f"files do not match the manifest: missing {missing}, extra {extra}")
    for path, data in files.items():
        size, sha = listed[path]
        if len(data) != size or hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"{path}: size or sha256 differs from the manifest")
    return hashlib.sha256(manifest).hexdigest(), m


def store_bundle(root: Path, manifest: bytes, files: dict[str, bytes]) -> tuple[str, bool]:
    """Check and store a bundle under root/<sha>/; (sha, stored now)."""
    sha, _ = check_bundle(manifest, files)
    target = root / sha
    if (target / MANIFEST).exists():
        return sha, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".upload-"))
    try:
        for path, data in files.items():
            dst = tmp / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        (tmp / MANIFEST).write_bytes(manifest)
        if target.exists():  # a torn earlier upload without its manifest
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha, True


def list_bundles(root: Path) -> list[dict[str, Any]]:
    """The whole bundles under ``root``: sha256, platform, board, version, file count."""
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            mf = d / MANIFEST
            if _SHA.match(d.name) and mf.is_file():
                m = json.loads(mf.read_bytes())
                out.append(
                    {
                        "sha256": d.name,
                        "platform": m.get("platform"),
                        "board": m.get("board"),
                        "version": m.get("version"),
                        "files": len(m.get("files", {})),
                    }
                )
    return out


def bundle_file(root: Path, sha: str, path: str) -> Path | None:
    """The file ``path`` of the whole bundle ``sha`` under ``root``, or None."""
    if not _SHA.match(sha) or not safe_path(path):
        return None
    f = root / sha / path
    if not (root / sha / MANIFEST).is_file() or not f.is_file():
        return None
    return f
