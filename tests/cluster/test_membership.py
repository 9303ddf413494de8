"""Membership that devices follow, with real hub processes (Mosquitto each)
and twelve MicroPython plugs: a fourth node joins and takes a quarter of
the devices (their balanced rendezvous orders put it first); a drained node's devices move
away and no new session lands on it; the four nodes restart one by one
under load. Then the plugs reboot (their order comes from flash) and empty
their flash: every reading sampled is stored exactly once on every node,
and the command ledger holds each device's broker orders, all executed."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.link import rendezvous
from tests.cluster.hubs import assert_exactly_once, need_mosquitto, provision
from tests.device import Device
from tests.support import ROOT, wait_until
from tools.lab.cluster import LocalCluster
from tools.lab.links import established, socket_inodes

pytestmark = pytest.mark.cluster

DEVICES = [f"plug-{k}" for k in range(12)]
TUNING: dict[str, Any] = {"sample_ms": 100, "return_after_s": 5}


def aiot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def expected(cluster: LocalCluster, serving: list[int]) -> dict[str, int]:
    """Each device's first node (an index) among the serving ones, in the
    balanced orders of all twelve devices."""
    ids = {cluster.node_id(i): i for i in serving}
    return {d: ids[order[0]] for d, order in rendezvous.balanced(DEVICES, ids).items()}


def configured(cluster: LocalCluster, devices: dict[str, Device]) -> dict[str, int]:
    """Each device's first node (an index) in the config it was given at
    registration."""
    ports = {p.broker: i for i, p in enumerate(cluster.ports)}
    return {d: ports[int(dev.config["hubs"][0][1])] for d, dev in devices.items()}


def shares(placement: dict[str, int], n: int) -> list[int]:
    """How many devices each of nodes 0..n-1 is first for."""
    return [sum(1 for i in placement.values() if i == k) for k in range(n)]


def where(cluster: LocalCluster, devices: dict[str, Device]) -> dict[str, set[int]]:
    """The nodes whose broker each device process holds a TCP link to (from /proc)."""
    ports = {p.broker: i for i, p in enumerate(cluster.ports)}
    out = {}
    for d, dev in devices.items():
        assert dev.proc is not None and dev.proc.poll() is None, f"{d} exited"
        mine = socket_inodes(dev.proc.pid)
        links = established(dev.proc.pid)
        out[d] = {ports[p] for inode, (_, p) in links.items() if inode in mine and p in ports}
    return out


def wait_placed(
    cluster: LocalCluster, devices: dict[str, Device], want: dict[str, int], timeout: float
) -> None:
    seen: dict[str, set[int]] = {}

    def placed() -> bool:
        seen.clear()
        seen.update(where(cluster, devices))
        return all(seen[d] == {i} for d, i in want.items())

    try:
        wait_until(placed, timeout, "every device on its first serving node")
    except AssertionError:
        wrong = {d: sorted(seen[d]) for d, i in want.items() if seen[d] != {i}}
        raise AssertionError(f"devices not where their order puts them: {wrong}") from None


def connack(port: int, user: str, password: str) -> int:
    """The return code a broker on 127.0.0.1:port gives an MQTT 3.1.1 CONNECT
    with this login (0: accepted)."""

    def field(text: str) -> bytes:
        return struct.pack("!H", len(text)) + text.encode()

    body = field("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 30)
    body += field(user) + field(user) + field(password)
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(bytes([0x10, len(body)]) + body)
        reply = sock.recv(4)
    assert reply[:2] == b"\x20\x02", reply
    return reply[3]


def drained_node_stays_empty(
    cluster: LocalCluster, devices: dict[str, Device], node: int, rest: list[int]
) -> None:
    """A device's own login is refused on the drained node, and the node
    stays drained across a restart."""
    dev = devices[DEVICES[0]]
    wait_until(  # the sessions left after the grace were dropped: a broker restart
        lambda: cluster.status(node)["broker"]["restarts"] >= 1, 15, "the sessions dropped"
    )
    code = connack(cluster.ports[node].broker, DEVICES[0], dev.config["password"])
    assert code in (4, 5), f"the drained broker answered CONNECT with {code}"
    assert cluster.stop_node(node) == 0
    cluster.start_node(node)
    cluster.wait_ready(60)
    assert cluster.status(node)["drained"] is True
    wait_placed(cluster, devices, expected(cluster, rest), 10)


def ledger_problems(cluster: LocalCluster, order: dict[str, int]) -> list[str]:
    """Each device's commands: numbered 1..n, every one DONE, the last
    hubs.set naming its first node's broker first."""
    problems = []
    client = cluster.client(0)
    for d in DEVICES:
        cmds = client.get("/v1/commands", device=d)
        cmds.sort(key=lambda c: c["seq"])
        if [c["seq"] for c in cmds] != list(range(1, len(cmds) + 1)):
            problems.append(f"{d}: sequence numbers {[c['seq'] for c in cmds]}")
        states = {c["state"] for c in cmds}
        if states != {"DONE"}:
            problems.append(f"{d}: command states {sorted(states)}")
        hubs = [c["params"]["hubs"] for c in cmds if c["action"] == "hubs.set"]
        first = f"127.0.0.1:{cluster.ports[order[d]].broker}"
        if not hubs or not hubs[-1].startswith(first + ","):
            problems.append(f"{d}: last order {hubs[-1:]} does not start with {first}")
    return problems


