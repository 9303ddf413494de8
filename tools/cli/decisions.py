"""`aiot decisions`, `aiot alerts` and `aiot ask`: what the hub decided and
why, through a hub node's API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import group, nothing, print_json
from tools.cli.remote import JsonOpt, on_hub, utc_ms

decisions_app = group("decisions", "Decisions and their provenance.")
alerts_app = group("alerts", "Alerts: decisions that notify.")

DeviceOpt = Annotated[str | None, typer.Option(help="Only this device.")]


def _for(device: str | None) -> str:
    return f" for {device}" if device else ""


def _decision_line(d: dict[str, Any]) -> str:
    action = d.get("action") or {}
    what = action.get("name", "alert") if isinstance(action, dict) else "alert"
    verdict = (d.get("guard") or {}).get("outcome", "-")
    return (
        f"{utc_ms(d['at_ms'])}  {d['decision_id']}  {d['device_id']:<16} {d['tier']:<8} "
        f"{what:<12} guard={verdict:<8} command={d['command_id'] or '-'}"
    )


@decisions_app.command("list")
@on_hub
def decisions_list(
    client: HubClient,
    device: DeviceOpt = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Newest first: tier, action, the guard's verdict and the command it issued."""
    rows = client.get("/v1/decisions", device=device, limit=limit)
    if json_out:
        print_json(rows)
        return
    if not rows:
        nothing("decisions" + _for(device))
    for d in rows:
        typer.echo(_decision_line(d))


@decisions_app.command("show")
@on_hub
def decisions_show(client: HubClient, decision_id: str) -> None:
    """One decision with its full provenance."""
    print_json(client.get(f"/v1/decisions/{decision_id}"))


@alerts_app.command("list")
@on_hub
def alerts_list(
    client: HubClient,
    device: DeviceOpt = None,
    unacknowledged: Annotated[bool, typer.Option(help="Only those not acknowledged.")] = False,
) -> None:
    """Alerts, newest first."""
    unacked = "true" if unacknowledged else None
    rows = client.get("/v1/alerts", device=device, unacknowledged=unacked)
    if not rows:
        nothing(("open alerts" if unacknowledged else "alerts") + _for(device))
    for d in rows:
        ack = d["acknowledged"]
        facts = "; ".join(d.get("facts", [])[:1])
        typer.echo(
            f"{utc_ms(d['at_ms'])}  {d['decision_id']}  {d['device_id']:<16} "
            f"{'acked by ' + ack['by'] if ack else 'OPEN':<16} {facts}"
        )


@alerts_app.command("ack")
@on_hub
def alerts_ack(client: HubClient, decision_id: str) -> None:
    """Acknowledge an alert."""
    client.post(f"/v1/alerts/{decision_id}/ack", {})
    typer.echo(f"acknowledged {decision_id}")


@on_hub
def ask(
    client: HubClient,
    question: Annotated[str, typer.Argument(help='For example: "why did plug-7 switch off?"')],
    json_out: JsonOpt = False,
) -> None:
    """Ask the hub about a device; answers come from the ledger and readings."""
    out = client.post("/v1/ask", {"question": question})
    if json_out:
        print_json(out)
        return
    typer.echo(out["answer"])
    if out["sources"]:
        typer.echo(f"(from {', '.join(out['sources'])}; {out['method']})", err=True)
