"""`aiot cloud`: the cloud tier's local NATS JetStream cluster (docs/cloud.md)."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from hub.core import keys
from hub.decide.registry import (
    RULES,
    ModelRefused,
    check_kind,
    parse_rule_set,
    signed_manifest,
    version_record,
)
from tools.cli.models import _inner_manifest
from tools.cli.output import fail, group, nothing, reported, say
from tools.cli.remote import utc_ms
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import (
    LAYOUT_FILE,
    CloudError,
    CloudLayout,
    CloudServers,
    Creds,
    find_nats_server,
    init_cloud,
    load_layout,
    stop_detached,
)
from tools.cloud.leaf import write_leaf
from tools.cloud.models import push_model, push_policy, read_file, site_reports, target_of
from tools.cloud.query import (
    check_event_kind,
    hourly,
    read_events,
    read_health,
    read_readings,
    summary,
)
from tools.cloud.sites import DEFAULT_MAX_AGE_DAYS, add_site
from tools.cloud.status import ServerState, StreamState, read_streams, servers_of

cloud_app = group("cloud", "The cloud tier: a local NATS JetStream cluster and what it holds.")

DirOpt = Annotated[
    Path, typer.Option("--dir", help="The cluster's folder (configs, certificates, logins, data).")
]


def _layout(folder: Path, nodes: int, port: int | None) -> CloudLayout:
    if (folder / LAYOUT_FILE).exists():
        layout = load_layout(folder)
        if len(layout.names) != nodes:
            raise fail(
                f"{folder} holds a cluster of {len(layout.names)} servers, not {nodes}: "
                "use --nodes to match, or another --dir"
            )
        return layout
    say(f"writing a cluster of {nodes} servers in {folder} (a CA, certificates, logins)")
    return init_cloud(folder, nodes, port)


@cloud_app.command("up")
def cloud_up(
    folder: DirOpt = Path("cloud"),
    nodes: Annotated[int, typer.Option("--nodes", help="Servers (3 or 5 for Raft).")] = 3,
    port: Annotated[
        int | None,
        typer.Option("--port", help="First client port (default 4222; 0 picks free ports)."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Leave the servers running; `aiot cloud down` stops.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster.")] = 60.0,
) -> None:
    """Start a local JetStream cluster (made on first use) and wait until it serves.

    Prints the servers' URLs and the admin login file. Without --detach it
    runs until Ctrl-C or SIGTERM and stops the servers then.
    """
    with reported(1):
        layout = _layout(folder, nodes, 4222 if port is None else port)
        servers = CloudServers(layout, detach=detach)
        say(f"starting {nodes} nats-server ({servers.binary})")
        try:
            servers.start_all(timeout)
            leader = servers.wait_ready(timeout)
            buckets = ensure_buckets(Creds.load(layout.creds("admin")), min(3, nodes))
        except BaseException:
            servers.stop()
            raise
    say(f"JetStream meta leader: {leader}; buckets: {', '.join(buckets)}")
    typer.echo(
        json.dumps(
            {
                "servers": layout.urls(),
                "leaf": layout.leaf_urls(),
                "admin": str(layout.creds("admin")),
                "ca": str(layout.ca),
                "meta_leader": leader,
            }
        )
    )
    if detach:
        say(f"running in the background; stop with: aiot cloud down --dir {folder}")
        return
    _serve(servers)


def _serve(servers: CloudServers) -> None:
    stopping: list[int] = []

    def on_signal(signum: int, _: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    say("serving; Ctrl-C stops")
    gone: set[int] = set()
    while not stopping:
        for i, name in enumerate(servers.layout.names):
            if i not in gone and not servers.alive(i):
                gone.add(i)
                say(f"{name} exited; see {servers.log_path(i)}")
        time.sleep(0.2)
    servers.stop()
    say("stopped")


@cloud_app.command("down")
def cloud_down(folder: DirOpt = Path("cloud")) -> None:
    """Stop the servers that `aiot cloud up --detach` left running."""
    with reported(2):
        layout = load_layout(folder)
    stopped = stop_detached(layout)
    say(f"stopped {', '.join(stopped)}" if stopped else "no server of this cluster was running")


@cloud_app.command("status")
def cloud_status(
    folder: Annotated[
        Path | None, typer.Option("--dir", help="A local cluster's folder (aiot cloud up).")
    ] = None,
    creds: Annotated[
        Path | None, typer.Option("--creds", help="A login file, for any NATS cluster.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The cluster's servers (a local cluster) and its streams and buckets."""
    if folder is None and creds is None:
        folder = Path("cloud")
    with reported(2):
        layout = load_layout(folder) if folder is not None else None
        login = Creds.load(creds if creds is not None else layout.creds("admin"))  # type: ignore[union-attr]
    servers = servers_of(layout) if layout is not None else []
    errors: list[str] = []
    streams: list[StreamState] | None = None
    try:
        streams, missing = read_streams(login)
        if missing:
            errors.append(f"streams that did not answer (between leaders?): {', '.join(missing)}")
    except CloudError as exc:
        errors.append(str(exc))
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "servers": [s.as_json() for s in servers],
                    "streams": None if streams is None else [s.as_json() for s in streams],
                    "errors": errors,
                },
                indent=2,
            )
        )
    else:
        _print(servers, streams or [])
    for err in errors:
        say(f"aiot: {err}")
    if errors or any(not s.up for s in servers):
        raise typer.Exit(1)


