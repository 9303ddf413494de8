"""`aiot query`: readings, or hourly energy, from a hub node's local store.
Hourly energy comes from the hourly rollups, so it outlives the raw readings
(hub/state/DESIGN.md "Retention and rollups").

Readings go to stdout as JSON lines, hourly energy as one line per hour.
When there are none (no reading in the range, or on the day) a line on
stderr says so. Options of the other form are refused, not ignored:
``--day`` goes only with ``--hourly``; ``--from``, ``--to`` and
``--sensor`` only without it.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail, nothing
from tools.cli.remote import on_hub, utc_ms

_END = 2**63 - 1


def _when(text: str | None, default: int) -> int:
    """--from/--to: ms since the epoch, or an ISO 8601 time (UTC unless it says)."""
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{text!r}: expected ms since the epoch or an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@on_hub
def query(
    client: HubClient,
    device_id: str,
    from_: Annotated[
        str | None, typer.Option("--from", help="Start: ms since the epoch or ISO 8601.")
    ] = None,
    to: Annotated[str | None, typer.Option(help="End (exclusive), as --from.")] = None,
    hourly: Annotated[bool, typer.Option(help="Hourly energy (Wh) for --day instead.")] = False,
    day: Annotated[str | None, typer.Option(help="The day for --hourly, YYYY-MM-DD (UTC).")] = None,
    sensor: Annotated[int | None, typer.Option(help="Only this sensor id.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many readings.")] = 10_000,
    linearizable: Annotated[
        bool, typer.Option(help="Read after a leader barrier: sees every earlier commit.")
    ] = False,
) -> None:
    """Readings (JSON lines) or hourly energy from a node's local store."""
    lin = "true" if linearizable else None
    if hourly:
        for name, given in (("--from", from_), ("--to", to), ("--sensor", sensor)):
            if given is not None:
                raise fail(f"{name} is for readings, not --hourly (which takes --day)")
        _hourly(client, device_id, day, lin)
        return
    if day is not None:
        raise fail("--day goes with --hourly; for readings give --from and --to")
    start, end = _when(from_, 0), _when(to, _END)
    out = client.get(
        f"/v1/devices/{device_id}/readings",
        from_ms=start,
        to_ms=end,
        sensor=sensor,
        limit=limit,
        linearizable=lin,
    )
    for r in out["readings"]:
        typer.echo(json.dumps(r))
    if out["truncated"]:
        typer.echo(f"aiot: more than {limit} readings; narrow --from/--to", err=True)
    if not out["readings"]:
        which = "" if sensor is None else f" of sensor {sensor}"
        since = f" from {utc_ms(start)}" if start else ""
        until = f" to {utc_ms(end)}" if end != _END else ""
        nothing(f"readings{which} from {device_id}{since}{until}")


def _hourly(client: HubClient, device_id: str, day: str | None, lin: str | None) -> None:
    """Hourly energy of one day (UTC), and a line on stderr when the day has
    no readings (every hour then reads 0)."""
    try:
        d = date.fromisoformat(day) if day else datetime.now(UTC).date()
    except ValueError:
        raise fail(f"--day {day!r}: expected YYYY-MM-DD") from None
    out = client.get(f"/v1/devices/{device_id}/energy", day=d.isoformat(), linearizable=lin)
    for h in out["hours"]:
        typer.echo(f"{utc_ms(h['start_ms'])[:16]}  {h['wh']:10.3f} Wh")
    start = int(datetime.combine(d, datetime.min.time(), UTC).timestamp() * 1000)
    # The day's rollups, not its raw readings: those may be gone already
    # ([retention]), and the energy above comes from the rollups.
    seen = client.get(
        f"/v1/devices/{device_id}/rollups", period="day", from_ms=start, to_ms=start + 1
    )
    if not any(r["count"] for r in seen["rows"]):
        nothing(f"readings from {device_id} on {d.isoformat()} (UTC)")
