"""The model registry (hub/decide/registry.py) over HTTP.

PUT  /v1/models/blobs/{sha256}      upload a model's bytes (operator)
GET  /v1/models/blobs/{sha256}      download them (admin; nodes fetch from peers)
POST /v1/models {manifest, signature, key_id}   register a signed version (operator)
GET  /v1/models                     versions, the activated one, what runs here
POST /v1/models/{name}/activate {version}       activate a version (operator)
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from hub.decide import registry as models_mod
from hub.decide.registry import ModelRefused
from hub.http.bodies import ActivateIn, ModelIn
from hub.http.principal import Admin, Operator, Raft, ThisNode, Viewer
from hub.http.replica import check, commit
from hub.state import entries as e
from hub.state.raft import RaftError
from hub.state.store import Store

router = APIRouter()


@router.put("/v1/models/blobs/{sha256}")
async def put_blob(sha256: str, request: Request, _: Operator, node: ThisNode) -> dict[str, Any]:
    """The body goes to disk as it arrives (one chunk in memory at a time),
    up to ``http.max_model_bytes`` (413 past it, and nothing kept)."""
    try:
        part = node.models.blob_path(sha256).with_suffix(".part")
    except ModelRefused as exc:
        raise HTTPException(422, str(exc)) from None
    try:
        size = await asyncio.to_thread(
            node.models.store_blob, sha256, _chunks(request, asyncio.get_running_loop())
        )
    except ModelRefused as exc:
        raise HTTPException(422, str(exc)) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return {"sha256": sha256, "size": size}


def _chunks(request: Request, loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """The request body as it arrives, for a worker thread: each chunk is
    read on the event loop (what the body limit raises comes through)."""
    body = request.stream().__aiter__()

    async def next_chunk() -> bytes:
        return await anext(body)

    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()
        except StopAsyncIteration:
            return


@router.get("/v1/models/blobs/{sha256}")
async def get_blob(sha256: str, _: Admin, node: ThisNode) -> FileResponse:
    try:
        path = node.models.blob_path(sha256)
    except ModelRefused as exc:
        raise HTTPException(422, str(exc)) from None
    if not path.exists():
        raise HTTPException(404, f"no model bytes {sha256} on this node")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/v1/models", status_code=201)
async def register_model(body: ModelIn, _: Operator, r: Raft, node: ThisNode) -> dict[str, Any]:
    reg = node.models
    try:
        signature = base64.b64decode(body.signature, validate=True)
        mv = models_mod.version_record(body.manifest.encode(), signature, body.key_id)
        models_mod.verify_signature(mv, reg.trusted)
    except (ValueError, ModelRefused) as exc:
        raise HTTPException(422, f"model refused: {exc}") from None
    if mv.kind == models_mod.FIRMWARE:
        raise HTTPException(
            422, "model refused: a firmware release is registered with POST /v1/firmware/releases"
        )
    if not reg.has_blob(mv.sha256.hex()):
        raise HTTPException(409, f"upload the bytes first: PUT /v1/models/blobs/{mv.sha256.hex()}")
    try:
        models_mod.check_kind(mv)
        if mv.kind == models_mod.RULES:  # refused now rather than at activation
            data = await asyncio.to_thread(reg.blob_path(mv.sha256.hex()).read_bytes)
            models_mod.parse_rule_set(mv, data)
        if mv.kind == models_mod.LORA:  # an adapter for a base no node can run
            reg.check_base(mv)
            with reg.blob_path(mv.sha256.hex()).open("rb") as f:
                if f.read(4) != b"GGUF":
                    raise ModelRefused("not_gguf", f"{mv.name}@{mv.version}: not a GGUF file")
    except ModelRefused as exc:
        raise HTTPException(422, f"model refused: {exc}") from None
    check(await commit(r, e.encode(mv)))
    return {"name": mv.name, "version": mv.version, "sha256": mv.sha256.hex()}


@router.get("/v1/models")
async def list_models(_: Viewer, r: Raft, node: ThisNode) -> list[dict[str, Any]]:
    versions = [v for v in r.read(lambda s: s.model_versions()) if v.kind != models_mod.FIRMWARE]
    wanted = {m.name: m.version for m in r.read(Store.models)}
    here = node.models.status()
    out = []
    for mv in versions:
        doc = json.loads(mv.manifest)
        active = here.get(mv.name, {})
        out.append(
            {
                "name": mv.name,
                "version": mv.version,
                "kind": mv.kind,
                "sha256": mv.sha256.hex(),
                "size": mv.size,
                "created": doc.get("created"),
                "key_id": mv.key_id,
                "activated": wanted.get(mv.name) == mv.version,
                "active_on": {node.node_id: active.get("version")},
                "error_on": {node.node_id: active.get("error")},
            }
        )
    for name, st in here.items():
        if not any(mv.name == name for mv in versions):
            out.append(
                {
                    "name": name,
                    "version": st["version"],
                    "kind": models_mod.LORA if name == models_mod.LLM_ADAPTER else "onnx",
                    "sha256": st["sha256"],
                    "activated": True,
                    "active_on": {node.node_id: st["version"]},
                    "error_on": {node.node_id: st["error"]},
                }
            )
    return out


@router.post("/v1/models/{name}/deactivate")
async def deactivate_model(name: str, _: Operator, r: Raft) -> dict[str, Any]:
    """Switch a model off on every node: for llm-adapter, the LLM tier runs its
    plain base model again (the shipped adapter too is left aside)."""
    if not e.MODEL_NAME.fullmatch(name):
        raise HTTPException(404, f"no model {name[:80]!r}")
    try:
        res = await models_mod.propose_deactivation(r, name)
    except ModelRefused as exc:
        raise HTTPException(404, str(exc)) from None
    except RaftError as exc:
        raise HTTPException(503, f"the cluster did not commit: {exc.reason}") from None
    check(res)
    return {"name": name, "activated": False}


@router.post("/v1/models/{name}/activate")
async def activate_model(name: str, body: ActivateIn, _: Operator, r: Raft) -> dict[str, Any]:
    if not e.MODEL_NAME.fullmatch(name) or not e.MODEL_NAME.fullmatch(body.version):
        raise HTTPException(404, f"no model {name[:80]!r} version {body.version[:80]!r}")
    try:
        res = await models_mod.propose_activation(r, name, body.version)
    except ModelRefused as exc:
        raise HTTPException(404, str(exc)) from None
    except RaftError as exc:
        raise HTTPException(503, f"the cluster did not commit: {exc.reason}") from None
    check(res)
    return {"name": name, "version": body.version, "activated": True}