def _print(servers: list[ServerState], streams: list[StreamState]) -> None:
    for s in servers:
        if not s.up:
            typer.echo(f"{s.name:<10} DOWN  {s.client_url}")
            continue
        lead = "meta leader" if s.meta_leader == s.name else f"leader {s.meta_leader}"
        typer.echo(
            f"{s.name:<10} up    {s.client_url}  v{s.version}  {s.connections} clients  "
            f"routes to {', '.join(s.peers) or 'none'}  {lead}"
        )
    for st in streams:
        lag = f"  behind: {', '.join(st.lagging)}" if st.lagging else ""
        typer.echo(
            f"{st.kind:<8} {st.name:<24} {st.messages} msgs  {st.bytes} B  "
            f"R{st.replicas} leader {st.leader}  {' '.join(st.subjects)}{lag}"
        )


@cloud_app.command("add-site")
def cloud_add_site(
    site: Annotated[str, typer.Argument(help="The site's id: a-z, 0-9 and '-'.")],
    folder: DirOpt = Path("cloud"),
    max_age_days: Annotated[
        int,
        typer.Option(
            "--max-age-days", help="Days the cloud keeps the site's messages (0: for ever)."
        ),
    ] = DEFAULT_MAX_AGE_DAYS,
) -> None:
    """A site's login (for its hubs' [cloud] table), its permissions and its stream."""
    with reported(2):
        layout = load_layout(folder)
    with reported(1):
        added = add_site(layout, site, max_age_days)
    say(f"site {added.site}: stream {added.stream}; its hubs log in with {added.creds}")
    typer.echo(
        json.dumps(
            {"site": added.site, "user": added.user, "stream": added.stream, "creds": added.creds}
        )
    )


@cloud_app.command("leaf-config")
def cloud_leaf_config(
    site: Annotated[str, typer.Argument(help="An added site's id.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the leaf node's config.")],
    folder: DirOpt = Path("cloud"),
    port: Annotated[int, typer.Option("--port", help="Its port on 127.0.0.1.")] = 4222,
) -> None:
    """A leaf node config for one of a site's hub nodes: it dials out to the cloud.

    Run it beside the hub with `nats-server -c OUT` (the binary comes with
    this project); the site then needs no inbound port.
    """
    with reported(2):
        layout = load_layout(folder)
    with reported(1):
        path = write_leaf(layout, site, out, port)
    say(f"run it with: {find_nats_server()} -c {path}")
    typer.echo(str(path))


