"""Frames that cannot change anything cost no Raft entry, and a device's
rate is bounded before anything is read (hub/link/consumer.py, "Hostile
devices"; hub/link/delivery.py ``_stale``; hub/link/limits.py).

Signed with the device's real key, published with its real login:
- a replayed status (an OFFLINE of an earlier boot, an ONLINE older than
  one already seen) is refused as ``stale``;
- a command result the ledger already holds, or for no known command, is
  refused before proposing;
- an OFFLINE while presence does not name the node proposes nothing;
and the node's Raft commit index does not move for any of them. A burst of
fresh statuses past the device's bucket is dropped and counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from protocol import topics
from tests.cluster.hubs import running_cluster
from tests.security.mqtt_attack import can_login, client, metric, result, status
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

DEV = "plug-s"


async def send(port: int, password: str, frames: list[tuple[str, bytes]]) -> None:
    async with client(port, DEV, password, DEV) as c:
        for channel, payload in frames:
            await c.publish(topics.topic(DEV, channel), payload, qos=1)


def commit_index(cluster: LocalCluster) -> int:
    n: int = cluster.status(0)["raft"]["commit_index"]
    return n


def quiet(cluster: LocalCluster, seconds: float = 1.5) -> int:
    """The commit index once it has not moved for ``seconds``."""
    last, since = commit_index(cluster), time.monotonic()
    deadline = since + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = commit_index(cluster)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return now
    raise AssertionError("the commit index never settled")


def counts(cluster: LocalCluster) -> tuple[dict[str, Any], dict[str, Any]]:
    st = cluster.status(0)
    return st["status_rejected"], st["commands"]["rejected"]


def test_stale_status_and_results_are_refused_without_a_proposal(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1) as cluster:
        dev = cluster.add_device(DEV)
        key, pw = bytes.fromhex(dev["key"]), dev["password"]
        port = cluster.ports[0].broker
        wait_until(lambda: can_login(port, DEV, pw), 30, "the broker to know the device")
        c = cluster.client(0)
        cmd = c.post("/v1/commands", {"device": DEV, "action": "reboot", "deadline_s": 3600})

        # The device comes online (boot 5, up 100 s) and answers the command.
        asyncio.run(send(port, pw, [("status", status(DEV, key, 5, 100))]))
        wait_until(lambda: DEV in cluster.status(0)["devices_connected"], 30, "presence")
        done = result(DEV, key, cmd["command_id"], cmd["seq"])
        asyncio.run(send(port, pw, [("ack", done)]))
        wait_until(
            lambda: c.get("/v1/commands", device=DEV)[0]["state"] == "DONE", 30, "the result"
        )
        index = quiet(cluster)
        s0, r0 = counts(cluster)

        replays = [
            ("status", status(DEV, key, 4, 0, online=False)),  # an OFFLINE of boot 4
            ("status", status(DEV, key, 5, 50)),  # older than up 100 s of boot 5
            ("ack", done),  # the ledger has it
            ("ack", result(DEV, key, "no-such-command", 1)),
        ]
        asyncio.run(send(port, pw, replays))

        def refused() -> bool:
            s, r = counts(cluster)
            return bool(
                s.get("stale", 0) - s0.get("stale", 0) == 2
                and r.get("stale", 0) - r0.get("stale", 0) == 1
                and r.get("unknown_command", 0) - r0.get("unknown_command", 0) == 1
            )

        wait_until(refused, 30, "two stale statuses and two refused results")
        assert quiet(cluster) == index
        assert DEV in cluster.status(0)["devices_connected"]

        # A fresh OFFLINE (boot 5) is news: one proposal; the same again is not.
        asyncio.run(send(port, pw, [("status", status(DEV, key, 5, 0, online=False))]))
        wait_until(lambda: DEV not in cluster.status(0)["devices_connected"], 30, "offline")
        index = quiet(cluster)
        asyncio.run(send(port, pw, [("status", status(DEV, key, 5, 0, online=False))] * 5))
        time.sleep(1.0)
        assert quiet(cluster) == index
        s1, _ = counts(cluster)
        assert s1.get("stale", 0) == s0.get("stale", 0) + 2  # not a replay: just no news


def test_a_status_burst_past_the_bucket_is_dropped_unread(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1) as cluster:
        dev = cluster.add_device(DEV)
        key, pw = bytes.fromhex(dev["key"]), dev["password"]
        port = cluster.ports[0].broker
        wait_until(lambda: can_login(port, DEV, pw), 30, "the broker to know the device")
        n = 300
        t0 = time.monotonic()
        # Fresh, authentic statuses (up 1..n s): only the bucket stops them.
        asyncio.run(send(port, pw, [("status", status(DEV, key, 1, k)) for k in range(1, n + 1)]))
        elapsed = time.monotonic() - t0
        # [broker] device_status_burst = 10, device_statuses_per_s = 2 (the defaults)
        allowed = 10 + 2 * (elapsed + 1)

        def dropped() -> float:
            return metric(cluster, 0, "aiot_device_rate_limited_total", "status")

        wait_until(lambda: dropped() >= n - allowed, 30, "the burst to be dropped")
        print(f"{n} statuses in {elapsed:.2f} s: {dropped():.0f} dropped")
        assert dropped() <= n - 10
        assert cluster.status(0)["status_rejected"] == {}
        health = cluster.health(0)
        assert health is not None and health["ready"], health
