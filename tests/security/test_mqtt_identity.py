"""A device's MQTT login cannot take over another session: not the hub
consumer's (``hub-<node>-consumer``; node ids are public), not another
device's. A takeover loop with a device's own credentials leaves the hub's
consumer and the victim device (the real firmware on MicroPython) connected,
and the victim's readings committed and acknowledged during and after the
attack. The hub's own login cannot be had with a device's password.
With the node's Mosquitto and with the embedded broker (hub/link/broker.py,
"Identities"; hub/link/embedded.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from hub.core import auth
from hub.link.consumer import consumer_id
from tests.cluster.hubs import provision, running_cluster, watermark
from tests.security.mqtt_attack import client
from tests.support import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

ROUNDS = 12


async def takeover_loop(port: int, user: str, password: str, ids: list[str]) -> list[str]:
    """Connect with each client id in turn, hold the connection a moment
    (as long as the broker lets it), and say what each connection got."""
    got = []
    for identifier in ids:
        try:
            async with client(port, user, password, identifier) as c:
                await c.publish(f"aiot/v1/{user}/status", b"x", qos=1)
                await asyncio.sleep(0.4)
            got.append("connected")
        except aiomqtt.MqttError as exc:
            got.append(f"refused: {exc}")
    return got


async def login(port: int, user: str, password: str, identifier: str) -> str:
    try:
        async with client(port, user, password, identifier):
            return "connected"
    except aiomqtt.MqttError as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_a_takeover_loop_leaves_the_hub_and_the_victim_connected(
    tmp_path: Path, broker: str
) -> None:
    with running_cluster(tmp_path, nodes=1, broker=broker) as cluster:
        node = cluster.node_id(0)
        port = cluster.ports[0].broker
        attacker = cluster.add_device("plug-x")
        victim = provision(cluster, tmp_path, "plug-v")
        victim.start()
        try:
            wait_until(lambda: watermark(cluster, 0, "plug-v") > 0, 60, "the victim's first ack")
            before = cluster.status(0)["broker"]
            assert before["consumer_connected"] and before["consumer_sessions"] == 1, before

            ids = [consumer_id(node), "plug-v"] * (ROUNDS // 2)
            w_start = watermark(cluster, 0, "plug-v")
            t0 = time.monotonic()
            got = asyncio.run(takeover_loop(port, "plug-x", attacker["password"], ids))
            w_end = watermark(cluster, 0, "plug-v")
            print(f"{broker}: {len(ids)} takeovers in {time.monotonic() - t0:.1f} s; {got[:2]}")
            print(f"victim watermark {w_start} -> {w_end} during the attack")
            # The broker let the attacker in every time (as itself), ...
            assert got == ["connected"] * len(ids), got
            # ... and nobody else's session moved: ingest went on during it.
            assert w_end > w_start
            after = cluster.status(0)["broker"]
            assert after["consumer_connected"] and after["consumer_sessions"] == 1, after
            wait_until(
                lambda: watermark(cluster, 0, "plug-v") > w_end, 30, "ingest after the attack"
            )
            # The hub's login: its user name with a device's password is refused.
            hub_user = auth.hub_user(node)
            forged = asyncio.run(login(port, hub_user, attacker["password"], consumer_id(node)))
            assert forged.startswith("refused"), forged
            assert cluster.status(0)["broker"]["consumer_sessions"] == 1
        finally:
            stats = victim.interrupt()
        print(f"victim: {stats}")
        assert stats["reconnects"] == 0, stats
        assert stats["watermark"] >= w_end