@cloud_app.command("push-model")
def cloud_push_model(
    file: Annotated[Path, typer.Argument(help="The model file (.onnx or .gguf).", exists=True)],
    name: Annotated[str, typer.Option(help="The model's name, e.g. anomaly.")],
    sign_key: Annotated[Path, typer.Option(help="Ed25519 private key (aiot models keygen).")],
    folder: DirOpt = Path("cloud"),
    creds: Annotated[
        Path | None, typer.Option("--creds", help="An admin login file (default: the --dir's).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Default: from the manifest, or a timestamp.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="The model's own manifest (default: FILE with .json).")
    ] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="Only this site (default: the whole fleet).")
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate", help="The sites activate it as it arrives.")
    ] = False,
) -> None:
    """Sign a model version and put it in the cloud; every targeted site checks
    the signature with its own trusted keys, registers it through its own Raft
    log and, with --activate, activates it."""
    kind = "gguf" if file.suffix == ".gguf" else "onnx"
    inner = _inner_manifest(file, manifest)
    with reported(2):
        data = read_file(file)
        login = Creds.load(creds if creds is not None else load_layout(folder).creds("admin"))
        target = target_of(site)
    version = version or str(inner.get("version") or time.strftime("%Y%m%d%H%M%S"))
    try:
        key = keys.private_key(sign_key)
    except ValueError as exc:
        raise fail(str(exc)) from None
    signed = signed_manifest(name, version, kind, data, inner)
    signature, kid = keys.sign(signed, key)
    say(f"putting {name}@{version} ({len(data)} bytes) in the cloud for {target}")
    with reported(1):
        pushed = push_model(login, data, signed, signature, kid, target, activate)
    typer.echo(json.dumps({**dataclasses.asdict(pushed), "activate": activate}))


@cloud_app.command("push-rules")
def cloud_push_rules(
    file: Annotated[Path, typer.Argument(help="A rules file (TOML, [[rule]] tables).")],
    sign_key: Annotated[Path, typer.Option(help="Ed25519 private key (aiot models keygen).")],
    name: Annotated[str, typer.Option(help="The rule set: rules or rules-<set>.")] = "rules",
    folder: DirOpt = Path("cloud"),
    creds: Annotated[
        Path | None, typer.Option("--creds", help="An admin login file (default: the --dir's).")
    ] = None,
    version: Annotated[str | None, typer.Option(help="Default: a timestamp.")] = None,
    site: Annotated[
        str | None, typer.Option("--site", help="Only this site (default: the whole fleet).")
    ] = None,
    activate: Annotated[
        bool, typer.Option("--activate", help="The sites activate it as it arrives.")
    ] = False,
) -> None:
    """Sign a rules file and put it in the cloud's policies bucket; every
    targeted site checks the signature with its own trusted keys, registers it
    through its own Raft log (a model version of kind rules) and, with
    --activate, runs it with its own rules."""
    version = version or time.strftime("%Y%m%d%H%M%S")
    with reported(2):
        data = read_file(file)
        signed = signed_manifest(name, version, RULES, data, {})
        mv = version_record(signed, b"\0" * 64, "check")
        try:
            check_kind(mv)
            rules = parse_rule_set(mv, data)
        except ModelRefused as exc:
            raise CloudError(str(exc)) from None
        login = Creds.load(creds if creds is not None else load_layout(folder).creds("admin"))
        target = target_of(site)
    try:
        key = keys.private_key(sign_key)
    except ValueError as exc:
        raise fail(str(exc)) from None
    signature, kid = keys.sign(signed, key)
    say(f"putting {name}@{version} ({len(rules.rules)} rules) in the cloud for {target}")
    with reported(1):
        pushed = push_policy(login, data, signed, signature, kid, target, activate)
    typer.echo(json.dumps({**dataclasses.asdict(pushed), "activate": activate}))


