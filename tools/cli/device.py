"""`aiot device`: the replicated device registry, through a hub node's API;
and `aiot device run`, which runs the firmware as one of those devices here.

    aiot device add plug-1 --config cluster/hub-1.toml --out plug-1.json
    aiot device run plug-1.json          # a simulated plug, until Ctrl-C
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient
from tools.base.paths import micropython_binary
from tools.cli.output import fail, group, nothing, print_json, reported, say
from tools.cli.remote import JsonOpt, on_hub
from tools.firmware.build import load_device_config
from tools.lab.device import Console, Device, edge_runtime
from tools.lab.links import LinkEvent

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
    if not rows:
        nothing("devices")
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


def _at() -> str:
    return time.strftime("%H:%M:%S")


def _hub(hubs: list[list[Any]], i: int) -> str:
    return f"{hubs[i][0]}:{hubs[i][1]} (hub {i + 1} of {len(hubs)})"


def _event_line(device_id: str, hubs: list[list[Any]], event: LinkEvent) -> str:
    where = _hub(hubs, event.hub)
    if event.kind == "connected":
        return f"{_at()} {device_id} connected to {where}"
    if event.kind == "reconnected":
        return f"{_at()} {device_id} reconnected to {where}"
    assert event.previous is not None
    was = hubs[event.previous]
    return f"{_at()} {device_id} failed over to {where}, from {was[0]}:{was[1]}"


@contextlib.contextmanager
def _only_runner(data: Path) -> Iterator[None]:
    """Hold ``data/run.lock``: two processes of one device would share its
    flash slots (and take each other's broker session)."""
    if data.exists() and not data.is_dir():
        raise fail(f"{data} is not a folder: give the device's data folder with --data DIR")
    data.mkdir(parents=True, exist_ok=True)
    with (data / "run.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise fail(f"{data} is in use: this device already runs (aiot device run)") from None
        yield


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the device as Ctrl-C does: cleanly, with its counters."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _stop(console: Console, device_id: str) -> dict[str, Any]:
    """Ctrl-C to the device; its counters (a second Ctrl-C stops it at once)."""
    say(f"{_at()} {device_id} stopping (its store closes; Ctrl-C again stops it at once)")
    try:
        console.stop(console.log_line)
    except KeyboardInterrupt:
        console.device.kill()
        raise fail(f"{device_id} stopped at once, without its counters", 1) from None
    if console.counters is None:
        log = console.device.log
        raise fail(f"{device_id} stopped without printing its counters: see {log}", 1)
    return console.counters


@device_app.command("run")
def device_run(
    config: Annotated[
        Path,
        typer.Argument(help="The device's config, as `aiot device add ID --out FILE` writes it."),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The device's data folder: its flash slots and log (default: beside CONFIG, "
            "plug-1.json's is plug-1.data)."
        ),
    ] = None,
) -> None:
    """Run the firmware as this device (a simulated plug) until Ctrl-C; say when it
    connects to a hub and each time it fails over to another."""
    with reported():
        cfg = load_device_config(config)
    device_id, hubs = str(cfg["device_id"]), list(cfg["hubs"])
    data = (data or config.with_name(config.stem + ".data")).absolute()
    runtime = edge_runtime()
    on = f"MicroPython ({micropython_binary()})" if runtime == "micropython" else "CPython"
    settings = {k: v for k, v in cfg.items() if k != "data_dir"}  # its data: DATA/data
    with _only_runner(data), _sigterm_as_ctrl_c():
        device = Device(data, settings, runtime=runtime, new_session=True)
        say(f"{device_id}: the firmware on {on}, data in {data}; Ctrl-C stops it")
        console = Console(device.start())
        try:
            status = console.follow(
                lambda e: typer.echo(_event_line(device_id, hubs, e)),
                say,
                lambda s: say(
                    f"{_at()} {device_id} not connected after {s:.0f}s: no hub of "
                    f"{', '.join(f'{h}:{p}' for h, p in hubs)} has taken it yet"
                ),
            )
        except KeyboardInterrupt:
            counters = _stop(console, device_id)
        else:
            raise fail(
                f"{device_id}'s firmware exited with status {status}: {console.last_line} "
                f"(its log: {device.log})",
                1,
            )
        finally:
            device.stop()
    typer.echo(f"{_at()} {device_id} stopped; its counters:")
    typer.echo(json.dumps(counters, indent=2))
