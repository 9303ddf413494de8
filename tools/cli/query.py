"""`aiot query`: readings, or hourly energy, from a hub node's local store."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Annotated

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail
from tools.cli.remote import on_hub, utc_ms


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
        try:
            d = date.fromisoformat(day) if day else datetime.now(UTC).date()
        except ValueError:
            raise fail(f"--day {day!r}: expected YYYY-MM-DD") from None
        out = client.get(f"/v1/devices/{device_id}/energy", day=d.isoformat(), linearizable=lin)
        for h in out["hours"]:
            typer.echo(f"{utc_ms(h['start_ms'])[:16]}  {h['wh']:10.3f} Wh")
        return
    out = client.get(
        f"/v1/devices/{device_id}/readings",
        from_ms=_when(from_, 0),
        to_ms=_when(to, 2**63 - 1),
        sensor=sensor,
        limit=limit,
        linearizable=lin,
    )
    for r in out["readings"]:
        typer.echo(json.dumps(r))
    if out["truncated"]:
        typer.echo(f"aiot: more than {limit} readings; narrow --from/--to", err=True)
