"""``GET /v1/backup`` (admin): a consistent snapshot of this node's store.

The stream itself, and why it is consistent, is hub/ops/backup.py's
``SnapshotStream``; this route lets one backup stream at a time per node.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import StreamingResponse

from hub.http.principal import ThisNode, require
from hub.ops.backup import SnapshotStream
from hub.state import entries as e


def make_router() -> APIRouter:
    """The route, with its own one-at-a-time lock."""
    router = APIRouter()
    busy = asyncio.Lock()

    @router.get(
        "/v1/backup",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
        summary="A consistent snapshot of this node's store (admin)",
        dependencies=[Depends(require(e.Role.ADMIN))],
    )
    async def backup(node: ThisNode) -> StreamingResponse:
        """The store's snapshot stream (hub/state/DESIGN.md "Snapshots") from one read
        transaction. Headers: X-Aiot-Node, X-Aiot-Applied-Index, X-Aiot-Term,
        X-Aiot-Estimated-Bytes (the LMDB file size, an upper bound)."""
        if busy.locked():
            raise HTTPException(409, "a backup is already streaming from this node")
        await busy.acquire()
        try:
            stream = SnapshotStream(node.raft)
        except BaseException:
            busy.release()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream.chunks():
                    yield chunk
            finally:
                stream.cancel()
                busy.release()

        name = f"{node.node_id}-{stream.index}.snap"
        return StreamingResponse(
            body(),
            media_type="application/octet-stream",
            headers={
                "X-Aiot-Node": node.node_id,
                "X-Aiot-Applied-Index": str(stream.index),
                "X-Aiot-Term": str(stream.term),
                "X-Aiot-Estimated-Bytes": str(stream.estimated_bytes),
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )

    return router
