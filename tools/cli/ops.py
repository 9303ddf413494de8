"""`aiot backup`, `aiot restore` and `aiot hub install-service`.

    aiot backup DIR --config hub.toml            # or --hub URL --token T
    aiot restore DIR --config hub-1.toml [--config hub-2.toml ...]
    aiot hub install-service [--config /etc/aiot/hub.toml] [--user aiot] [--dry-run]

A backup directory holds:

    store.snap       the store's snapshot stream from one node (hub/state/DESIGN.md "Snapshots")
    registry.json    devices, users, models and hub nodes, for people (no keys, no hashes)
    models/          the node's model files, when it has a models directory
    manifest.json    what was backed up from where, and the sha256 of every file

hub/ops/backup.py has the design of both; docs/deploy-raspberry-pi.md the steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from hub.core import config as hub_config
from hub.core.fsutil import make_private, private_dir
from hub.ops.backup import (
    BACKUP_FORMAT,
    DEFAULT_TERM_GAP,
    MANIFEST,
    MODELS_DIR,
    REGISTRY_FILE,
    SNAPSHOT_FILE,
    BackupError,
    RestorePlan,
    check_target,
    cluster_of,
    load_manifest,
    manifest_files,
    read_snapshot,
    restore_node,
)
from hub.state.errors import SnapshotError
from tools.base.hubclient import WHICH_HUB, node_endpoint
from tools.base.paths import DOCS
from tools.cli.output import fail, reported
from tools.cli.remote import ConfigOpt, HubOpt, TokenOpt
from tools.lab.cluster import SHIPPED_RULES, rules_table

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]

_err = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=False,
    )


# -- backup ---------------------------------------------------------------------------------


def _endpoint(
    config: Path | None, hub: str | None, token: str | None
) -> tuple[str, str, hub_config.HubConfig | None]:
    """(url, token, the node's config if given): --config, then --hub and
    --token, then AIOT_CONFIG, then AIOT_HUB and AIOT_TOKEN (as the other
    commands)."""
    if config is None and "AIOT_CONFIG" in os.environ and not hub:
        config = Path(os.environ["AIOT_CONFIG"])
    if config is not None:
        try:
            cfg = hub_config.load(config)
        except hub_config.ConfigError as exc:
            raise fail(str(exc)) from None
        return (*node_endpoint(cfg), cfg)
    url = hub or os.environ.get("AIOT_HUB")
    token = token or os.environ.get("AIOT_TOKEN")
    if not url or not token:
        raise fail(WHICH_HUB)
    return url.rstrip("/"), token, None


def _download(url: str, token: str, dest: Path, quiet: bool) -> dict[str, str]:
    """Stream GET /v1/backup into ``dest``; the response's X-Aiot headers."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with (
            httpx.stream("GET", f"{url}/v1/backup", headers=headers, timeout=60.0) as resp,
            open(dest, "wb") as out,
        ):
            if resp.status_code >= 400:
                resp.read()
                try:
                    detail = resp.json().get("detail", resp.text)
                except ValueError:
                    detail = resp.text
                raise fail(f"hub at {url} refused the backup: {resp.status_code}: {detail}", 1)
            meta = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("x-aiot")}
            estimate = int(meta.get("x-aiot-estimated-bytes", "0") or 0) or None
            with _progress() as bar:
                task = bar.add_task(
                    f"snapshot of {meta.get('x-aiot-node', '?')}", total=estimate, visible=not quiet
                )
                for chunk in resp.iter_bytes(1 << 20):
                    out.write(chunk)
                    bar.update(task, advance=len(chunk))
                done = bar.tasks[0].completed
                bar.update(task, total=done, completed=done)
            out.flush()
            os.fsync(out.fileno())
    except httpx.HTTPError as exc:
        raise fail(f"hub at {url}: the backup did not complete: {exc}", 1) from None
    return meta