def start_three_of_four(cluster: LocalCluster) -> None:
    """Nodes 0-2 up; node 3 configured but out of the Raft membership."""
    for i in (0, 1, 2):
        cluster.start_node(i)
    cluster.wait_node(0, 60)
    fourth = f"127.0.0.1:{cluster.ports[3].raft}"
    r = aiot("cluster", "remove-node", fourth, "--config", str(cluster.configs[0]))
    assert r.returncode == 0, r.stderr
    cluster.wait_ready(60)


def rolling_restart(cluster: LocalCluster, devices: dict[str, Device]) -> None:
    """Each node in turn: SIGTERM, start again, ready, its devices back."""
    for i in range(cluster.n):
        assert cluster.stop_node(i) == 0
        cluster.start_node(i)
        cluster.wait_ready(60)
        wait_placed(cluster, devices, expected(cluster, [0, 1, 2, 3]), 30)


def empty_flash(devices: dict[str, Device]) -> dict[str, int]:
    """Stop every plug, boot it again to send what its flash holds and stop
    sampling: what each saw acknowledged (all it ever sampled)."""
    for dev in devices.values():
        dev.interrupt()
    for dev in devices.values():
        dev.config.update(stop_after=1, exit_when_done=True)
        dev.start()
    acked = {}
    for d, dev in devices.items():
        stats = dev.wait(60)
        assert stats["unacked"] == 0 and stats["next_seq"] == stats["watermark"] + 1, stats
        acked[d] = stats["watermark"]
    return acked


def test_devices_follow_node_add_drain_and_rolling_restart(tmp_path: Path) -> None:
    need_mosquitto()
    cluster = LocalCluster(tmp_path / "cluster", 4)
    devices: dict[str, Device] = {}
    try:
        start_three_of_four(cluster)
        for d in DEVICES:
            devices[d] = provision(cluster, tmp_path, d, **TUNING).start()
        # Registered one by one, each got a balanced order among those before it.
        initial = configured(cluster, devices)
        assert shares(initial, 3) == [4, 4, 4], initial
        wait_placed(cluster, devices, initial, 30)

        # A fourth node joins: a quarter of the devices moves to it.
        fourth = f"127.0.0.1:{cluster.ports[3].raft}"
        r = aiot("cluster", "add-node", fourth, "--config", str(cluster.configs[0]))
        assert r.returncode == 0, r.stderr
        cluster.start_node(3)
        cluster.wait_ready(60)
        four = expected(cluster, [0, 1, 2, 3])
        assert shares(four, 4) == [3, 3, 3, 3]
        wait_placed(cluster, devices, four, 30)

        # Drain the node holding the most devices: they move within 10 s.
        busiest = max(range(4), key=lambda i: sum(1 for j in four.values() if j == i))
        name = cluster.node_id(busiest)
        cfg = str(cluster.configs[(busiest + 1) % 4])
        r = aiot("cluster", "drain", name, "--wait", "10", "--config", cfg)
        assert r.returncode == 0, r.stdout + r.stderr
        rest = [i for i in range(4) if i != busiest]
        wait_placed(cluster, devices, expected(cluster, rest), 10)
        nodes = cluster.client(0).get("/v1/cluster")["nodes"]
        assert [n["node_id"] for n in nodes if n["drained"]] == [name]
        drained_node_stays_empty(cluster, devices, busiest, rest)
        r = aiot("cluster", "undrain", name, "--config", cfg)
        assert r.returncode == 0, r.stderr
        wait_placed(cluster, devices, four, 30)

        rolling_restart(cluster, devices)
        acked = empty_flash(devices)
        # The reboot read each order from flash: the config still lists three nodes.
        assert all(len(dev.config["hubs"]) == 3 for dev in devices.values())
        assert_exactly_once(cluster, acked)
        assert not ledger_problems(cluster, four)
    finally:
        for dev in devices.values():
            dev.stop()
        cluster.stop()
