"""Questions about the devices, answered from the ledger.

POST /v1/ask {question}     an answer with its sources (hub/decide/explain.py)
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

from fastapi import APIRouter

from hub.decide import explain
from hub.http.bodies import AskIn
from hub.http.node import Asker
from hub.http.principal import Principal, Raft, ThisNode, Viewer
from hub.state import entries as e
from hub.state.raft import RaftNode
from hub.state.records import LedgerRecord
from hub.state.store import Store
from protocol import messages as m

router = APIRouter()


class StoreView:
    """What a principal may see, for hub/decide/explain.py: a device that is
    not theirs is as absent as one that does not exist (no decisions, no
    commands, no readings)."""

    def __init__(self, raft: RaftNode, who: Principal) -> None:
        self._raft = raft
        self._who = who

    def _sees(self, s: Store, device_id: str) -> bool:
        device = s.device(device_id)
        return device is not None and self._who.sees(device)

    def device_ids(self) -> list[str]:
        return [d.device_id for d in self._raft.read(Store.devices) if self._who.sees(d)]

    def decisions(self, device_id: str, limit: int) -> list[e.Decision]:
        return self._raft.read(
            lambda s: s.decisions(device_id, limit) if self._sees(s, device_id) else []
        )

    def commands(self, device_id: str) -> list[LedgerRecord]:
        return self._raft.read(lambda s: s.commands(device_id) if self._sees(s, device_id) else [])

    def progress(self, device_id: str) -> dict[str, Any]:
        def read(s: Store) -> dict[str, Any]:
            seen = self._sees(s, device_id)
            p = s.presence(device_id) if seen else None
            return {
                "watermark": s.progress(device_id)[0] if seen else 0,
                "node": None if p is None else p.node_id,
                "online": p is not None and p.state is m.LinkState.ONLINE,
            }

        return self._raft.read(read)

    def energy(self, device_id: str, day: date) -> list[tuple[int, float]]:
        def read(s: Store) -> list[tuple[int, float]]:
            hours = s.hourly_energy(device_id, day) if self._sees(s, device_id) else ()
            return [(h.start_ms, h.wh) for h in hours]

        return self._raft.read(read)


@router.post("/v1/ask")
async def ask(body: AskIn, who: Viewer, r: Raft, node: ThisNode) -> dict[str, Any]:
    view = StoreView(r, who)
    fallback = node.ask_fallback() if isinstance(node, Asker) else None
    answer = await asyncio.to_thread(explain.explain, body.question, view, fallback)
    return {
        "answer": answer.text,
        "method": answer.method,
        "sources": answer.sources,
        "refused": answer.refused or None,
    }