def backup(
    directory: Annotated[Path, typer.Argument(help="Where to write it (new or empty).")],
    config: ConfigOpt = None,
    hub: HubOpt = None,
    token: TokenOpt = None,
    models: Annotated[
        Path | None,
        typer.Option(help="Model files to include (default: the node's data_dir/models)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """A consistent snapshot of the cluster's state from one node, with its manifest."""
    url, tok, cfg = _endpoint(config, hub, token)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise fail(f"{directory} exists and is not empty: give a new directory")
    private_dir(directory)  # it holds device keys and password hashes
    partial = directory / (SNAPSHOT_FILE + ".partial")
    try:
        meta = _download(url, tok, partial, json_out)
        try:
            with open(partial, "rb") as f:
                summary = read_snapshot(f)
        except SnapshotError as exc:
            raise fail(f"the snapshot from {url} is not valid ({exc}); nothing kept", 1) from None
        os.replace(partial, directory / SNAPSHOT_FILE)
        registry = {**summary.registry, "rows": summary.rows}
        (directory / REGISTRY_FILE).write_text(json.dumps(registry, indent=2) + "\n")
        model_dir = models or (None if cfg is None else cfg.data_dir / MODELS_DIR)
        if model_dir is not None and model_dir.is_dir():
            shutil.copytree(model_dir, directory / MODELS_DIR)
        elif models is not None:
            raise fail(f"--models {models}: not a directory")
        files = manifest_files(directory)
        manifest: dict[str, Any] = {
            "format": BACKUP_FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": {
                "node": meta.get("x-aiot-node", ""),
                "url": url,
                "applied_index": summary.applied_index,
                "term": int(meta.get("x-aiot-term", "0") or 0),
            },
            "content_hash": summary.content_hash,
            "table_hashes": summary.table_hashes,
            "rows": summary.rows,
            "files": files,
        }
        (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        make_private(directory)  # 0600 files in a 0700 folder
    except BaseException:
        partial.unlink(missing_ok=True)
        if not (directory / MANIFEST).exists():
            shutil.rmtree(directory, ignore_errors=True)
        raise
    if json_out:
        typer.echo(json.dumps(manifest))
        return
    reg = summary.registry
    size = sum(int(f["bytes"]) for f in files.values())
    typer.echo(
        f"backup of {manifest['source']['node']} at index {summary.applied_index}: "
        f"{len(reg['devices'])} devices, {summary.rows.get('readings', 0)} readings, "
        f"{reg['commands']} commands, {len(reg['users'])} users, {len(files)} "
        f"files, {size} bytes in {directory}"
    )
    typer.echo(f"content hash {summary.content_hash}")


# -- restore --------------------------------------------------------------------------------


def restore(
    directory: Annotated[Path, typer.Argument(help="A backup directory (aiot backup).")],
    config: Annotated[
        list[Path],
        typer.Option(
            "--config", "-c", help="A node of the new cluster; repeat for each node on this host."
        ),
    ],
    term_gap: Annotated[
        int,
        typer.Option(
            min=1,
            help="Start the new cluster this many Raft terms above the backup's, so devices "
            "that saw later terms take its commands.",
        ),
    ] = DEFAULT_TERM_GAP,
    json_out: JsonOpt = False,
) -> None:
    """Build the nodes of a new cluster from a backup: every node stopped, data dirs empty."""
    with reported(1, BackupError):
        manifest = load_manifest(directory)
    with reported(2, hub_config.ConfigError):
        cfgs = [hub_config.load(path) for path in config]
    clusters = {tuple(cluster_of(c)) for c in cfgs}
    if len(clusters) > 1:
        raise fail("the configs describe different clusters (raft.bind and raft.peers)")
    if len({c.node_id for c in cfgs}) != len(cfgs):
        raise fail("the same node is given twice")
    with reported(2, BackupError):
        for c in cfgs:
            check_target(c)  # every node before any is touched
    plan = RestorePlan.of(manifest, term_gap)
    snap_bytes = (directory / SNAPSHOT_FILE).stat().st_size
    done: list[dict[str, Any]] = []
    with _progress() as bar:
        for c in cfgs:
            task = bar.add_task(f"restore {c.node_id}", total=2 * snap_bytes, visible=not json_out)

            def advance(n: int, task: Any = task) -> None:
                bar.update(task, advance=n)

            try:
                got = restore_node(c, directory, plan, advance)
            except (BackupError, SnapshotError, OSError) as exc:
                raise fail(f"{c.node_id}: {exc}", 1) from None
            done.append({"node": c.node_id, "data_dir": str(c.data_dir), "content_hash": got})
    members = list(next(iter(clusters)))
    result: dict[str, Any] = {
        "restored": done,
        "store_index": plan.store_index,
        "raft_index": plan.raft_index,
        "term": plan.term,
        "content_hash": plan.content_hash,
        "members": members,
    }
    if json_out:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"restored {len(done)} of {len(members)} nodes at store index {plan.store_index} "
        f"(raft log from {plan.raft_index + 1}, term {plan.term}); content hash "
        f"{plan.content_hash}"
    )
    if len(done) < len(members):
        typer.echo(
            f"restore the other {len(members) - len(done)} node(s) from the same backup before "
            "starting any node"
        )
    for c in cfgs:
        typer.echo(f"  then: aiot hub run --config {c.source}")


# -- install-service ------------------------------------------------------------------------

DEFAULT_CONFIG: Final = Path("/etc/aiot/hub.toml")
DEFAULT_ENV: Final = Path("/etc/aiot/aiot.env")
DEFAULT_UNIT_DIR: Final = Path("/etc/systemd/system")
UNIT_NAME: Final = "aiot-hub.service"
SECRET_ENV: Final = "AIOT_CLUSTER_SECRET"
PI_GUIDE: Final = DOCS / "deploy-raspberry-pi.md"


def _aiot_command() -> str:
    beside = Path(sys.executable).parent / "aiot"
    if beside.exists():
        return str(beside)
    found = shutil.which("aiot")
    return found or f"{sys.executable} -m tools.cli"


def _writable(data_root: Path) -> str:
    """The one writable place: a state directory systemd makes and owns for
    the user, or an existing directory elsewhere."""
    if data_root.parent == Path("/var/lib"):
        return (
            f"# The data directory {data_root}, made and owned for the user by systemd.\n"
            f"StateDirectory={data_root.name}\nStateDirectoryMode=0700"
        )
    return f"# The data directory (must exist, owned by the user).\nReadWritePaths={data_root}"


def render_unit(config: Path, user: str, env_file: Path, exec_cmd: str, data_root: Path) -> str:
    """The systemd unit for one hub node."""
    return f"""\
# aiot hub node: written by `aiot hub install-service`; docs/deploy-raspberry-pi.md
[Unit]
Description=aiot hub node ({config})
Documentation=file://{PI_GUIDE}
After=network-online.target time-sync.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
# The cluster secret ({SECRET_ENV}), readable by root only.
EnvironmentFile={env_file}
ExecStart={exec_cmd} hub run --config {config}
WorkingDirectory={data_root}
{_writable(data_root)}
UMask=0077

# Stop: SIGTERM to the daemon only; it unsubscribes, drains, closes Raft and
# LMDB, then stops its own broker. Anything left after the timeout is killed.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=45
# A crash restarts it; a bad config file (exit 2) does not loop.
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=2
LimitNOFILE=65536

# Hardening that still lets the supervised Mosquitto run: it binds ports
# above 1024, writes only under the data directory, and needs no capability.
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectClock=yes
ProtectHostname=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
# Not set: MemoryDenyWriteExecute (cffi callbacks, used by cryptography,
# and the model runtimes need executable memory).

[Install]
WantedBy=multi-user.target
"""


def _local_ip() -> str:
    """The address this host would use to reach the LAN (no packet is sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        ip: str = s.getsockname()[0]
        return ip
    return "127.0.0.1"


def render_config(
    node_id: str, ip: str, peers: list[str], data_dir: Path, rules: Sequence[str] = SHIPPED_RULES
) -> str:
    """A sample node config for a Raspberry Pi (hub/core/config.py has every
    key), with the shipped ``rules`` on."""
    peer_list = ", ".join(f'"{p if ":" in p else p + ":4321"}"' for p in peers)
    rules_part = f"\n{rules_table(rules)}" if rules else ""
    return f"""\
# aiot hub node {node_id}: hub/core/config.py documents every key.
# Edit the addresses, then give every node the same cluster secret
# ({SECRET_ENV} in the environment file of the service).
[node]
id = "{node_id}"
data_dir = "{data_dir}"

[raft]
# This node's Raft address: its LAN IP (the other nodes use it as its name).
bind = "{ip}:4321"
# The other nodes' Raft addresses.
peers = [{peer_list}]
secret_env = "{SECRET_ENV}"

[broker]
mode = "mosquitto"
bind = "0.0.0.0:1883"
advertise = "{ip}:1883"

[http]
bind = "0.0.0.0:8080"
advertise = "{ip}:8080"

[log]
level = "info"
format = "json"
{rules_part}"""


# What systemd reads as something else in a unit's paths: a space or tab
# separates (ReadWritePaths=, ExecStart=), quotes and backslashes escape,
# % starts a specifier.
_UNIT_UNSAFE: Final = re.compile(r"[\s\"'\\%]")


def _unit_path(option: str, value: Path) -> Path:
    """``value`` as an absolute path (a relative one taken from the current
    directory, as the shell meant it), fit for a systemd unit."""
    absolute = Path(os.path.abspath(value))
    if _UNIT_UNSAFE.search(str(absolute)) or not str(absolute).isprintable():
        raise fail(
            f"{option} {str(value)!r}: a path in a systemd unit cannot hold spaces, quotes, "
            "backslashes, % or control characters; choose another"
        )
    return absolute


def install_service(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="The node's config (a sample is written if none)."),
    ] = DEFAULT_CONFIG,
    user: Annotated[str, typer.Option(help="The system user the daemon runs as.")] = "aiot",
    node_id: Annotated[
        str | None, typer.Option(help="Node id for a new sample config (default: host name).")
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="Another node's Raft address (IP or IP:port), for a new sample config."),
    ] = None,
    env_file: Annotated[
        Path, typer.Option(help="Environment file holding the cluster secret.")
    ] = DEFAULT_ENV,
    unit_dir: Annotated[Path, typer.Option(help="Where the unit goes.")] = DEFAULT_UNIT_DIR,
    data_root: Annotated[Path, typer.Option(help="The service's state directory.")] = Path(
        "/var/lib/aiot"
    ),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be written; write nothing.")
    ] = False,
) -> None:
    """Write a systemd unit for this node, and a sample config and secret file if missing."""
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise fail(f"--user {user!r}: not a valid system user name")
    # systemd takes only absolute paths (a relative EnvironmentFile= is
    # ignored, a relative WorkingDirectory= makes the unit invalid), and the
    # sample config's data_dir would be read relative to the config's folder.
    config = _unit_path("--config", config)
    env_file = _unit_path("--env-file", env_file)
    data_root = _unit_path("--data-root", data_root)
    unit = render_unit(config, user, env_file, _aiot_command(), data_root)
    files: list[tuple[Path, str, int]] = [(unit_dir / UNIT_NAME, unit, 0o644)]
    if not config.exists():
        nid = node_id or re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "hub-1"
        sample = render_config(nid, _local_ip(), list(peer or []), data_root / "hub")
        files.append((config, sample, 0o644))
    if not env_file.exists():
        secret = "<generated at install>" if dry_run else secrets.token_hex(32)
        text = (
            "# The cluster secret: the same on every node of the cluster; keep it private.\n"
            f"{SECRET_ENV}={secret}\n"
        )
        files.append((env_file, text, 0o600))
    for path, text, mode in files:
        if dry_run:
            typer.echo(f"# --- {path} (mode {mode:o}) ---")
            typer.echo(text)
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(path, mode)
        except OSError as exc:
            raise fail(f"cannot write {path}: {exc.strerror} (run it as root?)", 1) from None
        typer.echo(f"wrote {path}")
    steps = [
        f"id -u {user} >/dev/null 2>&1 || useradd --system --home {data_root} "
        f"--shell /usr/sbin/nologin {user}",
        f"edit {config} (addresses, peers); the same {SECRET_ENV} in {env_file} on every node",
        "systemctl daemon-reload",
        f"systemctl enable --now {UNIT_NAME.removesuffix('.service')}",
        f"journalctl -u {UNIT_NAME.removesuffix('.service')} -f",
    ]
    typer.echo(("# then:\n" if dry_run else "then:\n") + "\n".join(f"  {s}" for s in steps))
