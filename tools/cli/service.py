"""`aiot hub install-service`: a systemd unit for one hub node and, when they
are missing, a sample config and the cluster secret file. With TLS (the
default), the node's certificate, key and the cluster CA, from --tls-dir,
are checked and made readable to the service's user only.

    aiot hub install-service [--config /etc/aiot/hub.toml] [--user aiot]
                             [--tls-dir /etc/aiot/tls | --plain] [--dry-run]

docs/deploy-raspberry-pi.md has the steps; docs/security.md "TLS" the files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import typer

from hub.core import tls
from tools.base.paths import DOCS
from tools.cli.output import fail
from tools.lab.cluster import SHIPPED_RULES, rules_table

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


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """A node's TLS files: the cluster CA, its certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, folder: Path, node_id: str) -> NodeFiles:
        """Where `aiot cluster cert` writes them: ca.pem, NODE.pem, NODE.key."""
        return cls(folder / "ca.pem", folder / f"{node_id}.pem", folder / f"{node_id}.key")

    def missing(self) -> list[str]:
        return [p.name for p in (self.ca, self.cert, self.key) if not p.is_file()]


def _tls_table(files: NodeFiles | None) -> str:
    if files is None:
        return "[tls]\nplain = true                       # a lab only: no TLS (docs/security.md)\n"
    return (
        "[tls]                              # MQTT over TLS and HTTPS (docs/security.md)\n"
        f'ca = "{files.ca}"\n'
        f'cert = "{files.cert}"\n'
        f'key = "{files.key}"\n'
    )


def render_config(
    node_id: str,
    ip: str,
    peers: list[str],
    data_dir: Path,
    files: NodeFiles | None,
    rules: Sequence[str] = SHIPPED_RULES,
) -> str:
    """A sample node config for a Raspberry Pi (hub/core/config.py has every
    key), with the shipped ``rules`` on; TLS with ``files``, plain without."""
    peer_list = ", ".join(f'"{p if ":" in p else p + ":4321"}"' for p in peers)
    rules_part = f"\n{rules_table(rules)}" if rules else ""
    mqtt = 1883 if files is None else 8883
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
bind = "0.0.0.0:{mqtt}"
advertise = "{ip}:{mqtt}"

[http]
bind = "0.0.0.0:8080"
advertise = "{ip}:8080"

{_tls_table(files)}
[log]
level = "info"
format = "json"
{rules_part}"""


def check_files(files: NodeFiles, node_id: str, ip: str) -> list[str]:
    """Exit unless ``files`` are there and fit together; the warnings to
    print (a certificate that does not name this node's address)."""
    if missing := files.missing():
        raise fail(
            f"no {', '.join(missing)} in {files.ca.parent}: issue this node's certificate "
            f"from the cluster CA (`aiot cluster cert {node_id} --host {ip} --tls-dir CA-DIR`), "
            f"put ca.pem, {node_id}.pem and {node_id}.key in {files.ca.parent} and run this "
            "again; or --plain for a lab without TLS"
        )
    try:
        tls.check_pair(files.cert, files.key, files.ca)
        names = tls.names_of(files.cert)
    except tls.TlsError as exc:
        raise fail(str(exc)) from None
    if ip in names:
        return []
    return [
        f"{files.cert} names {', '.join(names)}, not {ip} (the address this node's config "
        f"advertises): devices and peers that reach it at {ip} will refuse it; issue it "
        f"again with --host {ip}, or edit the config's addresses"
    ]


def give_files(files: NodeFiles, user: str) -> None:
    """The service's user alone reads the key; anyone may read the
    certificates (tools on the node pin ca.pem)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise fail(
            f"no system user {user!r} to give the TLS key to: create it first "
            f"(useradd --system --shell /usr/sbin/nologin {user})"
        ) from None
    try:
        os.chown(files.key, entry.pw_uid, entry.pw_gid)
        os.chmod(files.key, 0o600)
        for cert in (files.cert, files.ca):
            os.chmod(cert, 0o644)
        os.chmod(files.ca.parent, 0o755)
    except OSError as exc:
        problem = f"cannot give {exc.filename} to {user}: {exc.strerror} (run it as root?)"
        raise fail(problem, 1) from None


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
            f"{option} {str(value)!r}: a path in a systemd unit or its config cannot hold spaces, "
            "quotes, backslashes, % or control characters; choose another"
        )
    return absolute


def _host_id() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "hub-1"


def _node_tls(folder: Path, node_id: str, ip: str, user: str, dry_run: bool) -> NodeFiles:
    """This node's TLS files in ``folder``, checked and (unless ``dry_run``)
    given to ``user``; exits when they are missing or do not fit."""
    files = NodeFiles.of(folder, node_id)
    if dry_run and (missing := files.missing()):
        typer.echo(f"aiot: note: {folder} has no {', '.join(missing)} yet", err=True)
        return files
    for w in check_files(files, node_id, ip):
        typer.echo(f"aiot: warning: {w}", err=True)
    if not dry_run:
        give_files(files, user)
    return files


def _write(path: Path, text: str, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror} (run it as root?)", 1) from None
    typer.echo(f"wrote {path}")


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
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="This node's ca.pem, NODE.pem and NODE.key, for a new sample config "
            "(default: tls/ beside the config)."
        ),
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="A new sample config without TLS, for a lab.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be written; write nothing.")
    ] = False,
) -> None:
    """Write a systemd unit for this node, and a sample config (TLS with this
    node's certificate) and secret file if missing."""
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise fail(f"--user {user!r}: not a valid system user name")
    if plain and tls_dir is not None:
        raise fail("--plain and --tls-dir: choose one")
    # systemd takes only absolute paths (a relative EnvironmentFile= is
    # ignored, a relative WorkingDirectory= makes the unit invalid), and the
    # sample config's data_dir would be read relative to the config's folder.
    config = _unit_path("--config", config)
    env_file = _unit_path("--env-file", env_file)
    data_root = _unit_path("--data-root", data_root)
    unit = render_unit(config, user, env_file, _aiot_command(), data_root)
    files: list[tuple[Path, str, int]] = [(unit_dir / UNIT_NAME, unit, 0o644)]
    node_files = None
    if not config.exists():
        nid, ip = node_id or _host_id(), _local_ip()
        if not plain:
            folder = _unit_path("--tls-dir", tls_dir or config.parent / "tls")
            node_files = _node_tls(folder, nid, ip, user, dry_run)
        sample = render_config(nid, ip, list(peer or []), data_root / "hub", node_files)
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
        else:
            _write(path, text, mode)
    if node_files is not None and not dry_run:
        typer.echo(f"gave {node_files.key} to {user} (mode 600)")
    steps = [
        f"id -u {user} >/dev/null 2>&1 || useradd --system --home {data_root} "
        f"--shell /usr/sbin/nologin {user}",
        f"edit {config} (addresses, peers); the same {SECRET_ENV} in {env_file} on every node",
        "systemctl daemon-reload",
        f"systemctl enable --now {UNIT_NAME.removesuffix('.service')}",
        f"journalctl -u {UNIT_NAME.removesuffix('.service')} -f",
    ]
    typer.echo(("# then:\n" if dry_run else "then:\n") + "\n".join(f"  {s}" for s in steps))
