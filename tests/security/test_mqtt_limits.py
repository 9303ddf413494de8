"""The node's broker bounds what a client can make it (and the hub) buffer:
a packet over ``max_packet_size`` ([ingest] max_frame_bytes + 1024) from a
device's login loses its connection at the broker, the hub never sees it,
and the hub goes on taking that device's batches (hub/link/broker.py
``BrokerLimits``; the embedded broker keeps the same limit)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from hub.link.broker import PACKET_OVERHEAD
from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import running_cluster
from tests.security.mqtt_attack import batch, client
from tests.support import wait_until
from tools.base import mqttwire

pytestmark = pytest.mark.cluster

FRAME = 16 * 1024  # [ingest] max_frame_bytes, the default


async def oversized(port: int, device: str, password: str, size: int) -> str:
    """On a raw socket: CONNECT as the device, then one QoS 1 PUBLISH with a
    ``size``-byte payload, written whole; what the broker did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(mqttwire.connect(device, device, password, keepalive=30))
        connack = await asyncio.wait_for(reader.readexactly(4), 10)
        if connack[3] != 0:
            return f"refused {connack.hex()}"
        var = mqttwire.string(topics.topic(device, "up")) + (1).to_bytes(2, "big")
        writer.write(b"\x32" + mqttwire.remaining_length(len(var) + size) + var)  # QoS 1
        with contextlib.suppress(ConnectionError):
            for at in range(0, size, 65536):
                writer.write(b"\x00" * min(65536, size - at))
                await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(16), 10)
        except ConnectionError:
            return "dropped"
        return "dropped" if answer == b"" else f"answered {answer.hex()}"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def acked(port: int, device: str, password: str, key: bytes) -> int:
    async with client(port, device, password, device) as c:
        await c.subscribe(topics.topic(device, "down"), qos=1)
        await c.publish(topics.topic(device, "up"), batch(device, 1, 5, key), qos=1)
        async with asyncio.timeout(30):
            async for msg in c.messages:
                ack = wire.decode_frame(bytes(msg.payload), key)
                assert isinstance(ack, m.CommitAck)
                return ack.watermark
    raise AssertionError("no commit-ack")


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_an_oversized_publish_loses_its_connection_at_the_broker(
    tmp_path: Path, broker: str
) -> None:
    with running_cluster(tmp_path, nodes=1, broker=broker) as cluster:
        dev = cluster.add_device("plug-big")
        port = cluster.ports[0].broker
        before = cluster.status(0)["ingest"]["rejected"]
        for size in (FRAME + PACKET_OVERHEAD + 1, 1024 * 1024):
            got = asyncio.run(oversized(port, "plug-big", dev["password"], size))
            print(f"{broker}: {size} bytes: {got}")
            assert got == "dropped", got
        # The hub saw none of it (nothing counted, not even as oversized) ...
        after = cluster.status(0)["ingest"]["rejected"]
        assert after == before, (before, after)
        # ... and is healthy: the same device's next batch is committed and acked.
        assert asyncio.run(acked(port, "plug-big", dev["password"], bytes.fromhex(dev["key"])))
        health = cluster.health(0)
        assert health is not None and health["ready"], health
        assert cluster.status(0)["broker"]["consumer_sessions"] == 1
        # The control: a payload of max_frame_bytes goes through the broker
        # (a PUBACK), and the hub itself refuses it (zeros carry no valid HMAC).
        got = asyncio.run(oversized(port, "plug-big", dev["password"], FRAME))
        assert got.startswith("answered 40"), got
        wait_until(
            lambda: sum(cluster.status(0)["ingest"]["rejected"].values()) > sum(after.values()),
            30,
            "the hub to count the frame it was given",
        )
