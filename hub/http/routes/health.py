"""This node's liveness and status.

GET /v1/health          liveness and readiness (open)
GET /v1/status          this node: raft, broker, ingest, commands, decisions
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from hub.http.principal import ThisNode, Viewer
from hub.state.store import Store

router = APIRouter()


@router.get("/v1/health")
async def health(node: ThisNode) -> dict[str, Any]:
    r = node.raft
    return {"node_id": node.node_id, "ready": r.is_ready, "leader": r.leader}


@router.get("/v1/status")
async def status(_: Viewer, node: ThisNode, hash: bool = False) -> dict[str, Any]:
    out = node.status()
    if hash:
        out["content_hash"] = await asyncio.to_thread(node.raft.read, Store.content_hash)
    return out