@cloud_app.command("sites")
def cloud_sites(
    folder: DirOpt = Path("cloud"),
    creds: Annotated[
        Path | None, typer.Option("--creds", help="An admin login file (default: the --dir's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each site's last report: when, from which node, the models it runs, its
    export; and the newest health report of each of its nodes."""
    with reported(2):
        login = Creds.load(creds if creds is not None else load_layout(folder).creds("admin"))
    with reported(1):
        reports = site_reports(login)
        for r in reports:
            r["nodes"] = read_health(login, str(r.get("site")))
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    if not reports:
        nothing("site reports")
    for r in reports:
        models = ", ".join(f"{n}@{v}" for n, v in sorted((r.get("models") or {}).items()))
        age = (time.time() * 1000 - int(r.get("at_ms") or 0)) / 1000
        export = r.get("export") or {}
        lag = f"export lag {export['lag_s']} s" if "lag_s" in export else "no export"
        typer.echo(
            f"{r.get('site'):<16} {age:6.0f} s ago  from {r.get('node')}  {lag}  {models or '-'}"
        )
        for node, h in r["nodes"].items():
            ago = (time.time() * 1000 - int(h.get("at_ms") or 0)) / 1000
            typer.echo(
                f"  {node:<14} {ago:6.0f} s ago  {h.get('role')}, term {h.get('term')}, "
                f"applied {h.get('index')}, lag {h.get('lag')}"
                + ("" if h.get("ready") else ", not ready")
                + (f", store alert: {h['store_alert']}" if h.get("store_alert") else "")
            )


@cloud_app.command("query")
def cloud_query(
    site: Annotated[str, typer.Option("--site", help="The site whose exports to read.")],
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    hourly_: Annotated[
        bool, typer.Option("--hourly", help="Energy (Wh) per UTC hour of --day instead.")
    ] = False,
    day: Annotated[
        str | None, typer.Option("--day", help="The day for --hourly, YYYY-MM-DD (UTC; today).")
    ] = None,
    folder: DirOpt = Path("cloud"),
    creds: Annotated[
        Path | None, typer.Option("--creds", help="An admin login file (default: the --dir's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A site's readings in the cloud, per device: how many, first and last
    seq, gaps and duplicates (the exactly-once check, read from the stream);
    with --hourly, its energy per hour of a day, for the site and per device."""
    with reported(2):
        if day is not None and not hourly_:
            raise CloudError("--day goes with --hourly")
        try:
            when = date.fromisoformat(day) if day else datetime.now(UTC).date()
        except ValueError:
            raise CloudError(f"--day {day!r}: expected YYYY-MM-DD") from None
        login = Creds.load(creds if creds is not None else load_layout(folder).creds("admin"))
    with reported(1):
        found = read_readings(login, site, device)
    if hourly_:
        _print_hourly(hourly(found, when), as_json)
        return
    out = summary(found)
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not out["devices"]:
        nothing(f"readings of site {site} in the cloud")
    for name, d in out["devices"].items():
        typer.echo(
            f"{name:<24} {d['readings']} readings  seq {d['first_seq']}..{d['last_seq']}  "
            f"{len(d['gaps'])} gaps  {len(d['duplicates'])} duplicates"
        )


@cloud_app.command("events")
def cloud_events(
    site: Annotated[str, typer.Option("--site", help="The site whose exports to read.")],
    kind: Annotated[
        str, typer.Option("--kind", help="decisions, commands, alerts or devices.")
    ] = "commands",
    device: Annotated[str | None, typer.Option("--device", help="Only this device.")] = None,
    folder: DirOpt = Path("cloud"),
    creds: Annotated[
        Path | None, typer.Option("--creds", help="An admin login file (default: the --dir's).")
    ] = None,
) -> None:
    """A site's exported events of one kind, in stream order, as JSON lines:
    decisions with their provenance, commands at each change, alerts raised
    and acknowledged, the device registry's changes."""
    with reported(2):
        check_event_kind(kind)
        login = Creds.load(creds if creds is not None else load_layout(folder).creds("admin"))
    with reported(1):
        events = read_events(login, site, kind, device)
    for ev in events:
        typer.echo(json.dumps(ev, separators=(",", ":")))
    if not events:
        nothing(f"{kind} of site {site} in the cloud")


def _print_hourly(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    if not out["devices"]:
        nothing(f"energy readings of site {out['site']} in the cloud")
    for h in out["hours"]:
        typer.echo(f"{utc_ms(h['start_ms'])[:16]}  {h['wh']:12.3f} Wh")
    typer.echo(f"{'site ' + out['site']:<24} {out['wh']:12.3f} Wh on {out['day']}")
    for name, d in out["devices"].items():
        typer.echo(f"{name:<24} {d['wh']:12.3f} Wh")
