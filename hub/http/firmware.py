"""Firmware bundles on a hub node, for over-the-air updates.

    POST /v1/firmware {manifest, files}   store a bundle (admin token)
    GET  /v1/firmware                     the bundles this node holds (admin token)
    GET  /v1/firmware/{sha}/{path}        one file of a bundle (open: see below)

A bundle is what `aiot firmware build` writes to ``OUT/ota/``: ``manifest.json``
(format, platform, .mpy version, each file's size and sha256) and the files.
Its name is the sha256 of the manifest's bytes. An upload is checked in full
(the manifest's hash, every file's size and hash, safe relative paths, no
file missing or extra) and stored under ``<data_dir>/firmware/<sha>/``
through a temporary directory renamed into place, so a bundle is whole or
absent. Bundles are not replicated through Raft (they are large and
immutable): `aiot firmware ota` uploads to every node.

Devices download without a token: a bundle holds code only, never a
device's config or key, and the device trusts nothing it downloads until it
matches the sha256 in its HMAC-signed ota.update command (edge/ota.py).

Wiring: ``mount(app, hub)`` in ``hub.api.make_app``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from hub.core import auth

if TYPE_CHECKING:
    from hub.daemon import Hub

MAX_BUNDLE_BYTES = 4 * 1024 * 1024
_SHA = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class BundleIn(BaseModel):
    manifest: str  # manifest.json's exact text (its sha256 names the bundle)
    files: dict[str, str]  # path -> base64 content


def _admin(request: Request) -> None:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not auth.token_matches(value.strip(), request.app.state.token):
        raise HTTPException(401, "a valid admin token is required (Authorization: Bearer)")


Admin = Annotated[None, Depends(_admin)]


def safe_path(path: str) -> bool:
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
        if not safe_path(path) or path == "manifest.json":
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
    if (target / "manifest.json").exists():
        return sha, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".upload-"))
    try:
        for path, data in files.items():
            dst = tmp / path
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
        (tmp / "manifest.json").write_bytes(manifest)
        if target.exists():  # a torn earlier upload without its manifest
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sha, True


def make_router(root: Path) -> APIRouter:
    """The endpoints, serving bundles from ``root`` (``<data_dir>/firmware``)."""
    router = APIRouter()

    @router.post("/v1/firmware", status_code=201)
    async def upload(body: BundleIn, _: Admin) -> dict[str, Any]:
        try:
            files = {p: base64.b64decode(v, validate=True) for p, v in body.files.items()}
        except (binascii.Error, ValueError):
            raise HTTPException(422, "files must be base64") from None
        manifest = body.manifest.encode()
        if len(manifest) + sum(len(v) for v in files.values()) > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"bundle over {MAX_BUNDLE_BYTES} bytes")
        try:
            sha, new = store_bundle(root, manifest, files)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"sha256": sha, "files": len(files), "stored": new, "path": f"/v1/firmware/{sha}/"}

    @router.get("/v1/firmware")
    async def bundles(_: Admin) -> list[dict[str, Any]]:
        out = []
        if root.is_dir():
            for d in sorted(root.iterdir()):
                mf = d / "manifest.json"
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

    @router.get("/v1/firmware/{sha}/{path:path}")
    async def bundle_file(sha: str, path: str) -> FileResponse:
        if not _SHA.match(sha) or not safe_path(path):
            raise HTTPException(404, "no such bundle file")
        f = root / sha / path
        if not (root / sha / "manifest.json").is_file() or not f.is_file():
            raise HTTPException(404, "no such bundle file")
        return FileResponse(f, media_type="application/octet-stream")

    return router


def mount(app: FastAPI, hub: Hub) -> None:
    """Serve ``<data_dir>/firmware`` from this node's API."""
    app.include_router(make_router(hub.cfg.data_dir / "firmware"))
