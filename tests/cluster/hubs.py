"""Helpers for the end-to-end tests: a LocalCluster of `aiot hub run`
processes with Mosquitto, and MicroPython devices provisioned through it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hub.link.broker import INSTALL_HINT, find_mosquitto
from tests.device import Device
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

# Fast enough for tests: acks time out after 1.5 s, a silent hub is left after 4 s.
DEVICE_TUNING: dict[str, Any] = {
    "sample_ms": 10,
    "flush_ms": 100,
    "offline_flush_ms": 1000,
    "status_ms": 1000,
    "keepalive_s": 2,
    "slot_capacity": 256 * 1024,
    "record_bytes": 512,
    "ack_timeout_ms": 1500,
    "failover_after_ms": 4000,
    "return_after_s": 3600,
}


def need_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip(f"mosquitto not found: {INSTALL_HINT}")


@contextmanager
def running_cluster(root: Path, nodes: int = 3, **kw: Any) -> Iterator[LocalCluster]:
    need_mosquitto()
    cluster = LocalCluster(root / "cluster", nodes, **kw)
    try:
        cluster.start(90)
        yield cluster
    except BaseException:
        for i in range(cluster.n):
            print(f"--- {cluster.node_id(i)} ---\n{cluster.tail(i, 40)}")
        raise
    finally:
        cluster.stop()


def provision(cluster: LocalCluster, root: Path, device_id: str, **tuning: Any) -> Device:
    secrets = cluster.add_device(device_id)
    return Device(root / device_id, {**secrets, **DEVICE_TUNING, **tuning})


def stored(cluster: LocalCluster, i: int, device_id: str) -> list[int]:
    """The sequence numbers node i holds for the device (through its API)."""
    out = cluster.client(i).get(f"/v1/devices/{device_id}/readings", limit=100_000)
    return [r["seq"] for r in out["readings"]]


def watermark(cluster: LocalCluster, i: int, device_id: str) -> int:
    w: int = cluster.client(i).get(f"/v1/devices/{device_id}")["watermark"]
    return w


def converged(cluster: LocalCluster, timeout: float = 60.0) -> str:
    """Wait until every running node has the same content hash; return it."""
    seen: dict[str, str] = {}

    def same() -> bool:
        seen.clear()
        seen.update(cluster.hashes())
        return len(set(seen.values())) == 1

    wait_until(same, timeout, "equal content hashes on every node")
    return next(iter(seen.values()))


def assert_exactly_once(cluster: LocalCluster, acked: dict[str, int]) -> None:
    """Every reading a device saw acknowledged is stored once on every
    running node: sequence numbers 1..watermark, each once, nothing beyond."""
    converged(cluster)
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        for device_id, wm in acked.items():
            seqs = stored(cluster, i, device_id)
            assert len(seqs) == len(set(seqs)), f"{cluster.node_id(i)} {device_id}: duplicates"
            assert set(range(1, wm + 1)) <= set(seqs), (
                f"{cluster.node_id(i)} {device_id}: acknowledged readings missing "
                f"({len(set(range(1, wm + 1)) - set(seqs))} of {wm})"
            )
