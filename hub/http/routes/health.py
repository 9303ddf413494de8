"""This node's liveness and status.

GET /v1/health          liveness and readiness (open)
GET /v1/status          this node: raft, broker, ingest, commands, decisions
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from hub.http.principal import Principal, ThisNode, Viewer
from hub.state.raft import RaftNode
from hub.state.store import Store, ViewClosed

router = APIRouter()


@router.get("/v1/health")
async def health(node: ThisNode) -> dict[str, Any]:
    r = node.raft
    return {"node_id": node.node_id, "ready": r.is_ready, "leader": r.leader}


@router.get("/v1/status")
async def status(
    who: Viewer, node: ThisNode, request: Request, hash: bool = False
) -> dict[str, Any]:
    out = node.status()
    if who.devices is not None:  # a viewer: only their own devices, by id
        out["devices_connected"] = node.raft.read(
            lambda s: [d for d in out["devices_connected"] if _sees(s, who, d)]
        )
    if hash:
        out["content_hash"] = await content_hash(request.app.state, node.raft)
    return out


def _sees(s: Store, who: Principal, device_id: str) -> bool:
    d = s.device(device_id)
    return d is not None and who.sees(d)


async def content_hash(state: Any, raft: RaftNode) -> str:
    """The store's content hash, computed in a thread on a pinned view (a
    read transaction: consistent, and no lock held while it runs), one hash
    at a time on this node; 503 if a snapshot install replaced the store
    meanwhile."""
    lock: asyncio.Lock = state.hash_lock
    async with lock:
        try:
            return await asyncio.to_thread(_hash, raft)
        except ViewClosed as exc:
            raise HTTPException(503, f"no content hash now: {exc}; retry") from None


def _hash(raft: RaftNode) -> str:
    with raft.read(Store.pin) as view:
        return view.content_hash()
