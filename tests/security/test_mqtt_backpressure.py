"""Backpressure from the hub's MQTT session to its broker (hub/link/consumer.py).

On a real three-node cluster with Mosquitto: node 0's other two nodes are
paused (SIGSTOP), so node 0 reads on but can commit nothing; four devices
publish 1,200 batches there, each taken by the broker. The hub acknowledges
a message only once it is handled, so Mosquitto sends it ``WINDOW`` and
keeps the rest in its queue for the hub's session: what the hub holds (in
hand and waiting, and its peak, on /metrics) fills the window and never
exceeds it. Then the nodes resume; the devices resend what has no commit
(as a device does: a proposal may have timed out while stalled, and
Mosquitto 2.0.11 sends past the window once the hub acknowledges, which the
hub sheds), and every reading is committed exactly once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import pytest

from hub.link.consumer import WINDOW
from protocol import topics
from tests.cluster.hubs import listing, running_cluster, watermark
from tests.security.mqtt_attack import batch, can_login, client, gauge
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

DEVICES = 4
BATCHES = 300  # per device: within its burst (400), 1,200 in all; past WINDOW (512)
READINGS = 8  # per batch


async def publish(port: int, device: str, password: str, key: bytes, seqs: list[int]) -> None:
    up = topics.topic(device, "up")
    async with client(port, device, password, device, max_inflight_messages=100) as c:
        for at in range(0, len(seqs), 50):
            await asyncio.gather(
                *(c.publish(up, batch(device, s, READINGS, key), qos=1) for s in seqs[at : at + 50])
            )


def send(
    cluster: LocalCluster, creds: dict[str, dict[str, str]], todo: dict[str, list[int]]
) -> None:
    port = cluster.ports[0].broker

    async def all_of_them() -> None:
        await asyncio.gather(
            *(
                publish(port, d, creds[d]["password"], bytes.fromhex(creds[d]["key"]), seqs)
                for d, seqs in todo.items()
                if seqs
            )
        )

    asyncio.run(all_of_them())


def test_a_stalled_hub_holds_its_window_and_the_broker_the_rest(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3) as cluster:
        creds = {f"plug-bp{k}": cluster.add_device(f"plug-bp{k}") for k in range(DEVICES)}
        port = cluster.ports[0].broker
        for d, c in creds.items():
            wait_until(partial(can_login, port, d, c["password"]), 30, f"the broker to know {d}")
        first = {d: [1 + READINGS * k for k in range(BATCHES)] for d in creds}
        total = BATCHES * READINGS

        cluster.pause(1)
        cluster.pause(2)
        try:
            send(cluster, creds, first)  # every PUBLISH taken by the broker
            # the window fills: node 0 has received what the broker sends it
            wait_until(
                lambda: gauge(cluster, 0, "aiot_broker_consumer_held") >= WINDOW,
                60,
                "node 0's consumer to hold a full window",
            )
            held = [gauge(cluster, 0, "aiot_broker_consumer_held") for _ in range(5)]
        finally:
            cluster.resume(1)
            cluster.resume(2)
        peak = gauge(cluster, 0, "aiot_broker_consumer_held_peak")
        print(f"held while stalled: {held}; peak {peak:.0f}; window {WINDOW}")
        assert max(held) <= WINDOW, held
        assert peak <= WINDOW, peak

        # What no commit covers (a proposal that timed out while stalled) is
        # resent, as a device resends what has no CommitAck.
        def uncommitted() -> dict[str, list[int]]:
            marks = {d: watermark(cluster, 0, d) for d in creds}
            return {d: [s for s in first[d] if s > marks[d]] for d in creds}

        deadline = time.monotonic() + 180
        resent = 0
        while any((todo := uncommitted()).values()):
            assert time.monotonic() < deadline, {d: len(v) for d, v in todo.items()}
            time.sleep(5)  # what is in the broker's queue comes through first
            todo = uncommitted()
            resent += sum(len(v) for v in todo.values())
            send(cluster, creds, todo)
        for d in creds:
            seqs = [r["seq"] for r in listing(cluster, 0, d)["readings"]]
            assert len(seqs) == total, (d, len(seqs))
            assert sorted(seqs) == list(range(1, total + 1)), d
        peak = gauge(cluster, 0, "aiot_broker_consumer_held_peak")
        shed = gauge(cluster, 0, "aiot_broker_consumer_shed_total")
        print(f"after: peak {peak:.0f}, shed {shed:.0f}, resent {resent}")
        assert peak <= WINDOW, peak
        health = cluster.health(0)
        assert health is not None and health["ready"], health
