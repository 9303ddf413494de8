"""`aiot bench flood`: what one flooding device costs the other devices.

On tools/bench/rig.py's cluster (three hub nodes on loopback, each with its
own Mosquitto), ``devices`` well-behaved devices each publish one batch of 8
readings at a time to the first node and time its CommitAck
(tools/lab/rawdevice.py). First ``rounds`` batches each with no flood: the
baseline. Then one more registered device, in a process of its own as a real
device is, publishes ``frames`` frames on its own topics as fast as QoS 1
with 200 in flight allows: statuses (online and offline in turn) and the
result of a command, every one signed with its real key and sent with its
real login. The well-behaved devices keep publishing until the flood ends.

Reported: the commit-ack p50 and p99 before and during the flood, their
ratio, the frames the device's token buckets dropped
(``aiot_device_rate_limited_total``, hub/link/limits.py), the Raft entries
committed over the run, and whether the node was ready after it. The bar: the
p99 during the flood under twice the p99 before it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from protocol import topics
from tools.bench import rig
from tools.bench.codec import BenchError
from tools.bench.figures import percentile
from tools.bench.watch import machine
from tools.lab.cluster import LocalCluster
from tools.lab.rawdevice import NoCommitAck, TimedDevice, client, result, status

FLOODER: Final = "bench-flood"
LIMITED: Final = "aiot_device_rate_limited_total"
P99_BAR: Final = 2.0  # the p99 during the flood under this times the p99 before it
WARMUP_ROUNDS: Final = 10
IN_FLIGHT: Final = 200
ATTACK_S: Final = 300.0  # the flooding process must have finished by then
NOTE: Final = (
    "commit-ack latency: a well-behaved device publishes one batch of 8 readings and "
    "waits for the CommitAck covering it; before: with no flood, during: while one other "
    "device publishes its frames as fast as QoS 1 allows; all on the first node"
)


def flood_frames(device: str, key: bytes, count: int) -> list[tuple[str, bytes]]:
    """Fresh statuses (online, offline) and the same command result, in turn."""
    done = result(device, key, "cmd-flood", 1)
    out = []
    for k in range(count):
        if k % 2:
            out.append((topics.topic(device, "ack"), done))
        else:
            out.append((topics.topic(device, "status"), status(device, key, 1, k, k % 4 == 0)))
    return out


async def _flood(port: int, creds: dict[str, Any], count: int, go: Any) -> None:
    device = creds["device_id"]
    todo = flood_frames(device, bytes.fromhex(creds["key"]), count)
    async with client(
        port, device, creds["password"], device, max_inflight_messages=IN_FLIGHT
    ) as c:
        c.pending_calls_threshold = IN_FLIGHT  # up to this many in flight is the plan, not news
        await asyncio.to_thread(go.wait)
        for at in range(0, len(todo), IN_FLIGHT // 2):
            chunk = todo[at : at + IN_FLIGHT // 2]
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in chunk))


def attacker(port: int, creds: dict[str, Any], count: int, ready: Any, go: Any) -> None:
    """The flooding device, in a process of its own as a real one would be
    (so its CPU use does not stall the well-behaved devices' event loop)."""

    async def main() -> None:
        ready.set()
        await _flood(port, creds, count, go)

    asyncio.run(main())


@dataclass(frozen=True, slots=True)
class Flood:
    """What one run measured."""

    before: list[float]  # commit-ack seconds, every device, no flood
    during: list[float]  # the same while the flood ran
    flood_s: float  # from the go to the flooding process's end
    dropped: dict[str, float]  # aiot_device_rate_limited_total by channel, node 0
    commit_before: int
    commit_after: int
    ready_after: bool


def measure(
    cluster: LocalCluster,
    good: list[dict[str, Any]],
    flooder: dict[str, Any],
    frames: int,
    rounds: int,
    say: rig.Say = rig.quiet,
) -> Flood:
    """The baseline, then the flood, on node 0 of a running ``cluster``:
    ``good`` and ``flooder`` are registered devices' secrets configs."""
    commit_before = cluster.status(0)["raft"]["commit_index"]
    flood_s, before, during = asyncio.run(_measure(cluster, good, flooder, frames, rounds, say))
    dropped = {ch: cluster.metric(0, LIMITED, ch) or 0.0 for ch in ("status", "ack")}
    health = cluster.health(0)
    return Flood(
        before,
        during,
        flood_s,
        dropped,
        commit_before,
        cluster.status(0)["raft"]["commit_index"],
        bool(health and health.get("ready")),
    )


async def _measure(
    cluster: LocalCluster,
    good: list[dict[str, Any]],
    flooder: dict[str, Any],
    frames: int,
    rounds: int,
    say: rig.Say,
) -> tuple[float, list[float], list[float]]:
    port = cluster.ports[0].broker
    devices = [
        TimedDevice(port, d["device_id"], d["password"], bytes.fromhex(d["key"])) for d in good
    ]
    mp = multiprocessing.get_context("spawn")
    ready, go = mp.Event(), mp.Event()
    proc = mp.Process(target=attacker, args=(port, flooder, frames, ready, go))
    proc.start()
    try:
        if not await asyncio.to_thread(ready.wait, 60):
            raise BenchError("the flooding process did not start within 60 s")
        await asyncio.gather(*(d.run(WARMUP_ROUNDS) for d in devices))  # sessions, presence
        say(f"baseline: {rounds} batches from each of {len(devices)} devices, no flood")
        before = [x for xs in await asyncio.gather(*(d.run(rounds) for d in devices)) for x in xs]
        stop = asyncio.Event()
        # Until the flood ends; the cap only bounds a flood that never does.
        during_runs = asyncio.gather(*(d.run(1000 * rounds, stop) for d in devices))
        say(f"flood: {frames:,} frames from {flooder['device_id']}, the devices still publishing")
        t0 = time.monotonic()
        go.set()
        await asyncio.to_thread(proc.join, ATTACK_S)
        flood_s = time.monotonic() - t0
        stop.set()
        during = [x for xs in await during_runs for x in xs]
        if proc.exitcode != 0:
            raise BenchError(f"the flooding process exited with {proc.exitcode}")
    except NoCommitAck as exc:
        raise BenchError(str(exc)) from None
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    return flood_s, before, during


def flood(
    devices: int = 8,
    frames: int = 10_000,
    rounds: int = 100,
    say: rig.Say = rig.quiet,
) -> dict[str, Any]:
    """One run on a new cluster; one JSON-ready dict."""
    if devices < 1 or frames < 1 or rounds < 1:
        raise BenchError("devices, frames and rounds must be positive")
    rig.require_mosquitto()

    def run(cluster: LocalCluster, _work: Path, creds: list[dict[str, Any]]) -> Flood:
        flooder = {**cluster.add_device(FLOODER, owner="bench"), "device_id": FLOODER}
        return measure(cluster, creds, flooder, frames, rounds, say)

    got = rig.on_cluster("aiot-bench-flood-", devices, say, run)
    return report(got, devices, frames, rounds)


def report(got: Flood, devices: int, frames: int, rounds: int) -> dict[str, Any]:
    if not got.before or not got.during:
        raise BenchError("no commit-ack was timed before or during the flood")
    b99, d99 = percentile(got.before, 99), percentile(got.during, 99)
    dropped = sum(got.dropped.values())
    return {
        "bench": "flood",
        "commit_ack_ms_p99_during": round(d99 * 1000, 1),
        "baseline_commit_ack_ms_p99": round(b99 * 1000, 1),
        "p99_ratio": round(d99 / b99, 2),
        "commit_ack_ms_p50_during": round(statistics.median(got.during) * 1000, 1),
        "baseline_commit_ack_ms_p50": round(statistics.median(got.before) * 1000, 1),
        "samples_during": len(got.during),
        "baseline_samples": len(got.before),
        "bars": {f"p99_during_under_{P99_BAR:g}x_baseline": d99 < P99_BAR * b99},
        "flood_frames": frames,
        "flood_s": round(got.flood_s, 2),
        "dropped_by_buckets": {k: int(v) for k, v in got.dropped.items()},
        "dropped_share": round(dropped / frames, 4),
        "raft_entries_committed": got.commit_after - got.commit_before,
        "ready_after": got.ready_after,
        "devices": devices,
        "rounds": rounds,
        "nodes": rig.NODES,
        "note": NOTE,
        "machine": machine(),
    }
