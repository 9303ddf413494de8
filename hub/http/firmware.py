"""Firmware bundles over HTTP, for over-the-air updates.

    POST /v1/firmware {manifest, files}   store a bundle (the cluster admin token)
    GET  /v1/firmware                     the bundles this node holds (admin token)
    GET  /v1/firmware/{sha}/{path}        one file of a bundle (open: see below)
    POST /v1/firmware/releases {manifest, signature, key_id}
                                          register a signed release (operator)
    GET  /v1/firmware/releases            the registered releases (viewer)
    GET  /v1/firmware/keys                ``[firmware] trusted_keys`` (viewer): what
                                          `aiot firmware build/flash/provision --device`
                                          pins in the device's config

A release (hub/decide/registry.py "firmware releases") is replicated: a
MODEL_VERSION of kind firmware, signed by a key of ``[firmware]
trusted_keys``. It is registered only on a node that holds its bundle and
only if it describes that bundle (sha256, size, platform, board, .mpy
version, version). An ota.update names a release, never a bare bundle.

What a bundle is, how an upload is checked and how it is stored is
hub/ops/bundles.py; bundles live under ``<data_dir>/firmware`` and are not
replicated: `aiot firmware ota` uploads to every node.

Devices download without a token: a bundle holds code only, never a
device's config or key, and the device trusts nothing it downloads until it
matches the sha256 in its HMAC-signed ota.update command and the release's
Ed25519 signature verifies with a key pinned in its config (edge/ota.py).

Wiring: ``make_router(<data_dir>/firmware)`` in hub/http/api.py's ``make_app``.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from hub.core import keys
from hub.decide import registry
from hub.decide.registry import ModelRefused, ReleaseRefused
from hub.http.bodies import BundleIn, ReleaseIn
from hub.http.principal import ClusterAdmin, Operator, Raft, ThisNode, Viewer
from hub.http.replica import check, commit
from hub.ops import bundles as stored
from hub.ops.bundles import MAX_BUNDLE_BYTES
from hub.state import entries as e


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

    @router.post("/v1/firmware/releases", status_code=201)
    async def register_release(
        body: ReleaseIn, _: Operator, r: Raft, node: ThisNode
    ) -> dict[str, Any]:
        trusted = keys.trusted(node.cfg.firmware.trusted_keys)
        try:
            signature = base64.b64decode(body.signature, validate=True)
            mv = registry.version_record(body.manifest.encode(), signature, body.key_id)
        except (ValueError, ModelRefused) as exc:
            raise HTTPException(422, f"release refused: {exc}") from None
        if mv.kind != registry.FIRMWARE:
            raise HTTPException(422, f"release refused: kind {mv.kind!r}, not firmware")
        bundle = stored.bundle_file(root, mv.sha256.hex(), stored.MANIFEST)
        if bundle is None:
            raise HTTPException(
                409,
                f"no bundle {mv.sha256.hex()} on this node: upload it first (POST /v1/firmware)",
            )
        try:
            inner = registry.check_release(mv, trusted, bundle.read_bytes())
        except ReleaseRefused as exc:
            raise HTTPException(422, f"release refused: {exc}") from None
        check(await commit(r, e.encode(mv)))
        return {"name": mv.name, "version": mv.version, "sha256": mv.sha256.hex(), **inner}

    @router.get("/v1/firmware/releases")
    async def list_releases(_: Viewer, r: Raft, node: ThisNode) -> list[dict[str, Any]]:
        trusted = keys.trusted(node.cfg.firmware.trusted_keys)
        out = []
        for mv in registry.releases(r):
            doc = json.loads(mv.manifest)
            try:
                registry.check_release(mv, trusted)
                error = None
            except ReleaseRefused as exc:
                error = str(exc)
            out.append(
                {
                    "name": mv.name,
                    "version": mv.version,
                    "sha256": mv.sha256.hex(),
                    **(doc.get("manifest") or {}),
                    "created": doc.get("created"),
                    "key_id": mv.key_id,
                    "error": error,  # None: signed by a key this node trusts
                }
            )
        return out

    @router.get("/v1/firmware/keys")
    async def release_keys(_: Viewer, node: ThisNode) -> dict[str, Any]:
        return {"trusted_keys": list(node.cfg.firmware.trusted_keys)}

    @router.get("/v1/firmware/{sha}/{path:path}")
    async def bundle_file(sha: str, path: str) -> FileResponse:
        f = stored.bundle_file(root, sha, path)
        if f is None:
            raise HTTPException(404, "no such bundle file")
        return FileResponse(f, media_type="application/octet-stream")

    return router
