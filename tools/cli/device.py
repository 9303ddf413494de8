"""`aiot device`: the replicated device registry, through a hub node's API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.cli.output import fail, group, print_json
from tools.cli.remote import JsonOpt, on_hub

device_app = group("device", "The device registry (replicated).")


@device_app.command("add")
@on_hub
def device_add(
    client: HubClient,
    device_id: Annotated[str, typer.Argument(help="The device id: 1-64 of A-Z a-z 0-9 . _ -")],
    caps: Annotated[
        Path | None,
        typer.Option(help="Capabilities JSON file (default: a smart plug's).", exists=True),
    ] = None,
    limit_w: Annotated[
        float | None, typer.Option("--limit-w", min=0, help="Power limit, W.")
    ] = None,
    owner: Annotated[str, typer.Option(help="The owning user.")] = "",
    out: Annotated[
        Path | None, typer.Option(help="Write the device's secrets config here (mode 600).")
    ] = None,
) -> None:
    """Register a device through Raft; print (or write) its secrets config."""
    body: dict[str, Any] = {"device_id": device_id, "owner": owner}
    if limit_w is not None:
        body["limit_w"] = limit_w
    if caps is not None:
        try:
            body["capabilities"] = json.loads(caps.read_text())
        except (OSError, ValueError) as exc:
            raise fail(f"{caps}: not a JSON capabilities list: {exc}") from None
    text = json.dumps(client.post("/v1/devices", body), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    typer.echo(f"registered {device_id}; its secrets config is in {out}", err=True)


@device_app.command("list")
@on_hub
def device_list(client: HubClient, json_out: JsonOpt = False) -> None:
    """Every registered device, with its watermark and where it is connected."""
    rows = client.get("/v1/devices")
    if json_out:
        print_json(rows)
        return
    typer.echo(f"{'device':<24} {'online':<7} {'node':<12} {'watermark':>10}  owner")
    for r in rows:
        online = "yes" if r["online"] else "no"
        typer.echo(
            f"{r['device_id']:<24} {online:<7} {r['node'] or '-':<12} {r['watermark']:>10}  "
            f"{r['owner'] or '-'}"
        )


@device_app.command("show")
@on_hub
def device_show(
    client: HubClient,
    device_id: str,
    secrets: Annotated[bool, typer.Option(help="Print the device's secrets config.")] = False,
) -> None:
    """One device: capabilities, progress, presence and last status."""
    print_json(client.get(f"/v1/devices/{device_id}" + ("/config" if secrets else "")))


@device_app.command("remove")
@on_hub
def device_remove(client: HubClient, device_id: str) -> None:
    """Remove a device with its readings (the command ledger stays)."""
    client.delete(f"/v1/devices/{device_id}")
    typer.echo(f"removed {device_id}")
