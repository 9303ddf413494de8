"""The hub cluster the ingest, failover and soak benchmarks run against.

A LocalCluster (tools/lab/cluster.py) on loopback: ``NODES`` `aiot hub run`
processes, each with its own Mosquitto, with the hub's default election
timeouts. Devices are registered through the cluster's API; each gets its
key, broker credentials and its own rendezvous order of hubs. The rest reads
the hubs' own counters (ingest acks, rejects and failures, the Raft commit
index, term and snapshots) through their status API.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, TypeVar

from hub.core.config import RaftConfig, load
from hub.link.broker import INSTALL_HINT, find_mosquitto
from hub.state.raft import raft_timing
from tools.base.paths import ROOT
from tools.bench.codec import BenchError
from tools.lab.cluster import ClusterError, LocalCluster

HOST: Final = "127.0.0.1"
NODES: Final = 3

Say = Callable[[str], None]
T = TypeVar("T")


def quiet(_: str) -> None:
    """A ``say`` that says nothing."""


def require_mosquitto() -> None:
    if find_mosquitto() is None:
        raise BenchError(f"mosquitto is not installed; run: {INSTALL_HINT}")


def child_env() -> dict[str, str]:
    """The environment of the helper processes: this checkout on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=str(ROOT))


def election_ms() -> tuple[int, int]:
    """The hub's default election timeouts (RaftConfig's defaults)."""
    fields = RaftConfig.__dataclass_fields__
    lo, hi = fields["election_min_ms"].default, fields["election_max_ms"].default
    assert isinstance(lo, int) and isinstance(hi, int)
    return lo, hi


def start_cluster(
    work: Path,
    say: Say,
    *,
    extra: str = "",
    with_what: str = "",
    timeout: float = 90,
    durable_journal: bool = True,
) -> LocalCluster:
    """``NODES`` hubs with the default election timeouts under ``work``/cluster;
    ``extra``: TOML appended to every config, ``with_what`` to the message;
    ``durable_journal`` false: the undurable Raft journal (journal_off)."""
    cluster = LocalCluster(work / "cluster", NODES, election_ms=election_ms(), extra=extra)
    if not durable_journal:
        journal_off(cluster)
    say(f"starting {NODES} hub nodes, each with its own Mosquitto{with_what}")
    try:
        cluster.start(timeout)
    except ClusterError as exc:
        cluster.stop()
        raise BenchError(f"the cluster did not start: {exc}") from None
    return cluster


def journal_off(cluster: LocalCluster) -> None:
    """Every node's config with ``[raft] durable_journal = false``: the Raft
    journal is never synced (hub/state/journal.py), the baseline its cost is
    measured against."""
    for path in cluster.configs:
        text = path.read_text()
        if "\n[raft]\n" not in text:
            raise BenchError(f"{path}: no [raft] table to turn the journal's syncs off in")
        path.write_text(text.replace("\n[raft]\n", "\n[raft]\ndurable_journal = false\n", 1))


def on_cluster(
    prefix: str,
    devices: int,
    say: Say,
    run: Callable[[LocalCluster, Path, list[dict[str, Any]]], T],
    *,
    extra: str = "",
    with_what: str = "",
    timeout: float = 90,
    durable_journal: bool = True,
) -> T:
    """``run(cluster, work, creds)`` on a cluster started in a new temporary
    directory ``work`` (see start_cluster) with ``devices`` devices registered
    (``creds``: their secrets configs); the cluster is stopped and the
    directory removed however it ends."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        cluster = start_cluster(
            work,
            say,
            extra=extra,
            with_what=with_what,
            timeout=timeout,
            durable_journal=durable_journal,
        )
        try:
            return run(cluster, work, register(cluster, devices, say))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register(cluster: LocalCluster, count: int, say: Say) -> list[dict[str, Any]]:
    """``count`` devices bench-000, bench-001, ...: their secrets configs."""
    say(f"registering {count} devices through the API")
    out = []
    for k in range(count):
        out.append(cluster.add_device(f"bench-{k:03d}", owner="bench"))
    return out


def node_pids(cluster: LocalCluster) -> dict[str, int | None]:
    """hub-N and hub-N-mosquitto: the pid of every running hub and its broker."""
    pids: dict[str, int | None] = {}
    for i in range(cluster.n):
        proc = cluster.procs[i]
        if proc is None or not cluster.alive(i):
            continue
        name = cluster.node_id(i)
        pids[name] = proc.pid
        pids[f"{name}-mosquitto"] = cluster.status(i)["broker"]["pid"]
    return pids


def hub_counters(cluster: LocalCluster) -> dict[str, Any]:
    """Ingest acks, rejects and failures summed over the running hubs; the
    highest Raft commit index and term; snapshots taken, journal syncs and
    their seconds, summed."""
    rejected: dict[str, int] = {}
    failed: dict[str, int] = {}
    acked = 0
    commit = 0
    term = 0
    snapshots = 0
    flushes = 0
    flush_s = 0.0
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        st = cluster.status(i)
        acked += st["ingest"]["acked"]
        for k, v in st["ingest"]["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
        for k, v in st["ingest"]["failed"].items():
            failed[k] = failed.get(k, 0) + v
        commit = max(commit, st["raft"]["commit_index"])
        term = max(term, st["raft"]["term"])
        snapshots += st["raft"]["snapshots_taken"]
        flushes += st["raft"].get("journal_flushes", 0)
        flush_s += st["raft"].get("journal_flush_seconds", 0.0)
    return {
        "acked": acked,
        "rejected": rejected,
        "failed": failed,
        "commit_index": commit,
        "term": term,
        "snapshots": snapshots,
        "journal_flushes": flushes,
        "journal_flush_s": flush_s,
    }


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The counters that changed, by how much."""
    keys = set(after) | set(before)
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(keys)
        if after.get(k, 0) - before.get(k, 0)
    }


def election_timing(cluster: LocalCluster) -> dict[str, Any]:
    """The election timeouts of the first node's config, and the pysyncobj
    timing derived from them."""
    cfg = load(cluster.configs[0])
    return {
        "election_min_ms": cfg.raft.election_min_ms,
        "election_max_ms": cfg.raft.election_max_ms,
        **{f"pysyncobj_{k}_s": v for k, v in asdict(raft_timing(cfg.raft)).items()},
    }


def leader_now(cluster: LocalCluster) -> int:
    """The node that says it leads (not only what another node last heard)."""
    for _ in range(100):
        with contextlib.suppress(ClusterError):
            i = int(cluster.leader())
            h = cluster.health(i)
            if h is not None and str(h.get("leader") or "").endswith(f":{cluster.ports[i].raft}"):
                return i
        time.sleep(0.05)
    raise BenchError("no node says it leads")
