"""hub/state/raft.py with real processes: three replicas on 127.0.0.1, each a
tests/cluster/node.py process with its own data dir, driven over stdin/stdout."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.state import entries as e
from hub.state.raft import DUMP_FILE, RaftNode, SecretError, _read_dump_header
from hub.state.snapshot import IMAGE_MAGIC, SNAPSHOT_MAGIC
from protocol import messages as m
from tests.support import ROOT, free_port, wait_until

pytestmark = pytest.mark.cluster

SECRET = "cluster-test-secret-0123456789"
BASE_TS = 1_763_700_000_000
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))


def register(device_id: str = "plug-1") -> str:
    return e.encode(e.RegisterDevice(e.Device(device_id, b"k" * 32, (RELAY,)), 1)).hex()


def batch(first: int, n: int, device_id: str = "plug-1", node: str = "hub-1") -> str:
    readings = tuple(m.Reading(1, i * 1000, float(first + i)) for i in range(n))
    msg = m.TelemetryBatch(device_id, 1, first, BASE_TS + first * 1000, readings, 0)
    return e.encode(e.Batch.from_message(msg, node)).hex()


class Replica:
    """One node.py process; ``call`` sends a request and waits for its answer."""

    def __init__(self, data: Path, address: str, peers: list[str], secret: str, *args: str):
        self.data, self.address, self.peers, self.secret = data, address, peers, secret
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.data.with_suffix(".log"), "ab")  # noqa: SIM115  (the child holds it)
        cmd = [sys.executable, "-m", "tests.cluster.node", "--address", self.address]
        cmd += ["--peers", ",".join(self.peers), "--data", str(self.data), *self.args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            bufsize=0,
            env=dict(os.environ, AIOT_TEST_SECRET=self.secret),
        )
        log.close()
        assert self._read(15.0) == {"event": "started"}

    def _read(self, timeout: float) -> Any:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"{self.address}: no answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"{self.address}: exited ({self.proc.poll()}); see {self.log}")
        return json.loads(line)

    @property
    def log(self) -> Path:
        return self.data.with_suffix(".log")

    def call(self, req: dict[str, Any], wait: float = 15.0) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        return self._read(wait)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call({"op": "status"})
        return status

    def propose(self, *entries: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.call(
            {"op": "propose", "entries": list(entries), "timeout": timeout}, wait=timeout + 10
        )["results"]
        return results

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None and not f.closed:
                    f.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive and self.proc.stdin is not None:
            self.proc.stdin.close()  # the runner closes the node and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.replicas: list[Replica] = []

    def start(self, n: int = 3, *args: str, secrets: list[str] | None = None) -> list[Replica]:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        for i, address in enumerate(addresses):
            peers = [a for a in addresses if a != address]
            secret = secrets[i] if secrets else SECRET
            self.replicas.append(Replica(self.root / f"n{i}", address, peers, secret, *args))
        for r in self.replicas:
            r.start()
        return self.replicas

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def wait_for_leader(self, among: list[Replica] | None = None, timeout: float = 15.0) -> Replica:
        """Every node of ``among`` names the same leader, one of them, which
        knows it leads."""
        nodes = among if among is not None else self.live()
        found: list[Replica] = []

        def agreed() -> bool:
            statuses = [r.status() for r in nodes]
            leaders = {s["leader"] for s in statuses}
            if len(leaders) != 1 or None in leaders:
                return False
            (leader,) = leaders
            for r, s in zip(nodes, statuses, strict=True):
                if r.address == leader and s["is_leader"]:
                    found[:] = [r]
                    return True
            return False

        wait_until(agreed, timeout, "one leader that every node names")
        return found[0]

    def wait_converged(self, nodes: list[Replica], min_index: int, timeout: float = 20.0) -> str:
        """Every node has applied at least ``min_index`` and the hashes agree."""
        hashes: set[str] = set()

        def converged() -> bool:
            statuses = [r.status() for r in nodes]
            hashes.clear()
            hashes.update(s["hash"] for s in statuses)
            return len(hashes) == 1 and all(s["store_applied_index"] >= min_index for s in statuses)

        wait_until(converged, timeout, f"equal hashes at index >= {min_index}")
        return hashes.pop()

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _ok(results: list[dict[str, Any]]) -> list[list[Any]]:
    assert all("ok" in r for r in results), results
    return [part for r in results for part in r["ok"]]


def _last_index(node: Replica) -> int:
    index: int = node.status()["store_applied_index"]
    return index


# -- tests ---------------------------------------------------------------------------------------


def test_a_node_refuses_to_start_without_a_strong_secret(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    for secret, reason in (
        (None, "missing_secret"),
        ("", "missing_secret"),
        ("short", "short_secret"),
    ):
        with pytest.raises(SecretError) as info:
            RaftNode(address, [], tmp_path / "n", secret)
        assert info.value.reason == reason
    assert not (tmp_path / "n").exists()  # refused before touching anything


def test_any_node_proposes_and_the_replicas_converge(cluster: Cluster) -> None:
    nodes = cluster.start()
    leader = cluster.wait_for_leader()
    followers = [r for r in nodes if r is not leader]
    assert _ok(followers[0].propose(register())) == [["applied", 0, ""]]
    # Every node proposes five batches at once; the followers forward theirs.
    first = 1
    for r in nodes:
        entries = [batch(first + 10 * i, 10) for i in range(5)]
        assert _ok(r.propose(*entries)) == [["applied", 10, ""]] * 5
        first += 50
    # A re-proposed batch commits again and stores nothing (invariant 2).
    assert _ok(followers[1].propose(batch(11, 10))) == [["unchanged", 0, ""]]
    digest = cluster.wait_converged(nodes, _last_index(leader))
    assert all(
        r.call({"op": "watermark", "device": "plug-1"}) == {"watermark": 150, "readings": 150}
        for r in nodes
    )
    assert digest == nodes[0].status()["hash"]


def test_the_leader_is_killed_the_rest_go_on_and_it_catches_up(cluster: Cluster) -> None:
    nodes = cluster.start()
    leader = cluster.wait_for_leader()
    _ok(leader.propose(register(), *[batch(1 + 10 * i, 10) for i in range(3)]))
    cluster.wait_converged(nodes, _last_index(leader))
    old_term = leader.status()["term"]

    leader.kill()
    survivors = [r for r in nodes if r is not leader]
    new_leader = cluster.wait_for_leader(survivors)
    assert new_leader is not leader and new_leader.status()["term"] > old_term
    # Proposals through either survivor commit with one node down.
    _ok(survivors[0].propose(batch(31, 10)))
    _ok(survivors[1].propose(batch(41, 10)))
    digest = cluster.wait_converged(survivors, _last_index(new_leader))

    leader.start()  # same data dir: journal replay over the existing LMDB, then catch-up
    assert cluster.wait_converged(nodes, _last_index(new_leader)) == digest
    assert leader.call({"op": "watermark", "device": "plug-1"}) == {"watermark": 50, "readings": 50}


def test_a_node_with_the_wrong_secret_receives_nothing(cluster: Cluster) -> None:
    nodes = cluster.start(secrets=[SECRET, SECRET, "another-secret-of-enough-bytes"])
    good, outsider = nodes[:2], nodes[2]
    leader = cluster.wait_for_leader(good)
    _ok(leader.propose(register(), batch(1, 10)))
    cluster.wait_converged(good, _last_index(leader))
    # Heartbeats and entries went out many times meanwhile; none got through.
    wait_until(lambda: leader.status()["commit_index"] > 2, 5, "commits")
    status = outsider.status()
    assert status["leader"] is None and status["store_applied_index"] == 0
    assert status["hash"] != leader.status()["hash"]
    assert outsider.call({"op": "watermark", "device": "plug-1"}) == {"watermark": 0, "readings": 0}
    # The outsider cannot get an entry in either.
    (result,) = outsider.propose(batch(11, 10), timeout=1.0)
    assert result == {"error": "DeadlineExceeded", "reason": "deadline_exceeded"}


@pytest.mark.parametrize("fmt", ["image", "stream"])
def test_a_follower_behind_the_compacted_log_catches_up_by_snapshot(
    cluster: Cluster, fmt: str
) -> None:
    # image: LMDB's compacting copy (the default); stream: the portable format
    # that mixed-architecture clusters configure (raft.snapshot_format).
    nodes = cluster.start(3, "--snapshot-min-entries", "20", "--snapshot-format", fmt)
    leader = cluster.wait_for_leader()
    _ok(leader.propose(register(), batch(1, 10)))
    cluster.wait_converged(nodes, _last_index(leader))
    lagging = next(r for r in nodes if r is not leader)
    lagging.kill()
    # 60 entries, one at a time: the leader's log passes 20 entries and is compacted.
    for i in range(60):
        _ok(leader.propose(batch(11 + 10 * i, 10)))
    wait_until(lambda: leader.status()["snapshots_taken"] >= 1, 10, "a snapshot on the leader")
    wait_until(lambda: leader.status()["log_len"] < 30, 10, "the leader's log compacted")

    lagging.start()
    others = [r for r in nodes if r is not lagging]
    digest = cluster.wait_converged(others, _last_index(leader))
    assert cluster.wait_converged(nodes, _last_index(leader)) == digest
    assert lagging.status()["snapshots_installed"] >= 1
    with open(lagging.data / DUMP_FILE, "rb") as f:
        _read_dump_header(f)
        assert f.read(8) == (IMAGE_MAGIC if fmt == "image" else SNAPSHOT_MAGIC)
    # Restarted again, it loads its own dump: its LMDB is already at (or past)
    # the dump's index, so nothing is installed and nothing changes.
    lagging.stop()
    lagging.start()
    assert cluster.wait_converged(nodes, _last_index(leader)) == digest
    assert lagging.status()["snapshots_installed"] == 0
    assert lagging.call({"op": "watermark", "device": "plug-1"}) == {
        "watermark": 610,
        "readings": 610,
    }


def test_a_journal_that_lost_writes_is_detected_at_startup(tmp_path: Path) -> None:
    """The power-loss window: LMDB holds entries the journal lost (simulated
    by deleting the journal, as a cut before writeback would)."""
    import asyncio
    import time

    from hub.state.raft import JOURNAL_FILE

    address = f"127.0.0.1:{free_port()}"

    async def fill(node: RaftNode) -> None:
        deadline = time.monotonic() + 20
        while not node.is_ready and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await node.propose(bytes.fromhex(register()))
        for first in (1, 6, 11):
            await node.propose(bytes.fromhex(batch(first, 5)))

    node = RaftNode(address, [], tmp_path / "n", SECRET)
    try:
        asyncio.run(fill(node))
        assert node.status().journal_behind_store == 0
        applied = node.status().store_applied_index
    finally:
        node.close()
    for f in (tmp_path / "n").glob(JOURNAL_FILE + "*"):
        f.unlink()
    node = RaftNode(address, [], tmp_path / "n", SECRET)
    try:
        status = node.status()
        assert status.journal_behind_store > 0
        assert status.store_applied_index == applied
    finally:
        node.close()
