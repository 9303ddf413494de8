"""`aiot command`: commands to devices, through the replicated ledger."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail, group, print_json
from tools.cli.remote import on_hub, utc_ms

command_app = group("command", "Commands to devices (the replicated ledger).")


def _param(text: str) -> tuple[str, bool | int | float | str]:
    """``name=value`` with the value as a bool, int, float or else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise fail(f"parameter {text!r}: expected name=value")
    low = raw.lower()
    if low in ("true", "on", "yes"):
        return name, True
    if low in ("false", "off", "no"):
        return name, False
    for kind in (int, float):
        try:
            return name, kind(raw)
        except ValueError:
            pass
    return name, raw


@command_app.command("send")
@on_hub
def command_send(
    client: HubClient,
    device_id: str,
    action: str,
    params: Annotated[list[str] | None, typer.Argument(help="name=value ...")] = None,
    deadline_s: Annotated[
        float | None, typer.Option("--deadline-s", min=0.001, help="Seconds to execute it in.")
    ] = None,
    wait: Annotated[float, typer.Option(help="Wait this long for a final state (0: no).")] = 0,
) -> None:
    """Put a command into the replicated ledger; the hub holding the device delivers it."""
    body: dict[str, Any] = {"device": device_id, "action": action, "params": {}}
    for p in params or []:
        name, value = _param(p)
        body["params"][name] = value
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    rec = client.post("/v1/commands", body)
    end = time.monotonic() + wait
    while wait and rec["state"] in ("PENDING", "SENT") and time.monotonic() < end:
        time.sleep(0.2)
        rec = client.get(f"/v1/commands/{rec['command_id']}")
    print_json(rec)
    if wait and rec["state"] != "DONE":
        raise typer.Exit(1)


@command_app.command("list")
@on_hub
def command_list(client: HubClient, device_id: str) -> None:
    """A device's commands, oldest first."""
    for r in client.get("/v1/commands", device=device_id):
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        typer.echo(
            f"{r['seq']:>5} {r['command_id']} {r['state']:<9} {utc_ms(r['issued_at_ms'])} "
            f"{r['action']} {params}"
        )


@command_app.command("show")
@on_hub
def command_show(client: HubClient, command_id: str) -> None:
    """One command with its state history and the device's result."""
    print_json(client.get(f"/v1/commands/{command_id}"))
