"""The device registry and what the devices reported.

POST   /v1/devices {...}            register (admin); answers the device's secrets
GET    /v1/devices                  the registry, as the asker may see it
GET    /v1/devices/{id}             one device: progress, presence, last status
GET    /v1/devices/{id}/config      the device's secrets config again (admin)
DELETE /v1/devices/{id}             remove it and its data (admin)
GET    /v1/devices/{id}/readings    from_ms, to_ms, sensor, limit, linearizable
GET    /v1/devices/{id}/energy      day=YYYY-MM-DD: hourly Wh
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import date
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, HTTPException, Query

from hub.core import auth, tls
from hub.core.clock import wall_ms
from hub.http.bodies import DeviceIn, capabilities_of
from hub.http.node import Node
from hub.http.principal import Admin, Raft, ThisNode, Viewer, known
from hub.http.replica import barrier, check, commit
from hub.http.serializers import device_config, device_json
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m
from protocol.topics import valid_device_id

router = APIRouter()

MAX_MS: Final = 2**63 - 1
MAX_READINGS: Final = 100_000  # per readings query (limit)


@router.post("/v1/devices", status_code=201)
async def add_device(body: DeviceIn, _: Admin, r: Raft, node: ThisNode) -> dict[str, Any]:
    if not valid_device_id(body.device_id):
        raise HTTPException(422, f"bad device id {body.device_id!r}: 1-64 of A-Z a-z 0-9 . _ -")
    if auth.reserved_name(body.device_id):
        raise HTTPException(422, f"device id {body.device_id!r} is reserved for the hub")
    if r.read(lambda s: s.device(body.device_id)) is not None:
        raise HTTPException(409, f"device {body.device_id!r} is already registered")
    device = e.Device(
        body.device_id,
        secrets.token_bytes(32),
        capabilities_of(body.capabilities),
        body.limit_w,
        body.owner,
    )
    check(await commit(r, e.encode(e.RegisterDevice(device, wall_ms()))))
    return device_config(r, device, _pinned_ca(node))


@router.get("/v1/devices")
async def list_devices(who: Viewer, r: Raft) -> list[dict[str, Any]]:
    def rows(s: Store) -> list[dict[str, Any]]:
        out = []
        for d in s.devices():
            if not who.sees(d):
                continue
            p = s.presence(d.device_id)
            wm, lost = s.progress(d.device_id)
            out.append(
                {
                    **device_json(d),
                    "watermark": wm,
                    "lost_before": lost,
                    "node": None if p is None else p.node_id,
                    "online": p is not None and p.state is m.LinkState.ONLINE,
                }
            )
        return out

    return r.read(rows)


@router.get("/v1/devices/{device_id}")
async def show_device(device_id: str, who: Viewer, r: Raft, node: ThisNode) -> dict[str, Any]:
    d = known(r, device_id, who)
    p = r.read(lambda s: s.presence(device_id))
    wm, lost = r.read(lambda s: s.progress(device_id))
    last = node.statuses.get(device_id)
    return {
        **device_json(d),
        "watermark": wm,
        "lost_before": lost,
        "presence": None
        if p is None
        else {"node": p.node_id, "state": p.state.name, "at_ms": p.at_ms},
        "last_status": None
        if last is None
        else {**m.to_dict(last[0]), "received_at": round(last[1], 3)},
    }


@router.get("/v1/devices/{device_id}/config")
async def config_of(device_id: str, _: Admin, r: Raft, node: ThisNode) -> dict[str, Any]:
    return device_config(r, known(r, device_id), _pinned_ca(node))


def _pinned_ca(node: Node) -> bytes | None:
    """The cluster CA a device pins (DER), or None when the hub runs plain TCP."""
    t = node.cfg.tls
    return tls.ca_der(t.ca) if t.on and t.ca is not None else None


@router.delete("/v1/devices/{device_id}")
async def remove_device(device_id: str, _: Admin, r: Raft) -> dict[str, Any]:
    known(r, device_id)
    check(await commit(r, e.encode(e.RemoveDevice(device_id, wall_ms()))))
    return {"removed": device_id}


@router.get("/v1/devices/{device_id}/readings")
async def readings(
    device_id: str,
    who: Viewer,
    r: Raft,
    from_ms: Annotated[int, Query(ge=0, le=MAX_MS)] = 0,
    to_ms: Annotated[int, Query(ge=0, le=MAX_MS)] = MAX_MS,
    sensor: Annotated[int | None, Query(ge=0, le=65535)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_READINGS)] = 10_000,
    linearizable: bool = False,
) -> dict[str, Any]:
    if linearizable:
        await barrier(r)
    known(r, device_id, who)
    if to_ms <= from_ms:
        raise HTTPException(422, "to_ms must be above from_ms")
    # The store stops scanning once it has limit + 1 (the one more says
    # "truncated"), and the scan runs off the event loop.
    rows = await asyncio.to_thread(
        r.read, lambda s: s.readings_between(device_id, from_ms, to_ms, sensor, limit + 1)
    )
    truncated = len(rows) > limit
    rows = rows[:limit]
    return {
        "device_id": device_id,
        "truncated": truncated,
        "readings": [
            {"seq": x.seq, "ts_ms": x.ts_ms, "sensor": x.sensor, "value": x.value} for x in rows
        ],
    }


@router.get("/v1/devices/{device_id}/rollups")
async def rollups(
    device_id: str,
    who: Viewer,
    r: Raft,
    period: Annotated[Literal["hour", "day"], Query()] = "hour",
    from_ms: Annotated[int, Query(ge=0, le=MAX_MS)] = 0,
    to_ms: Annotated[int, Query(ge=0, le=MAX_MS)] = MAX_MS,
    sensor: Annotated[int | None, Query(ge=0, le=65535)] = None,
    linearizable: bool = False,
) -> dict[str, Any]:
    """Hourly or daily (UTC) figures per sensor, kept long after the raw
    readings (hub/state/DESIGN.md "Retention and rollups")."""
    if linearizable:
        await barrier(r)
    known(r, device_id, who)
    if to_ms <= from_ms:
        raise HTTPException(422, "to_ms must be above from_ms")
    rows = await asyncio.to_thread(
        r.read, lambda s: s.rollups(device_id, from_ms, to_ms, sensor, period=period)
    )
    unit = 3_600_000 if period == "hour" else 86_400_000
    return {
        "device_id": device_id,
        "period": period,
        "rows": [
            {
                "start_ms": n * unit,
                "sensor": s,
                "count": x.count,
                "min": x.min if x.count and x.min <= x.max else None,
                "max": x.max if x.count and x.min <= x.max else None,
                "mean": x.mean,
                "wh": round(x.wh, 9),
            }
            for n, s, x in rows
        ],
    }


@router.get("/v1/devices/{device_id}/energy")
async def energy(
    device_id: str, who: Viewer, r: Raft, day: date, linearizable: bool = False
) -> dict[str, Any]:
    if linearizable:
        await barrier(r)
    known(r, device_id, who)
    hours = r.read(lambda s: s.hourly_energy(device_id, day))
    return {
        "device_id": device_id,
        "day": day.isoformat(),
        "hours": [{"start_ms": h.start_ms, "wh": round(h.wh, 6)} for h in hours],
    }
