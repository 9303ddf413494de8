"""The live stream: Server-Sent Events of what this node applies and hears.

    GET /v1/stream      readings, status, presence, commands, decisions, alerts

The daemon hands every batch of applied entries to ``publish_applied`` (only
while someone listens); the consumer publishes device status itself
(hub/link/consumer.py). A viewer's stream carries only their devices' events.

Streams are capped (hub/http/limits.py): ``http.max_streams`` on the node
(then 503) and ``http.max_streams_per_user`` for one user or token (then 429).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Iterable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from hub.http.limits import Limits
from hub.http.principal import ThisNode, Viewer
from hub.http.serializers import decision_json, ledger_json
from hub.link.events import EventBus
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftNode
from hub.state.store import Store
from protocol import messages as m

router = APIRouter()

_COMMAND_KINDS = (e.EntryType.COMMAND, e.EntryType.COMMAND_RESULT, e.EntryType.COMMAND_STATE)


def event_of(raft: RaftNode, r: ApplyResult) -> dict[str, Any] | None:
    """The stream event for an applied entry, or None if it makes none."""
    if r.type is e.EntryType.BATCH and r.stored:
        first = r.watermark - r.stored + 1 if r.watermark >= r.stored else 1
        rows = raft.read(lambda s: s.readings(r.device_id, first, r.watermark))
        return {
            "type": "reading",
            "device_id": r.device_id,
            "watermark": r.watermark,
            "readings": [[x.ts_ms, x.sensor, x.value] for x in rows],
        }
    if r.type is e.EntryType.PRESENCE:
        p = raft.read(lambda s: s.presence(r.device_id))
        if p is None:
            return None
        return {
            "type": "presence",
            "device_id": r.device_id,
            "node": p.node_id,
            "online": p.state is m.LinkState.ONLINE,
        }
    if r.type in _COMMAND_KINDS:
        rec = raft.read(lambda s: s.command(r.command_id))
        return None if rec is None else {"type": "command", **ledger_json(rec)}
    if r.type is e.EntryType.DECISION:
        d = raft.read(lambda s: s.decision(r.decision_id))
        return None if d is None else {"type": "decision", **decision_json(d, None)}
    return None


def publish_applied(events: EventBus, raft: RaftNode, results: Iterable[ApplyResult]) -> None:
    """Publish the events of applied entries; an alerting decision goes out
    twice, as ``decision`` and as ``alert``."""
    for r in results:
        if r.outcome is Outcome.APPLIED:
            event = event_of(raft, r)
            if event is not None:
                events.publish(event)
                if event.get("alert"):
                    events.publish({**event, "type": "alert"})


@router.get("/v1/stream")
async def stream(request: Request, who: Viewer, node: ThisNode) -> StreamingResponse:
    """Server-Sent Events: readings, status, presence, commands, decisions, alerts."""

    raft = node.raft
    limits: Limits = request.app.state.limits
    release = limits.streams.open(who.key)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in _events():
                yield chunk
        finally:
            release()

    async def _events() -> AsyncIterator[bytes]:
        async with node.events.subscribe() as sub:
            yield b": connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.get(), 15)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keep-alive\n\n"
                    continue
                owner = event.get("thread")  # a conversation: its owner's and the admins'
                if owner is not None and who.role is not e.Role.ADMIN and owner != who.name:
                    continue
                dev_id = event.get("device_id")
                if who.devices is not None and dev_id is not None:
                    dev = raft.read(partial(Store.device, device_id=str(dev_id)))
                    if dev is None or not who.sees(dev):
                        continue
                kind = event.get("type", "message")
                data = json.dumps(event, separators=(",", ":"))
                yield f"event: {kind}\ndata: {data}\n\n".encode()

    body = events()
    # A stream the server never started (the client went first) is released
    # when its generator is collected.
    weakref.finalize(body, release)
    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
