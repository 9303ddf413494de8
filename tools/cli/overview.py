"""`aiot overview`: the household's home overview from a hub node's API.

It prints ``GET /v1/overview`` (hub/http/routes/overview.py), the answer the
dashboard's home page shows: with ``--json`` as the API gives it (the keys
``power_w_now``, ``today_wh``, ``today_cost``, ``yesterday_wh``, ``devices``
with each one's ``device_id``, ``wh`` and ``cost``, and more: docs/api.md),
otherwise as a few lines. ``--day`` is a local day in the tariff's time zone.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail, print_json
from tools.cli.remote import JsonOpt, on_hub, utc_ms


def _wh(wh: float | None) -> str:
    if wh is None:
        return "-"
    return f"{wh / 1000:.3f} kWh" if abs(wh) >= 1000 else f"{wh:.1f} Wh"


def _money(cost: float | None, currency: str | None) -> str:
    if cost is None or currency is None:
        return "-"
    return f"{cost:.{4 if cost and abs(cost) < 1 else 2}f} {currency}"


def _lines(out: dict[str, Any]) -> list[str]:
    cur = out["currency"]
    which = "today" if out["today"] else out["day"]
    power = out["power_w_now"]
    lines = [
        f"day            {out['day']} ({out['timezone']}, {out['hours']} h)",
        f"power now      {'-' if power is None else f'{power:.1f} W'}"
        + (f"  (stale: {', '.join(out['stale'])})" if out["stale"] else ""),
        f"{which:<14} {_wh(out['today_wh'])}  {_money(out['today_cost'], cur)}",
        f"{'day before':<14} {_wh(out['yesterday_wh'])}  {_money(out['yesterday_cost'], cur)}",
        f"open alerts    {out['open_alerts']}",
    ]
    for d in out["devices"]:
        lines.append(
            f"  {d['device_id']:<20} {_wh(d['wh']):>14} {_money(d['cost'], cur):>12}"
            f"  day before {_wh(d['yesterday_wh'])}"
        )
    for a in out["alerts"]:
        lines.append(f"  alert {utc_ms(a['at_ms'])}  {a['decision_id']}  {a['device_id']}")
    return lines


@on_hub
def overview(
    client: HubClient,
    day: Annotated[
        str | None, typer.Option(help="A local day in the tariff's time zone, YYYY-MM-DD.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Power now, a day's energy and cost per device, the day before, open alerts."""
    if day is not None:
        try:
            date.fromisoformat(day)
        except ValueError:
            raise fail(f"--day {day!r}: expected YYYY-MM-DD") from None
    out = client.get("/v1/overview", day=day)
    if json_out:
        print_json(out)
        return
    for line in _lines(out):
        typer.echo(line)
