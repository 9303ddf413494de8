"""The household's home overview and a device's week, priced by the tariff.

GET /v1/overview?day=YYYY-MM-DD     power now; the day's energy and cost per
                                    device, top consumers first; the day before;
                                    the open alerts
GET /v1/devices/{id}/week?day=      the seven days ending on ``day``: Wh and cost

A day is the local day in the tariff's time zone (``[tariff] timezone``,
hub/core/tariff.py; UTC without a tariff), of 23 or 25 hours when the clocks
change; without ``day`` it is today there by this node's clock. Energy is
``Store.hourly_energy`` of that local day, each hour priced by the tariff at
its local time (``Tariff.cost``); every total is the sum of its devices' (or
hours') unrounded figures, rounded once. Costs are None without a tariff.

Power now is the sum over the asker's devices of each one's newest power
reading (sensor 0, edge/sensors.py), counted only when it is at most
``FRESH_MS`` old by this node's clock; a device with an older one is listed
in ``stale`` with its reading, and ``power_w_now`` is None when no device is
fresh. It is always now, whatever the day asked.

A viewer gets the figures of their own devices only (``Principal.sees``);
the page (hub/http/static/js/views/overview.js) and ``aiot overview`` show
this answer as it is. docs/api.md lists the fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from typing import Any, Final, TypeVar

from fastapi import APIRouter, HTTPException

from hub.core.clock import wall_ms
from hub.core.tariff import Tariff
from hub.http.principal import Principal, Raft, ThisNode, Viewer, known
from hub.http.replica import barrier
from hub.http.serializers import decision_json
from hub.state import entries as e
from hub.state.records import StoredReading
from hub.state.store import Store

router = APIRouter()

T = TypeVar("T")
Read = Callable[[Callable[[Store], T]], T]

POWER_W_SENSOR: Final = 0  # edge/sensors.py POWER_W
FRESH_MS: Final = 120_000  # a newer power reading counts as "now"
WEEK_DAYS: Final = 7
TOP: Final = 3  # top consumers named
SHOWN_ALERTS: Final = 10  # open alerts listed (all are counted)
ALERT_SCAN: Final = 10_000  # newest decisions looked through for open alerts
FIRST_DAY: Final = date(1970, 1, 1) + timedelta(days=WEEK_DAYS)
LAST_DAY: Final = date(9999, 12, 30)


def checked_day(day: date) -> date:
    """``day`` if the API can answer for it (its week and the next day are dates)."""
    if not FIRST_DAY <= day <= LAST_DAY:
        raise HTTPException(422, f"day must be in {FIRST_DAY}..{LAST_DAY}, got {day}")
    return day


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


def day_energy(s: Store, device_id: str, day: date, tariff: Tariff) -> tuple[float, float | None]:
    """The device's Wh and cost on the local day (unrounded)."""
    hours = s.hourly_energy(device_id, day, tariff.timezone)
    return sum(h.wh for h in hours), tariff.cost((h.start_ms, h.wh) for h in hours)


def latest_power(s: Store, device_id: str) -> StoredReading | None:
    """The device's newest stored power reading, from the last readings up to
    its watermark (a plug sends its three sensors together)."""
    wm, _ = s.progress(device_id)
    if wm <= 0:
        return None
    rows = s.readings(device_id, max(1, wm - 15), wm)
    powers = [x for x in rows if x.sensor == POWER_W_SENSOR]
    return max(powers, key=lambda x: (x.ts_ms, x.seq)) if powers else None


def _device_row(s: Store, device_id: str, day: date, tariff: Tariff, now_ms: int) -> dict[str, Any]:
    wh, cost = day_energy(s, device_id, day, tariff)
    y_wh, y_cost = day_energy(s, device_id, day - timedelta(days=1), tariff)
    p = latest_power(s, device_id)
    return {
        "device_id": device_id,
        "wh": wh,
        "cost": cost,
        "yesterday_wh": y_wh,
        "yesterday_cost": y_cost,
        "power_w": None if p is None else p.value,
        "power_at_ms": None if p is None else p.ts_ms,
        "power_fresh": p is not None and now_ms - p.ts_ms <= FRESH_MS,
    }


