"""Firmware bundles over HTTP, for over-the-air updates.

    POST /v1/firmware {manifest, files}   store a bundle (the cluster admin token)
    GET  /v1/firmware                     the bundles this node holds (admin token)
    GET  /v1/firmware/{sha}/{path}        one file of a bundle (open: see below)

What a bundle is, how an upload is checked and how it is stored is
hub/ops/bundles.py; bundles live under ``<data_dir>/firmware`` and are not
replicated: `aiot firmware ota` uploads to every node.

Devices download without a token: a bundle holds code only, never a
device's config or key, and the device trusts nothing it downloads until it
matches the sha256 in its HMAC-signed ota.update command (edge/ota.py).

Wiring: ``make_router(<data_dir>/firmware)`` in hub/http/api.py's ``make_app``.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from hub.http.bodies import BundleIn
from hub.http.principal import ClusterAdmin
from hub.ops import bundles as stored
from hub.ops.bundles import MAX_BUNDLE_BYTES


def make_router(root: Path) -> APIRouter:
    """The endpoints, serving bundles from ``root`` (``<data_dir>/firmware``)."""
    router = APIRouter()

    @router.post("/v1/firmware", status_code=201)
    async def upload(body: BundleIn, _: ClusterAdmin) -> dict[str, Any]:
        try:
            files = {p: base64.b64decode(v, validate=True) for p, v in body.files.items()}
        except (binascii.Error, ValueError):
            raise HTTPException(422, "files must be base64") from None
        manifest = body.manifest.encode()
        if len(manifest) + sum(len(v) for v in files.values()) > MAX_BUNDLE_BYTES:
            raise HTTPException(413, f"bundle over {MAX_BUNDLE_BYTES} bytes")
        try:
            sha, new = stored.store_bundle(root, manifest, files)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return {"sha256": sha, "files": len(files), "stored": new, "path": f"/v1/firmware/{sha}/"}

    @router.get("/v1/firmware")
    async def bundles(_: ClusterAdmin) -> list[dict[str, Any]]:
        return stored.list_bundles(root)

    @router.get("/v1/firmware/{sha}/{path:path}")
    async def bundle_file(sha: str, path: str) -> FileResponse:
        f = stored.bundle_file(root, sha, path)
        if f is None:
            raise HTTPException(404, "no such bundle file")
        return FileResponse(f, media_type="application/octet-stream")

    return router
