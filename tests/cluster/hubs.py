"""Helpers for the end-to-end tests: a LocalCluster of `aiot hub run`
processes with Mosquitto, and MicroPython devices provisioned through it."""

from __future__ import annotations

from collections import Counter
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


def listing(cluster: LocalCluster, i: int, device_id: str) -> dict[str, Any]:
    """Node i's readings of the device, as its API lists them (every one)."""
    out: dict[str, Any] = cluster.client(i).get(f"/v1/devices/{device_id}/readings", limit=100_000)
    return out


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


def _samples(rows: list[dict[str, Any]]) -> list[tuple[int, list[int], Counter[Any]]]:
    """The listing cut into samples: readings of one device time whose
    sequence numbers follow one another (the device numbers a sample's
    readings together). Each is (ts_ms, seqs, its (sensor, value) multiset)."""
    out: list[tuple[int, list[int], Counter[Any]]] = []
    for r in sorted(rows, key=lambda r: r["seq"]):
        if out and out[-1][0] == r["ts_ms"] and out[-1][1][-1] == r["seq"] - 1:
            out[-1][1].append(r["seq"])
            out[-1][2][(r["sensor"], r["value"])] += 1
        else:
            out.append((r["ts_ms"], [r["seq"]], Counter([(r["sensor"], r["value"])])))
    return out


def readings_problems(
    device_id: str, listed: dict[str, Any], watermark: int, lost_before: int, acked: int
) -> list[str]:
    """What is wrong with one node's readings of a device, given what its
    store reports (watermark, lost_before) and what the device saw acked.

    - the listing is whole, and names no sequence number twice;
    - the store's count agrees with its watermark: every seq in
      (lost_before - 1, watermark] is listed, so watermark - floor of them;
    - nothing was acked beyond the watermark, and 1..acked are all listed;
    - no reading is stored twice under different sequence numbers: no
      sample's readings (device time, sensor, value) come back, whole or in
      part, inside another sample of the same device time. Two samples of
      one device time are normal (the device clock slews back by up to 50 ms
      when it syncs), but they differ in the random part of their values.
    """
    rows: list[dict[str, Any]] = listed["readings"]
    problems = []
    if listed.get("truncated"):
        problems.append(f"{device_id}: the listing is truncated at {len(rows)} readings")
    seqs = Counter(r["seq"] for r in rows)
    twice = sorted(s for s, n in seqs.items() if n > 1)
    if twice:
        problems.append(f"{device_id}: sequence numbers listed twice: {twice[:10]}")
    floor = max(0, lost_before - 1)
    covered = sum(1 for s in seqs if floor < s <= watermark)
    if covered != watermark - floor:
        problems.append(
            f"{device_id}: the store reports watermark {watermark} (lost_before "
            f"{lost_before}) but lists {covered} of the {watermark - floor} readings it covers"
        )
    if acked > watermark:
        problems.append(f"{device_id}: acknowledged up to {acked}, watermark {watermark}")
    missing = [s for s in range(1, acked + 1) if s not in seqs]
    if missing:
        problems.append(
            f"{device_id}: acknowledged readings missing ({len(missing)} of {acked}, "
            f"first {missing[:5]})"
        )
    by_time: dict[int, list[tuple[list[int], Counter[Any]]]] = {}
    for ts, sample_seqs, content in _samples(rows):
        for other_seqs, other in by_time.get(ts, []):
            if not content - other or not other - content:
                problems.append(
                    f"{device_id}: readings of ts {ts} stored twice, "
                    f"under seqs {other_seqs} and {sample_seqs}"
                )
        by_time.setdefault(ts, []).append((sample_seqs, content))
    return problems


def _one_view(
    cluster: LocalCluster, i: int, device_id: str
) -> tuple[dict[str, Any], tuple[int, int]]:
    """Node i's listing of the device and its (watermark, lost_before),
    read while neither moved (so the two describe one state)."""
    client = cluster.client(i)

    def progress() -> tuple[int, int]:
        d = client.get(f"/v1/devices/{device_id}")
        return d["watermark"], d["lost_before"]

    view: list[Any] = []

    def steady() -> bool:
        before = progress()
        listed = listing(cluster, i, device_id)
        view[:] = [listed, before]
        return progress() == before

    wait_until(steady, 60, f"{cluster.node_id(i)}: {device_id}'s readings to stop moving")
    return view[0], view[1]


def assert_exactly_once(cluster: LocalCluster, acked: dict[str, int]) -> None:
    """Every reading a device saw acknowledged is stored once on every
    running node (readings_problems says what that means)."""
    converged(cluster)
    problems = []
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        for device_id, wm in acked.items():
            listed, (watermark, lost_before) = _one_view(cluster, i, device_id)
            found = readings_problems(device_id, listed, watermark, lost_before, wm)
            problems += [f"{cluster.node_id(i)} {p}" for p in found]
    assert not problems, "\n".join(problems)
