"""Decisions and the alerts among them.

GET  /v1/decisions?device=ID&limit=N        newest first, as the asker may see them
GET  /v1/decisions/{id}                     one decision with its provenance
GET  /v1/alerts?device=&unacknowledged=     decisions that raised an alert
POST /v1/alerts/{id}/ack                    acknowledge an alert (operator)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from hub.core.clock import wall_ms
from hub.http.principal import Operator, Principal, Raft, Viewer, known
from hub.http.replica import check, commit, key_ok
from hub.http.serializers import decision_json
from hub.state import entries as e
from hub.state.raft import RaftNode
from hub.state.store import Store

router = APIRouter()


def _visible(r: RaftNode, who: Principal, device: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` decisions (about ``device``, if given) that ``who`` may see."""
    if device is not None:
        known(r, device, who)

    def rows(s: Store) -> list[dict[str, Any]]:
        out = []
        for d in s.decisions(device, limit if who.devices is None else 100_000):
            if who.devices is not None:
                dev = s.device(d.device_id)
                if dev is None or not who.sees(dev):
                    continue
            out.append(decision_json(d, s.alert_ack(d.decision_id)))
            if len(out) >= limit:
                break
        return out

    return r.read(rows)


@router.get("/v1/decisions")
async def list_decisions(
    who: Viewer,
    r: Raft,
    device: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    return _visible(r, who, device, limit)


@router.get("/v1/decisions/{decision_id}")
async def show_decision(decision_id: str, who: Viewer, r: Raft) -> dict[str, Any]:
    d = r.read(lambda s: s.decision(decision_id)) if key_ok(decision_id) else None
    device = None if d is None else r.read(lambda s: s.device(d.device_id))
    # A decision about a device the asker may not see is as absent as a missing one.
    if d is None or (who.devices is not None and (device is None or not who.sees(device))):
        raise HTTPException(404, f"no decision {decision_id[:80]!r}")
    return decision_json(d, r.read(lambda s: s.alert_ack(decision_id)))


@router.get("/v1/alerts")
async def list_alerts(
    who: Viewer,
    r: Raft,
    device: str | None = None,
    unacknowledged: bool = False,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    rows = [d for d in _visible(r, who, device, 10_000) if d["alert"]]
    if unacknowledged:
        rows = [d for d in rows if d["acknowledged"] is None]
    return rows[:limit]


@router.post("/v1/alerts/{decision_id}/ack")
async def ack_alert(decision_id: str, who: Operator, r: Raft) -> dict[str, Any]:
    d = r.read(lambda s: s.decision(decision_id)) if key_ok(decision_id) else None
    if d is None or not decision_json(d, None)["alert"]:
        raise HTTPException(404, f"no alert {decision_id!r}")
    check(await commit(r, e.encode(e.AckAlert(decision_id, who.name, wall_ms()))))
    return decision_json(d, r.read(lambda s: s.alert_ack(decision_id)))