def _open_alerts(s: Store, who: Principal) -> list[dict[str, Any]]:
    """Unacknowledged alerts about devices ``who`` sees, newest first."""
    seen: dict[str, bool] = {}
    out = []
    for d in s.decisions(None, ALERT_SCAN):
        if d.device_id not in seen:
            dev = s.device(d.device_id)
            seen[d.device_id] = dev is not None and who.sees(dev)
        if not seen[d.device_id]:
            continue
        row = decision_json(d, s.alert_ack(d.decision_id))
        if row["alert"] and row["acknowledged"] is None:
            out.append(row)
    return out


def _hours(start_ms: int, end_ms: int) -> int:
    return round((end_ms - start_ms) / 3_600_000)


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows]
    return None if any(v is None for v in values) else sum(values)


def overview(
    read: Read[Any], who: Principal, tariff: Tariff, day: date, now_ms: int
) -> dict[str, Any]:
    """The overview of ``day`` for ``who``; ``read(fn)`` runs ``fn`` on the store."""
    devices: list[e.Device] = read(lambda s: [d for d in s.devices() if who.sees(d)])
    rows = [
        read(partial(_device_row, device_id=d.device_id, day=day, tariff=tariff, now_ms=now_ms))
        for d in devices
    ]
    rows.sort(key=lambda x: (-x["wh"], x["device_id"]))
    today_wh = sum(x["wh"] for x in rows)
    fresh = [x for x in rows if x["power_fresh"]]
    alerts = read(lambda s: _open_alerts(s, who))
    start, end = tariff.day_bounds(day)
    for x in rows:
        x["share"] = _r(x["wh"] / today_wh if today_wh > 0 else None, 4)
        for key in ("wh", "cost", "yesterday_wh", "yesterday_cost"):
            x[key] = _r(x[key])
    return {
        "day": day.isoformat(),
        "today": day == tariff.day_of(now_ms),
        "timezone": tariff.zone,
        "hours": _hours(start, end),
        "currency": tariff.currency,
        "tariff": tariff.json() if tariff.priced else None,
        "now_ms": now_ms,
        "power_w_now": _r(sum(x["power_w"] for x in fresh), 3) if fresh else None,
        "power_fresh_s": FRESH_MS // 1000,
        "stale": [
            x["device_id"] for x in rows if x["power_w"] is not None and not x["power_fresh"]
        ],
        "today_wh": _r(today_wh),
        "today_cost": _r(_total(rows, "cost")),
        "yesterday_wh": _r(sum(x["yesterday_wh"] for x in rows)),
        "yesterday_cost": _r(_total(rows, "yesterday_cost")),
        "devices": rows,
        "top": [x["device_id"] for x in rows if x["wh"] > 0][:TOP],
        "open_alerts": len(alerts),
        "alerts": alerts[:SHOWN_ALERTS],
    }


def week(read: Read[Any], device_id: str, tariff: Tariff, day: date) -> dict[str, Any]:
    """The device's energy and cost on each of the seven local days ending on ``day``."""
    days = []
    for back in range(WEEK_DAYS - 1, -1, -1):
        d = day - timedelta(days=back)
        wh, cost = read(partial(day_energy, device_id=device_id, day=d, tariff=tariff))
        start, end = tariff.day_bounds(d)
        days.append({"day": d.isoformat(), "hours": _hours(start, end), "wh": wh, "cost": cost})
    wh_total, cost_total = sum(x["wh"] for x in days), _total(days, "cost")
    for x in days:
        x["wh"], x["cost"] = _r(x["wh"]), _r(x["cost"])
    return {
        "device_id": device_id,
        "timezone": tariff.zone,
        "currency": tariff.currency,
        "days": days,
        "wh": _r(wh_total),
        "cost": _r(cost_total),
    }


@router.get("/v1/overview")
async def get_overview(
    who: Viewer, r: Raft, node: ThisNode, day: date | None = None, linearizable: bool = False
) -> dict[str, Any]:
    if linearizable:
        await barrier(r)
    tariff = node.cfg.tariff
    now = wall_ms()
    d = checked_day(tariff.day_of(now) if day is None else day)
    return await asyncio.to_thread(overview, r.read, who, tariff, d, now)


@router.get("/v1/devices/{device_id}/week")
async def get_week(
    device_id: str,
    who: Viewer,
    r: Raft,
    node: ThisNode,
    day: date | None = None,
    linearizable: bool = False,
) -> dict[str, Any]:
    if linearizable:
        await barrier(r)
    known(r, device_id, who)
    tariff = node.cfg.tariff
    d = checked_day(tariff.day_of(wall_ms()) if day is None else day)
    return await asyncio.to_thread(week, r.read, device_id, tariff, d)
