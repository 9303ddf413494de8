"""A hub cluster on this machine: config files, and the daemons as processes.

`aiot cluster init DIR` writes a ready-to-run set of configs, with the shipped
energy rules on (``SHIPPED_RULES``). The tests, the benchmarks and the demo
use ``LocalCluster``, whose configs hold only the rules they give it, and
which starts each node as its own ``aiot hub run`` process and can stop,
kill, pause and restart them::

    with LocalCluster(tmp, nodes=3) as cluster:
        cluster.start()                     # returns once a leader is elected
        device = cluster.add_device("plug-1")   # the device's secrets config
        cluster.kill(cluster.leader())       # kill -9
        cluster.restart(i)

Every node's output goes to ``DIR/<node>/hub.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from hub.core import config as hub_config
from hub.core import tls as hub_tls
from hub.core.procs import die_with_parent
from tools.base import mqttwire
from tools.base.errors import ToolError
from tools.base.hubclient import HubClient, HubError
from tools.base.paths import ROOT
from tools.base.ports import free_ports


@dataclass(frozen=True)
class NodePorts:
    raft: int
    broker: int
    http: int


def _node_ports(nodes: int) -> list[NodePorts]:
    """Raft, broker and HTTP ports for every node, all distinct."""
    p = free_ports(3 * nodes)
    return [NodePorts(*p[3 * i : 3 * i + 3]) for i in range(nodes)]


# The rule sets a config written for people turns on: models/rules/energy.toml.
SHIPPED_RULES: Final = ("energy",)


def rules_table(shipped: Sequence[str]) -> str:
    """The ``[rules]`` table that turns on rule sets of the shipped models
    (hub/decide/rules.py), with how to turn them off; "" for none."""
    if not shipped:
        return ""
    names = ", ".join(f'"{name}"' for name in shipped)
    return (
        "[rules]\n"
        "# Rule sets shipped with the hub (rules/<name>.toml in [models] shipped_dir):\n"
        "# the energy rules switch a plug off after 10 s over its limit_w.\n"
        "# shipped = [] turns them off; docs/decisions.md has the format.\n"
        f"shipped = [{names}]\n"
    )


def render_config(
    node_id: str,
    host: str,
    ports: NodePorts,
    peers: Iterable[str],
    broker: str = "mosquitto",
    extra: str = "",
    rules: Sequence[str] = (),
    tls: bool = False,
) -> str:
    """One node's config; ``rules``: shipped rule sets to turn on; ``tls``:
    the node's certificate in ``tls/`` (``write_cluster`` issues it), else
    plain TCP, said so in the file."""
    peer_list = ", ".join(f'"{p}"' for p in peers)
    tables = "\n".join(t.strip() + "\n" for t in (rules_table(rules), extra) if t.strip())
    return (
        f"# aiot hub node {node_id}; see hub/core/config.py for every key\n"
        "[node]\n"
        f'id = "{node_id}"\n'
        f'data_dir = "{node_id}"\n\n'
        "[raft]\n"
        f'bind = "{host}:{ports.raft}"\n'
        f"peers = [{peer_list}]\n"
        'secret_file = "cluster.secret"\n\n'
        "[broker]\n"
        f'mode = "{broker}"\n'
        f'bind = "{host}:{ports.broker}"\n\n'
        "[http]\n"
        f'bind = "{host}:{ports.http}"\n\n'
        + _tls_table(node_id, tls)
        + (f"\n{tables}" if tables else "")
    )


def _tls_table(node_id: str, on: bool) -> str:
    if not on:
        return "[tls]\nplain = true                      # a lab: no TLS (docs/security.md)\n"
    return (
        "[tls]                             # MQTT over TLS and HTTPS (docs/security.md)\n"
        'ca = "tls/ca.pem"\n'
        f'cert = "tls/{node_id}.pem"\n'
        f'key = "tls/{node_id}.key"\n'
    )


def write_cluster(
    root: Path,
    nodes: int,
    host: str | Sequence[str] = "127.0.0.1",
    ports: list[NodePorts] | None = None,
    broker: str = "mosquitto",
    extra: str = "",
    rules: Sequence[str] = (),
    tls: bool = False,
) -> list[Path]:
    """Configs for ``nodes`` nodes and a fresh cluster secret (kept if present).
    ``host``: the address every node binds to, or one address per node;
    ``rules``: shipped rule sets every node turns on; ``tls``: a cluster CA
    in ``tls/`` (kept if present) and a certificate per node (hub/core/tls.py)."""
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "cluster.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    if ports is None:
        ports = _node_ports(nodes)
    hosts = [host] * len(ports) if isinstance(host, str) else list(host)
    paths = []
    for i, p in enumerate(ports):
        peers = [f"{hosts[j]}:{q.raft}" for j, q in enumerate(ports) if j != i]
        path = root / f"hub-{i + 1}.toml"
        node_id = f"hub-{i + 1}"
        if tls:
            names = [hosts[i]] + ([socket.gethostname()] if hosts[i] in ("0.0.0.0", "::") else [])
            hub_tls.write_node(root / "tls", node_id, names)
        text = render_config(node_id, hosts[i], p, peers, broker, extra, rules, tls)
        path.write_text(text)
        paths.append(path)
    return paths


class ClusterError(ToolError):
    """A node would not start, become ready or stop, or no node answers."""


class LocalCluster:
    """N hub daemons on loopback, each with its own broker and data directory."""

    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        broker: str = "mosquitto",
        extra: str = "",
        election_ms: tuple[int, int] = (300, 900),
        raft: dict[str, int] | None = None,
        llm: bool = False,
        new_session: bool = False,
        hosts: Sequence[str] | None = None,
        tls: bool = False,
    ) -> None:
        """``extra``: TOML tables appended to every config; ``raft``: more
        keys for the [raft] table (snapshot_min_entries, ...); ``llm``: keep
        the LLM tier on (off by default: each leader would load a model);
        ``new_session``: start each hub in its own session, out of reach of a
        terminal's Ctrl-C (for a caller that stops them itself, as `aiot demo`
        does), and stopped with SIGTERM if the caller dies without stopping
        them (die_with_parent); ``hosts``: each node's address (default
        127.0.0.1 for all); ``tls``: MQTT over TLS and HTTPS with a cluster
        CA in ``root/tls`` (``ca_pem``), else plain TCP."""
        self.root = root
        self.new_session = new_session
        self.n = nodes
        self.ports = _node_ports(nodes)
        keys = {
            "election_min_ms": election_ms[0],
            "election_max_ms": election_ms[1],
            **(raft or {}),
        }
        timing = "".join(f"{k} = {v}\n" for k, v in keys.items())
        self.tls = tls
        self.configs = write_cluster(
            root, nodes, "127.0.0.1" if hosts is None else hosts, self.ports, broker, tls=tls
        )
        for path in self.configs:
            text = path.read_text().replace(
                'secret_file = "cluster.secret"\n', 'secret_file = "cluster.secret"\n' + timing
            )
            if not llm:  # the LLM tier loads a model per leader: only where asked for
                text += '\n[decisions]\nllm = ""\n'
            path.write_text(text + (f"\n{extra.strip()}\n" if extra.strip() else ""))
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        self._logs: list[Any] = [None] * nodes
        self._clients: list[HubClient | None] = [None] * nodes

    @classmethod
    def reopen(cls, root: Path, new_session: bool = False) -> LocalCluster:
        """The cluster whose configs ``root`` already holds (same ports and
        data, so its Raft membership and store carry on); ``new_session`` as
        for a new one."""
        paths = sorted(root.glob("hub-*.toml"), key=lambda p: int(p.stem.split("-")[1]))
        if not paths:
            raise ClusterError(f"no hub-N.toml in {root}")
        self = cls.__new__(cls)
        self.root = root
        self.new_session = new_session
        self.n = len(paths)
        self.configs = paths
        self.tls = (root / "tls" / "ca.pem").exists()
        self.ports = []
        for p in paths:
            cfg = hub_config.load(p)
            assert cfg.broker.bind is not None
            self.ports.append(
                NodePorts(cfg.raft.bind.port, cfg.broker.bind.port, cfg.http.bind.port)
            )
        self.procs = [None] * self.n
        self._logs = [None] * self.n
        self._clients = [None] * self.n
        return self

    # -- processes --------------------------------------------------------------------

    @property
    def ca_pem(self) -> Path | None:
        """The cluster CA that clients pin (None: a plain-TCP cluster)."""
        return self.root / "tls" / "ca.pem" if self.tls else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client checks the nodes against: the cluster CA
        pinned (True, httpx's default, for a plain cluster's http URLs)."""
        return True if self.ca_pem is None else hub_tls.client_context(self.ca_pem)

    def mqtt_tls(self) -> ssl.SSLContext | None:
        """The TLS context an MQTT client of the nodes' brokers needs (None: plain)."""
        return None if self.ca_pem is None else hub_tls.client_context(self.ca_pem)

    def url(self, i: int) -> str:
        """Node i's API as this host reaches it (https with TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.ports[i].http}"

    def node_id(self, i: int) -> str:
        return f"hub-{i + 1}"

    def data_dir(self, i: int) -> Path:
        return self.root / self.node_id(i)

    def log_path(self, i: int) -> Path:
        return self.data_dir(i) / "hub.log"

    def command(self, i: int) -> list[str]:
        """The command line that runs node i (a subclass may wrap it)."""
        return [sys.executable, "-m", "tools.cli", "hub", "run", "--config", str(self.configs[i])]

    def start_node(self, i: int) -> None:
        if self.alive(i):
            raise ClusterError(f"{self.node_id(i)} is already running")
        self.data_dir(i).mkdir(parents=True, exist_ok=True)
        if self._logs[i] is not None:
            self._logs[i].close()
        self._logs[i] = self.log_path(i).open("ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.procs[i] = subprocess.Popen(
            self.command(i),
            cwd=ROOT,
            env=env,
            stdout=self._logs[i],
            stderr=self._logs[i],
            start_new_session=self.new_session,
            preexec_fn=die_with_parent if self.new_session else None,
        )

    def start(self, timeout: float = 60.0) -> LocalCluster:
        for i in range(self.n):
            self.start_node(i)
        self.wait_ready(timeout)
        return self

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(30)

    def pause(self, i: int) -> None:
        self.kill(i, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.kill(i, signal.SIGCONT)

    def stop_node(self, i: int, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait: the exit status (None if it was not running)."""
        p = self.procs[i]
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGCONT)
        p.terminate()
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise ClusterError(f"{self.node_id(i)} did not stop within {timeout}s") from None

    def restart(self, i: int, timeout: float = 60.0) -> None:
        self.kill(i)
        self.start_node(i)
        self.wait_node(i, timeout)

    def stop(self) -> None:
        for i in range(self.n):
            with contextlib.suppress(ClusterError):
                self.stop_node(i)
        for c in self._clients:
            if c is not None:
                c.close()
        self._clients = [None] * self.n
        for f in self._logs:
            if f is not None:
                f.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the API ---------------------------------------------------------------------

    def client(self, i: int) -> HubClient:
        c = self._clients[i]
        if c is None:
            c = self._clients[i] = HubClient.from_config(self.configs[i], timeout=15.0)
        return c

    def health(self, i: int) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = self.client(i).get("/v1/health")
            return out
        except HubError:
            return None

    def status(self, i: int) -> dict[str, Any]:
        out: dict[str, Any] = self.client(i).get("/v1/status")
        return out

    def metric(self, i: int, name: str, reason: str | None = None) -> float | None:
        """One sample of node i's ``GET /metrics``: ``name``, or
        ``name{reason="..."}``; None when the node does not export it."""
        text = httpx.get(self.client(i).url + "/metrics", timeout=15, verify=self.verify).text
        labels = "" if reason is None else rf'\{{reason="{re.escape(reason)}"\}}'
        found = re.search(rf"^{re.escape(name)}{labels} (\S+)$", text, re.M)
        return None if found is None else float(found.group(1))

    def wait_node(self, i: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive(i):
                raise ClusterError(f"{self.node_id(i)} exited: {self.tail(i)}")
            h = self.health(i)
            if h is not None and h["ready"] and h["leader"]:
                return
            time.sleep(0.1)
        raise ClusterError(f"{self.node_id(i)} not ready within {timeout}s: {self.tail(i)}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Every running node is ready and they agree on a leader; the node
        table holds every running node."""
        deadline = time.monotonic() + timeout
        running = [i for i in range(self.n) if self.alive(i)]
        for i in running:
            self.wait_node(i, max(1.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            leaders = {(self.health(i) or {}).get("leader") for i in running}
            if len(leaders) == 1 and None not in leaders:
                table = self.client(running[0]).get("/v1/cluster")["nodes"]
                if {self.node_id(i) for i in running} <= {n["node_id"] for n in table}:
                    return
            time.sleep(0.1)
        raise ClusterError(f"no agreed leader within {timeout}s")

    def leader(self) -> int:
        """The index of the node that leads now (as the running nodes see it)."""
        for i in range(self.n):
            if self.alive(i):
                h = self.health(i)
                if h is not None and h["leader"]:
                    addr = h["leader"]
                    for j, p in enumerate(self.ports):
                        if addr.endswith(f":{p.raft}"):
                            return j
        raise ClusterError("no leader")

    def any_client(self) -> HubClient:
        for i in range(self.n):
            if self.alive(i) and self.health(i) is not None:
                return self.client(i)
        raise ClusterError("no node answers")

    def add_device(self, device_id: str, **fields: Any) -> dict[str, Any]:
        """Register a device; return once the broker of every node that is
        ready takes its login (each node reloads its broker's credentials when
        it applies the registration, a moment after the API answered)."""
        out: dict[str, Any] = self.any_client().post(
            "/v1/devices", {"device_id": device_id, **fields}
        )
        deadline = time.monotonic() + LOGIN_WAIT_S
        for i in range(self.n):
            health = self.health(i) if self.alive(i) else None
            if health is None or not health.get("ready"):
                continue  # a node outside the cluster (or catching up) is not waited for
            while self.alive(i) and time.monotonic() < deadline:
                code = mqtt_connack(
                    self.ports[i].broker, device_id, out["password"], self.mqtt_tls()
                )
                if code in (0, None):  # taken, or no broker answers there
                    break
                time.sleep(0.05)
        return out

    def tail(self, i: int, lines: int = 15) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def hashes(self) -> dict[str, str]:
        """Content hash per running node (through its API)."""
        return {
            self.node_id(i): self.client(i).get("/v1/status", hash="true")["content_hash"]
            for i in range(self.n)
            if self.alive(i)
        }


LOGIN_WAIT_S: Final = 10.0


def mqtt_connack(
    port: int, user: str, password: str, tls: ssl.SSLContext | None = None
) -> int | None:
    """The return code a broker on 127.0.0.1:port gives an MQTT 3.1.1 CONNECT
    (clean session, client id = user) with this login: 0 accepted, 4 or 5
    refused; None when nothing answers. It publishes nothing, so the hub
    sees no presence; the session ends with the socket."""

    packet = mqttwire.connect(user, user, password, keepalive=30)
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), 5))
            if tls is not None:  # the wrapper is a socket of its own, closed too
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname="127.0.0.1"))
            sock.sendall(packet)
            reply = sock.recv(4)
    except OSError:
        return None
    return reply[3] if len(reply) == 4 and reply[:2] == b"\x20\x02" else None


def main_init(
    root: Path, nodes: int, host: str, broker: str, base_port: int, tls: bool = True
) -> list[Path]:
    ports = [
        NodePorts(base_port + i, base_port + 100 + i, base_port + 200 + i) for i in range(nodes)
    ]
    paths = write_cluster(root, nodes, host, ports, broker, rules=SHIPPED_RULES, tls=tls)
    (root / "README.txt").write_text(
        "Start each node in its own terminal:\n"
        + "".join(f"  aiot hub run --config {p}\n" for p in paths)
        + "\nWait for a leader, then register a device and run it (a simulated plug):\n"
        + f"  aiot cluster status --wait 60 --config {paths[0]}\n"
        + f"  aiot device add plug-1 --limit-w 1000 --config {paths[0]} --out plug-1.json\n"
        + "  aiot device run plug-1.json\n"
        + (
            "\nTLS: tls/ca.pem is the cluster CA (devices, `aiot` and the nodes pin it);\n"
            "tls/ca.key signs node certificates: keep it off the nodes (docs/security.md).\n"
            if tls
            else "\nPlain TCP ([tls] plain = true): for a lab only.\n"
        )
        + "\nThe shipped energy rules are on ([rules] shipped in each config): a plug\n"
        + "over its --limit-w for 10 s is switched off. shipped = [] turns them off.\n"
    )
    return paths
