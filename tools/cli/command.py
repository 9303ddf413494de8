"""`aiot command`: commands to devices, through the replicated ledger.

A command's times come from two clocks. ``issued_at_ms``, ``deadline_ms``
and every step of its ``history`` (PENDING when issued, SENT, then the final
state when the answer was recorded) are hub clocks: the hub node named with
the step. The device's answer carries ``result.executed_at_ms`` from the
device's own clock, which follows the hubs' through the commit-acks and can
differ from them by tens of milliseconds, so it may read a little before
``issued_at_ms``. `aiot command show` prints the history as the timeline
and the device's time as the device's, with its difference from the step
that recorded the answer.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient, HubError
from tools.cli.output import fail, group, nothing, print_fields, print_json, say
from tools.cli.remote import JsonOpt, on_hub, utc_ms

command_app = group("command", "Commands to devices (the replicated ledger).")

_WAITING = ("PENDING", "SENT")


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


def _params(rec: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in rec["params"].items())


def _result(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The device's CommandResult in a ledger record, if it answered."""
    res = rec.get("result")
    if res is None:
        return None
    payload: dict[str, Any] = res.get("payload", res)
    return payload


def _answer(res: dict[str, Any]) -> str:
    """A CommandResult in words: ``DONE: relay off``, ``REJECTED BAD_PARAM: ...``."""
    reason = res.get("reason")
    text = str(res.get("status")) + (f" {reason}" if reason and reason != "NONE" else "")
    return text + (f": {res['detail']}" if res.get("detail") else "")


def _presence(client: HubClient, device_id: str) -> str:
    """Where the device is, as the hub knows it: online or offline, on which
    node, since when."""
    try:
        p = client.get(f"/v1/devices/{device_id}")["presence"]
    except HubError as exc:
        return f"{device_id}: presence unknown ({exc})"
    if p is None:
        return f"{device_id} has not connected to any hub node yet"
    since = utc_ms(p["at_ms"])
    if p["state"] == "ONLINE":
        return f"{device_id} is online on {p['node']} (since {since})"
    return f"{device_id} is offline (last seen on {p['node']} until {since})"


def _not_done(client: HubClient, rec: dict[str, Any], waited: float) -> None:
    """Why a waited-for command is not DONE, on stderr."""
    cid, state = rec["command_id"], rec["state"]
    if state in _WAITING:
        say(
            f"aiot: command {cid} is still {state} after {waited:g} s "
            f"(its deadline is {utc_ms(rec['deadline_ms'])})"
        )
        say(f"aiot: {_presence(client, rec['device_id'])}")
        return
    result = _result(rec)
    answer = "" if result is None else f" (the device answered {_answer(result)})"
    say(f"aiot: command {cid} ended {state}{answer}")


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
    while wait and rec["state"] in _WAITING and time.monotonic() < end:
        time.sleep(0.2)
        rec = client.get(f"/v1/commands/{rec['command_id']}")
    print_json(rec)
    if wait and rec["state"] != "DONE":
        _not_done(client, rec, wait)
        raise typer.Exit(1)


@command_app.command("list")
@on_hub
def command_list(client: HubClient, device_id: str) -> None:
    """A device's commands, oldest first."""
    rows = client.get("/v1/commands", device=device_id)
    if not rows:
        nothing(f"commands for {device_id}")
    for r in rows:
        typer.echo(
            f"{r['seq']:>5} {r['command_id']} {r['state']:<9} {utc_ms(r['issued_at_ms'])} "
            f"{r['action']} {_params(r)}"
        )


def _result_line(rec: dict[str, Any]) -> str:
    """The device's answer, its time on the device's clock set against the
    hub's record of the answer."""
    res = _result(rec) or {}
    what = _answer(res)
    at = res.get("executed_at_ms") or 0
    if not at:
        return what
    line = f"{what}; executed at {utc_ms(at)} by the device's clock"
    recorded = next((h for h in reversed(rec["history"]) if h["state"] == rec["state"]), None)
    if recorded is not None:
        diff = recorded["at_ms"] - at
        side = "before" if diff >= 0 else "after"
        line += f", {abs(diff)} ms {side} {recorded['node'] or 'the hub'} recorded the answer"
    return line


def print_command(rec: dict[str, Any]) -> None:
    """A ledger record for people: its history as the timeline (hub clocks)
    and the device's result with its own clock named."""
    fields = {
        "command": rec["command_id"],
        "device": f"{rec['device_id']} (seq {rec['seq']}, term {rec['term']})",
        "action": f"{rec['action']} {_params(rec)}".rstrip(),
        "state": rec["state"],
        "deadline": utc_ms(rec["deadline_ms"]),
    }
    print_fields(fields, 8)
    typer.echo(f"{'history':>8}  (hub clock)")
    for h in rec["history"]:
        where = f" on {h['node']}" if h["node"] else ""
        detail = f": {h['detail']}" if h["detail"] else ""
        typer.echo(f"{'':>8}  {utc_ms(h['at_ms'])}  {h['state']}{where}{detail}")
    if rec["result"] is not None:
        print_fields({"result": _result_line(rec)}, 8)


@command_app.command("show")
@on_hub
def command_show(client: HubClient, command_id: str, json_out: JsonOpt = False) -> None:
    """One command with its state history and the device's result."""
    rec = client.get(f"/v1/commands/{command_id}")
    if json_out:
        print_json(rec)
        return
    print_command(rec)
