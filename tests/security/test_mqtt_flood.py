"""One device flooding its own topics (10,000 status and command-result
frames, signed with its real key, published with its real login) barely
touches the other devices: their commit-ack p99 on the same node, measured
during the flood, stays under twice the p99 measured just before it in the
same run, on a real three-node cluster with Mosquitto. The flooder is a
process of its own, as a real device is; eight well-behaved devices give the
p99 some hundreds of samples on each side.

What keeps it so: the device's token buckets drop the excess before its HMAC
is checked (hub/link/limits.py), and what passes the bucket but changes
nothing (a status with no news, a result the ledger holds) costs no Raft
entry (hub/link/consumer.py, hub/link/delivery.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from protocol import topics
from tests.cluster.hubs import running_cluster
from tests.security.mqtt_attack import Acker, can_login, client, metric, p99, result, status
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

FLOOD = 10_000
GOOD = 8
ROUNDS = 100  # commit-acks per good device for the baseline


def frames(device: str, key: bytes) -> list[tuple[str, bytes]]:
    """Fresh statuses (online, offline) and the same command result, in turn."""
    done = result(device, key, "cmd-flood", 1)
    out = []
    for k in range(FLOOD):
        if k % 2:
            out.append((topics.topic(device, "ack"), done))
        else:
            out.append((topics.topic(device, "status"), status(device, key, 1, k, k % 4 == 0)))
    return out


async def flood(port: int, device: str, password: str, key: bytes, go: Any) -> None:
    todo = frames(device, key)
    async with client(port, device, password, device, max_inflight_messages=200) as c:
        await asyncio.to_thread(go.wait)
        for at in range(0, len(todo), 100):
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in todo[at : at + 100]))


def attacker(port: int, device: str, password: str, key: bytes, ready: Any, go: Any) -> None:
    """The flooding device, in a process of its own as a real one would be
    (so its CPU use does not stall the well-behaved devices' event loop)."""

    async def main() -> None:
        ready.set()
        await flood(port, device, password, key, go)

    asyncio.run(main())


async def measure(
    cluster: LocalCluster, creds: dict[str, dict[str, str]], flooder: dict[str, str]
) -> tuple[list[float], list[float]]:
    port = cluster.ports[0].broker
    ackers = [Acker(port, d, c["password"], bytes.fromhex(c["key"])) for d, c in creds.items()]
    mp = multiprocessing.get_context("spawn")
    ready, go = mp.Event(), mp.Event()
    key = bytes.fromhex(flooder["key"])
    proc = mp.Process(
        target=attacker, args=(port, "plug-flood", flooder["password"], key, ready, go)
    )
    proc.start()
    try:
        assert await asyncio.to_thread(ready.wait, 60), "the attacker process did not start"
        await asyncio.gather(*(a.run(10) for a in ackers))  # warm up: sessions, presence
        base = [x for xs in await asyncio.gather(*(a.run(ROUNDS) for a in ackers)) for x in xs]
        stop = asyncio.Event()
        during_runs = asyncio.gather(*(a.run(10 * ROUNDS, stop) for a in ackers))
        go.set()
        await asyncio.to_thread(proc.join, 300)
        stop.set()
        during = [x for xs in await during_runs for x in xs]
        assert proc.exitcode == 0, f"the attacker process exited with {proc.exitcode}"
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return base, during


def test_a_flooding_device_leaves_other_devices_commit_acks_alone(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3) as cluster:
        creds = {f"plug-{k}": cluster.add_device(f"plug-{k}") for k in range(GOOD)}
        flooder = cluster.add_device("plug-flood")
        port = cluster.ports[0].broker
        for d, c in [*creds.items(), ("plug-flood", flooder)]:
            wait_until(partial(can_login, port, d, c["password"]), 30, f"the broker to know {d}")
        commits_before = cluster.status(0)["raft"]["commit_index"]
        base, during = asyncio.run(measure(cluster, creds, flooder))
        b99, d99 = p99(base), p99(during)
        limited = {
            ch: metric(cluster, 0, "aiot_device_rate_limited_total", ch) for ch in ("status", "ack")
        }
        print(
            f"commit-ack p99 {b99 * 1000:.1f} ms before, {d99 * 1000:.1f} ms during the flood "
            f"({len(base)} and {len(during)} samples; medians "
            f"{statistics.median(base) * 1000:.1f} / {statistics.median(during) * 1000:.1f} ms); "
            f"dropped by the buckets: {limited}; commit index {commits_before} -> "
            f"{cluster.status(0)['raft']['commit_index']}"
        )
        assert len(during) >= 30, len(during)
        assert sum(limited.values()) >= FLOOD * 0.9, limited
        assert d99 < 2 * b99, (b99, d99)
        health = cluster.health(0)
        assert health is not None and health["ready"], health
