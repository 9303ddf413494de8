"""`aiot hub`, `aiot device`, `aiot command`, `aiot query` and `aiot cluster`.

Every command but `hub run` and `cluster init` talks to a hub node's HTTP API
(tools/base/hubclient.py): give it the node's config (`--config hub.toml`, which
also yields the admin token), or `--hub URL --token T`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from tools.base.hubclient import HubClient, HubError

hub_app = typer.Typer(help="The hub daemon.", no_args_is_help=True)
device_app = typer.Typer(help="The device registry (replicated).", no_args_is_help=True)
command_app = typer.Typer(help="Commands to devices (the replicated ledger).", no_args_is_help=True)
cluster_app = typer.Typer(help="Cluster membership and status.", no_args_is_help=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="A hub node's config file (or AIOT_CONFIG)."),
]
HubOpt = Annotated[str | None, typer.Option("--hub", help="A hub's HTTP URL (or AIOT_HUB).")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Admin token (or AIOT_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"aiot: {message}", err=True)
    return typer.Exit(code)


def _client(config: Path | None, hub: str | None, token: str | None) -> HubClient:
    try:
        return HubClient.from_options(config, hub, token)
    except HubError as exc:
        raise _fail(str(exc)) from None


def _call(client: HubClient, method: str, path: str, **kw: Any) -> Any:
    try:
        if method == "GET":
            return client.get(path, **kw)
        if method == "POST":
            return client.post(path, kw["body"])
        return client.delete(path)
    except HubError as exc:
        raise _fail(str(exc), 1) from None


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def _ms(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


# -- hub ----------------------------------------------------------------------------------


@hub_app.command("run")
def hub_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="This node's config file.")],
) -> None:
    """Run one hub node until SIGTERM or Ctrl-C."""
    from hub.daemon import main

    raise typer.Exit(main(config))


# -- devices ------------------------------------------------------------------------------


@device_app.command("add")
def device_add(
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
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register a device through Raft; print (or write) its secrets config."""
    body: dict[str, Any] = {"device_id": device_id, "owner": owner}
    if limit_w is not None:
        body["limit_w"] = limit_w
    if caps is not None:
        try:
            body["capabilities"] = json.loads(caps.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"{caps}: not a JSON capabilities list: {exc}") from None
    with _client(config, hub, token) as c:
        secrets = _call(c, "POST", "/v1/devices", body=body)
    text = json.dumps(secrets, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    import os

    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    typer.echo(f"registered {device_id}; its secrets config is in {out}", err=True)


@device_app.command("list")
def device_list(
    config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None, json_out: JsonOpt = False
) -> None:
    """Every registered device, with its watermark and where it is connected."""
    with _client(config, hub, token) as c:
        rows = _call(c, "GET", "/v1/devices")
    if json_out:
        _print(rows)
        return
    typer.echo(f"{'device':<24} {'online':<7} {'node':<12} {'watermark':>10}  owner")
    for r in rows:
        online = "yes" if r["online"] else "no"
        typer.echo(
            f"{r['device_id']:<24} {online:<7} {r['node'] or '-':<12} {r['watermark']:>10}  "
            f"{r['owner'] or '-'}"
        )


@device_app.command("show")
def device_show(
    device_id: str,
    secrets: Annotated[bool, typer.Option(help="Print the device's secrets config.")] = False,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """One device: capabilities, progress, presence and last status."""
    with _client(config, hub, token) as c:
        path = f"/v1/devices/{device_id}" + ("/config" if secrets else "")
        _print(_call(c, "GET", path))


@device_app.command("remove")
def device_remove(
    device_id: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """Remove a device with its readings (the command ledger stays)."""
    with _client(config, hub, token) as c:
        _call(c, "DELETE", f"/v1/devices/{device_id}")
    typer.echo(f"removed {device_id}")


# -- commands -----------------------------------------------------------------------------


def _param(text: str) -> tuple[str, bool | int | float | str]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise _fail(f"parameter {text!r}: expected name=value")
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
def command_send(
    device_id: str,
    action: str,
    params: Annotated[list[str] | None, typer.Argument(help="name=value ...")] = None,
    deadline_s: Annotated[
        float | None, typer.Option("--deadline-s", min=0.001, help="Seconds to execute it in.")
    ] = None,
    wait: Annotated[float, typer.Option(help="Wait this long for a final state (0: no).")] = 0,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Put a command into the replicated ledger; the hub holding the device delivers it."""
    import time

    body: dict[str, Any] = {"device": device_id, "action": action, "params": {}}
    for p in params or []:
        name, value = _param(p)
        body["params"][name] = value
    if deadline_s is not None:
        body["deadline_s"] = deadline_s
    with _client(config, hub, token) as c:
        rec = _call(c, "POST", "/v1/commands", body=body)
        end = time.monotonic() + wait
        while wait and rec["state"] in ("PENDING", "SENT") and time.monotonic() < end:
            time.sleep(0.2)
            rec = _call(c, "GET", f"/v1/commands/{rec['command_id']}")
    _print(rec)
    if wait and rec["state"] != "DONE":
        raise typer.Exit(1)


@command_app.command("list")
def command_list(
    device_id: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """A device's commands, oldest first."""
    with _client(config, hub, token) as c:
        rows = _call(c, "GET", "/v1/commands", device=device_id)
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        typer.echo(
            f"{r['seq']:>5} {r['command_id']} {r['state']:<9} {_ms(r['issued_at_ms'])} "
            f"{r['action']} {params}"
        )


@command_app.command("show")
def command_show(
    command_id: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """One command with its state history and the device's result."""
    with _client(config, hub, token) as c:
        _print(_call(c, "GET", f"/v1/commands/{command_id}"))


# -- query --------------------------------------------------------------------------------


def _when(text: str | None, default: int) -> int:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise _fail(f"{text!r}: expected ms since the epoch or an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def query(
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
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Readings (JSON lines) or hourly energy from a node's local store."""
    lin = "true" if linearizable else None
    with _client(config, hub, token) as c:
        if hourly:
            try:
                d = date.fromisoformat(day) if day else datetime.now(UTC).date()
            except ValueError:
                raise _fail(f"--day {day!r}: expected YYYY-MM-DD") from None
            out = _call(
                c, "GET", f"/v1/devices/{device_id}/energy", day=d.isoformat(), linearizable=lin
            )
            for h in out["hours"]:
                typer.echo(f"{_ms(h['start_ms'])[:16]}  {h['wh']:10.3f} Wh")
            return
        out = _call(
            c,
            "GET",
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


# -- cluster ------------------------------------------------------------------------------


@cluster_app.command("init")
def cluster_init(
    directory: Annotated[Path, typer.Argument(help="Where to write the configs.")],
    nodes: Annotated[int, typer.Option(min=1, max=9)] = 3,
    host: Annotated[str, typer.Option(help="The address every port binds to.")] = "127.0.0.1",
    broker: Annotated[str, typer.Option(help="mosquitto or embedded.")] = "mosquitto",
    base_port: Annotated[
        int, typer.Option(help="Raft ports from here; brokers +100, HTTP +200.")
    ] = 4321,
) -> None:
    """Write configs and a cluster secret for a cluster of NODES nodes."""
    from tools.lab.cluster import main_init

    if broker not in ("mosquitto", "embedded"):
        raise _fail("--broker: expected mosquitto or embedded")
    for p in main_init(directory, nodes, host, broker, base_port):
        typer.echo(str(p))
    typer.echo(f"instructions: {directory / 'README.txt'}", err=True)


@cluster_app.command("status")
def cluster_status(
    config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None, json_out: JsonOpt = False
) -> None:
    """Each node: up, leader, term, commit and applied index, lag, broker, devices."""
    with _client(config, hub, token) as c:
        table = _call(c, "GET", "/v1/cluster")
        token_header = c._http.headers["Authorization"].split(" ", 1)[1]
    rows = []
    for n in table["nodes"]:
        row: dict[str, Any] = {"node_id": n["node_id"], "http": n["http"], "up": False}
        try:
            with HubClient(f"http://{n['http']}", token_header, timeout=3.0) as nc:
                st = nc.get("/v1/status")
            raft = st["raft"]
            row.update(
                up=True,
                leader=raft["is_leader"],
                term=raft["term"],
                commit_index=raft["commit_index"],
                applied_index=raft["applied_index"],
                lag=st["lag"],
                broker=st["broker"],
                devices=len(st["devices_connected"]),
            )
        except HubError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if json_out:
        _print({"leader": table["leader"], "term": table["term"], "nodes": rows})
        return
    typer.echo(
        f"{'node':<10} {'up':<4} {'role':<9} {'term':>5} {'commit':>8} {'applied':>8} "
        f"{'lag':>5}  {'broker':<22} devices"
    )
    for r in rows:
        if not r["up"]:
            typer.echo(f"{r['node_id']:<10} {'no':<4} {r.get('error', '')}")
            continue
        b = r["broker"]
        broker = f"{b['mode']} {b['address']}" + ("" if b["consumer_connected"] else " (down)")
        role = "leader" if r["leader"] else "follower"
        typer.echo(
            f"{r['node_id']:<10} {'yes':<4} {role:<9} {r['term']:>5} {r['commit_index']:>8} "
            f"{r['applied_index']:>8} {r['lag']:>5}  {broker:<22} {r['devices']}"
        )


@cluster_app.command("add-node")
def cluster_add_node(
    raft_address: Annotated[str, typer.Argument(help="The new node's raft.bind, host:port.")],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add a node to the cluster (start it with the other nodes as its peers)."""
    with _client(config, hub, token) as c:
        _call(c, "POST", "/v1/cluster/nodes", body={"raft": raft_address})
    typer.echo(f"added {raft_address}")


@cluster_app.command("remove-node")
def cluster_remove_node(
    raft_address: Annotated[str, typer.Argument(help="The node's raft.bind, host:port.")],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Remove a node from the cluster."""
    with _client(config, hub, token) as c:
        _call(c, "DELETE", f"/v1/cluster/nodes/{raft_address}")
    typer.echo(f"removed {raft_address}")


# -- users ------------------------------------------------------------------------------

user_app = typer.Typer(help="API users and their roles (replicated).", no_args_is_help=True)


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "viewer",
    device: Annotated[
        list[str] | None, typer.Option("--device", help="A device a viewer may see (repeat).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create or update a user (a new user needs a password)."""
    import getpass
    import sys

    body: dict[str, Any] = {"role": role, "devices": device or []}
    if password_stdin:
        body["password"] = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        body["password"] = getpass.getpass(f"password for {name}: ")
    with _client(config, hub, token) as c:
        try:
            out = c.request("PUT", f"/v1/users/{name}", json=body)
        except HubError as exc:
            raise _fail(str(exc), 1) from None
    typer.echo(
        f"{out['name']}: {out['role']}"
        + (f" ({', '.join(out['devices'])})" if out["devices"] else "")
    )


@user_app.command("list")
def user_list(config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None) -> None:
    """Every user with role and assigned devices."""
    with _client(config, hub, token) as c:
        for u in _call(c, "GET", "/v1/users"):
            typer.echo(f"{u['name']:<24} {u['role']:<9} {', '.join(u['devices']) or '-'}")


@user_app.command("remove")
def user_remove(
    name: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """Remove a user; their tokens stop working."""
    with _client(config, hub, token) as c:
        _call(c, "DELETE", f"/v1/users/{name}")
    typer.echo(f"removed {name}")


# -- the demo -----------------------------------------------------------------------------


def demo(
    hubs: Annotated[int, typer.Option(min=1, max=7, help="Hub nodes.")] = 3,
    devices: Annotated[int, typer.Option(min=1, max=50, help="Simulated smart plugs.")] = 6,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="End with a JSON summary line.")] = False,
    fresh: Annotated[bool, typer.Option(help="Start with empty data.")] = False,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo keeps its state.")
    ] = Path(".aiot-demo"),
) -> None:
    """A hub cluster, simulated smart plugs and the energy scenario, all real processes."""
    from tools.demo.energy import DemoError, run_demo

    try:
        summary = run_demo(
            directory, hubs, devices, duration, fresh, lambda line: typer.echo(line, err=json_out)
        )
    except (DemoError, HubError) as exc:
        raise _fail(str(exc), 1) from None
    if json_out:
        typer.echo(json.dumps(summary))
    else:
        for k, v in summary.items():
            typer.echo(f"{k:>26}  {json.dumps(v)}")
    if summary["errors"]:
        raise typer.Exit(1)


# -- decisions and alerts --------------------------------------------------------------

decisions_app = typer.Typer(help="Decisions and their provenance.", no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: decisions that notify.", no_args_is_help=True)


def _decision_line(d: dict[str, Any]) -> str:
    action = d.get("action") or {}
    what = action.get("name", "alert") if isinstance(action, dict) else "alert"
    verdict = (d.get("guard") or {}).get("outcome", "-")
    return (
        f"{_ms(d['at_ms'])}  {d['decision_id']}  {d['device_id']:<16} {d['tier']:<8} "
        f"{what:<12} guard={verdict:<8} command={d['command_id'] or '-'}"
    )


@decisions_app.command("list")
def decisions_list(
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Newest first: tier, action, the guard's verdict and the command it issued."""
    with _client(config, hub, token) as c:
        rows = _call(c, "GET", "/v1/decisions", device=device, limit=limit)
    if json_out:
        _print(rows)
        return
    for d in rows:
        typer.echo(_decision_line(d))


@decisions_app.command("show")
def decisions_show(
    decision_id: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """One decision with its full provenance."""
    with _client(config, hub, token) as c:
        _print(_call(c, "GET", f"/v1/decisions/{decision_id}"))


@alerts_app.command("list")
def alerts_list(
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    unacknowledged: Annotated[bool, typer.Option(help="Only those not acknowledged.")] = False,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Alerts, newest first."""
    with _client(config, hub, token) as c:
        rows = _call(
            c,
            "GET",
            "/v1/alerts",
            device=device,
            unacknowledged="true" if unacknowledged else None,
        )
    for d in rows:
        ack = d["acknowledged"]
        facts = "; ".join(d.get("facts", [])[:1])
        typer.echo(
            f"{_ms(d['at_ms'])}  {d['decision_id']}  {d['device_id']:<16} "
            f"{'acked by ' + ack['by'] if ack else 'OPEN':<16} {facts}"
        )


@alerts_app.command("ack")
def alerts_ack(
    decision_id: str, config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None
) -> None:
    """Acknowledge an alert."""
    with _client(config, hub, token) as c:
        _call(c, "POST", f"/v1/alerts/{decision_id}/ack", body={})
    typer.echo(f"acknowledged {decision_id}")


def ask(
    question: Annotated[str, typer.Argument(help='For example: "why did plug-7 switch off?"')],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask the hub about a device; answers come from the ledger and readings."""
    with _client(config, hub, token) as c:
        out = _call(c, "POST", "/v1/ask", body={"question": question})
    if json_out:
        _print(out)
        return
    typer.echo(out["answer"])
    if out["sources"]:
        typer.echo(f"(from {', '.join(out['sources'])}; {out['method']})", err=True)


# -- models -------------------------------------------------------------------------------

models_app = typer.Typer(
    help="The model registry: signed versions, hot activation.", no_args_is_help=True
)
eval_app = typer.Typer(help="Measure models before they are trusted.", no_args_is_help=True)


@models_app.command("keygen")
def models_keygen(
    out: Annotated[Path, typer.Option(help="Write the private key here (mode 600).")],
) -> None:
    """An Ed25519 signing key; prints the public key for [models] trusted_keys."""
    import os

    from hub.core.keys import keygen

    if out.exists():
        raise _fail(f"{out} exists; refusing to overwrite a key")
    priv, pub = keygen()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(priv + "\n")
    typer.echo(pub)
    typer.echo(f"private key in {out}; add the public key above to [models] trusted_keys", err=True)


@models_app.command("push")
def models_push(
    file: Annotated[Path, typer.Argument(help="The model file (.onnx or .gguf).", exists=True)],
    name: Annotated[str, typer.Option(help="The model's name, e.g. anomaly.")],
    sign_key: Annotated[Path, typer.Option(help="Ed25519 private key (aiot models keygen).")],
    version: Annotated[
        str | None, typer.Option(help="Default: from the manifest, or a timestamp.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The model's own manifest (default: FILE with .json).")
    ] = None,
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Sign a model version and upload it to one hub; the others fetch it by sha256."""
    import base64
    import hashlib
    import time

    from hub.core import keys
    from hub.decide import registry as reg

    kind = "gguf" if file.suffix == ".gguf" else "onnx"
    inner: dict[str, Any] = {}
    man_path = manifest or file.with_suffix(".json")
    if man_path.exists():
        try:
            inner = json.loads(man_path.read_text())
        except ValueError as exc:
            raise _fail(f"{man_path}: not JSON: {exc}") from None
    elif manifest is not None:
        raise _fail(f"{manifest} does not exist")
    data = file.read_bytes()
    version = version or str(inner.get("version") or time.strftime("%Y%m%d%H%M%S"))
    try:
        key = keys.private_key(sign_key)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    signed = reg.signed_manifest(name, version, kind, data, inner)
    signature, kid = keys.sign(signed, key)
    sha = hashlib.sha256(data).hexdigest()
    with _client(config, hub, token) as c:
        typer.echo(f"uploading {file.name} ({len(data)} bytes, sha256 {sha[:12]}...)", err=True)
        try:
            c.request("PUT", f"/v1/models/blobs/{sha}", content=data)
            out = c.post(
                "/v1/models",
                {
                    "manifest": signed.decode(),
                    "signature": base64.b64encode(signature).decode(),
                    "key_id": kid,
                },
            )
        except HubError as exc:
            raise _fail(str(exc), 1) from None
    typer.echo(f"registered {out['name']}@{out['version']} ({out['sha256'][:12]}...)")


@models_app.command("activate")
def models_activate(
    target: Annotated[str, typer.Argument(help="NAME@VERSION")],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
) -> None:
    """Hot-swap every hub to this version (rollback: activate the previous one)."""
    name, sep, version = target.partition("@")
    if not sep or not name or not version:
        raise _fail("expected NAME@VERSION")
    with _client(config, hub, token) as c:
        _call(c, "POST", f"/v1/models/{name}/activate", body={"version": version})
    typer.echo(f"activating {name}@{version} on every hub; see aiot models list")


@models_app.command("list")
def models_list(
    config: ConfigOpt = None, hub: HubOpt = None, token: TokenOpt = None, json_out: JsonOpt = False
) -> None:
    """Versions, and which version each node runs."""
    with _client(config, hub, token) as c:
        nodes = _call(c, "GET", "/v1/cluster")["nodes"]
        bearer = c._http.headers["Authorization"].split(" ", 1)[1]
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for n in nodes:
            try:
                with HubClient(f"http://{n['http']}", bearer, timeout=5.0) as nc:
                    listed = nc.get("/v1/models")
            except HubError as exc:
                typer.echo(f"aiot: {n['node_id']}: {exc}", err=True)
                continue
            for m in listed:
                row = rows.setdefault(
                    (m["name"], str(m["version"])), {**m, "active_on": {}, "error_on": {}}
                )
                row["active_on"].update(m.get("active_on", {}))
                row["error_on"].update({k: v for k, v in m.get("error_on", {}).items() if v})
    if json_out:
        _print(list(rows.values()))
        return
    for (name, version), m in sorted(rows.items()):
        running = sorted(k for k, v in m["active_on"].items() if v == version)
        errors = "; ".join(f"{k}: {v}" for k, v in m["error_on"].items())
        mark = "*" if m.get("activated") else " "
        sha = str(m.get("sha256") or "")[:12]
        typer.echo(
            f"{mark} {name}@{version:<16} {m.get('kind', '?'):<5} {sha}  "
            f"running on: {', '.join(running) or '-'}" + (f"  errors: {errors}" if errors else "")
        )


def register(app: typer.Typer) -> None:
    from tools.cli import anomaly as cli_anomaly

    cli_anomaly.register_models(models_app)
    cli_anomaly.register_eval(eval_app)
    from tools.cli import evaluate as cli_models

    eval_app.command("decisions")(cli_models.decisions)
    app.add_typer(models_app, name="models")
    app.add_typer(eval_app, name="eval")
    app.command("ask")(ask)
    app.add_typer(decisions_app, name="decisions")
    app.add_typer(alerts_app, name="alerts")
    app.command("demo")(demo)
    app.add_typer(user_app, name="user")
    app.add_typer(hub_app, name="hub")
    app.add_typer(device_app, name="device")
    app.add_typer(command_app, name="command")
    app.add_typer(cluster_app, name="cluster")
    app.command("query")(query)
