"""Fuzzing a real hub daemon over MQTT: a one-node cluster (`aiot hub run`
with its own Mosquitto), and hypothesis-generated payloads published with a
registered device's own credentials on the topics its ACL allows it, ``up``,
``status`` and ``ack``: random bytes, its valid frames with bit flips,
truncations and extensions, frames signed with another device's key, another
device's authentic frames, and oversized payloads. None is authentic for the
topic, so none may change anything (docs/ARCHITECTURE.md invariant 5):

- the daemon stays up and ready, and its log holds no traceback;
- every message is accounted for: the node's reject counters for ``up``,
  ``status`` and ``ack`` grow by exactly what was published on each;
- the content hash is unchanged.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import running_cluster
from tests.fuzz.budget import Tally, fuzz_settings
from tests.support import wait_until

pytestmark = pytest.mark.cluster

NOW_MS = 1_763_700_000_000
UNLIMITED = "".join(
    f"device_{name} = 1000000\n"
    for name in (
        "batches_per_s",
        "batch_burst",
        "statuses_per_s",
        "status_burst",
        "results_per_s",
        "result_burst",
    )
)


def _frames(dev: str, key: bytes) -> dict[str, bytes]:
    """Authentic frames of each kind the device sends, as templates."""
    readings = tuple(m.Reading(i % 3, 100 * i, 100.0 + i) for i in range(12))
    status = m.DeviceStatus(dev, m.LinkState.ONLINE, "fuzz", 1, 2, 3, 4, 5, 6, 7, 0, ())
    result = m.CommandResult("c-1", dev, 1, m.CommandStatus.DONE, m.Reason.NONE, "", NOW_MS)
    return {
        "up": wire.seal(wire.encode(m.TelemetryBatch(dev, 1, 1, NOW_MS, readings)), key),
        "status": wire.seal(wire.encode(status), key),
        "ack": wire.seal(wire.encode(result), key),
    }


def _payload(
    data: st.DataObject, own: bytes, foreign_key: bytes, other: bytes
) -> tuple[str, bytes]:
    how = data.draw(
        st.sampled_from(
            ["flip", "truncate", "extend", "other_key", "other_device", "random", "oversized"]
        ),
        label="how",
    )
    if how == "flip":
        out = bytearray(own)
        for _ in range(data.draw(st.integers(1, 6), label="flips")):
            out[data.draw(st.integers(0, len(out) - 1), label="at")] ^= 1 << data.draw(
                st.integers(0, 7), label="bit"
            )
        if bytes(out) == own:
            out[-1] ^= 1
        return how, bytes(out)
    if how == "truncate":
        return how, own[: data.draw(st.integers(0, len(own) - 1), label="cut")]
    if how == "extend":
        return how, own + data.draw(st.binary(min_size=1, max_size=64), label="tail")
    if how == "other_key":  # the same envelope, sealed with another device's key
        return how, wire.seal(own[: -wire.TAG_SIZE], foreign_key)
    if how == "other_device":  # another device's authentic frame on this topic
        return how, other
    if how == "oversized":  # over max_frame_bytes, under the broker's max_packet_size
        return how, own + bytes(data.draw(st.integers(16 * 1024, 16 * 1024 + 512), label="size"))
    return how, data.draw(st.binary(max_size=2048), label="bytes")


def _counts(status: dict[str, Any]) -> dict[str, int]:
    return {
        "up": sum(status["ingest"]["rejected"].values()),
        "status": sum(status["status_rejected"].values()),
        "ack": sum(status["commands"]["rejected"].values()),
    }


async def _publish(dev: dict[str, Any], messages: list[tuple[str, bytes]]) -> None:
    host, port = dev["hubs"][0]
    async with aiomqtt.Client(
        host, int(port), username=dev["user"], password=dev["password"], identifier=dev["user"]
    ) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def test_fuzz_daemon_rejects_every_bad_message_and_stays_up(tmp_path: Path) -> None:
    tally = Tally("daemon")
    with running_cluster(tmp_path, nodes=1) as cluster:
        # Every message must reach the decoders: no per-device rate limit here
        # (tests/security/test_mqtt_stale.py and test_mqtt_flood.py test those).
        cluster.stop_node(0)
        cfg = cluster.configs[0]
        cfg.write_text(cfg.read_text().replace("[broker]\n", "[broker]\n" + UNLIMITED, 1))
        cluster.start_node(0)
        cluster.wait_node(0, 60)
        dev = cluster.add_device("plug-f")
        other = cluster.add_device("plug-g")
        key, other_key = bytes.fromhex(dev["key"]), bytes.fromhex(other["key"])
        own = _frames("plug-f", key)
        theirs = _frames("plug-g", other_key)
        # The broker reloads its credentials: wait until the device can connect.
        wait_until(lambda: _connects(dev), 30, "the device's credentials on the broker")
        before_hash = cluster.hashes()
        before = _counts(cluster.status(0))
        sent = {"up": 0, "status": 0, "ack": 0}

        @fuzz_settings(60)
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            tally.example()
            batch = []
            for _ in range(data.draw(st.integers(1, 20), label="messages")):
                channel = data.draw(st.sampled_from(["up", "up", "status", "ack"]), label="topic")
                how, payload = _payload(data, own[channel], other_key, theirs[channel])
                batch.append((channel, how, payload))
            # Counted once published: hypothesis may stop an example while drawing.
            asyncio.run(_publish(dev, [(topics.topic("plug-f", c), p) for c, _, p in batch]))
            for channel, how, _ in batch:
                tally.hit(f"{channel}:{how}")
                sent[channel] += 1

        one()

        deadline = time.monotonic() + 60
        while True:
            after = _counts(cluster.status(0))
            counted = {k: after[k] - before[k] for k in sent}
            if counted == sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert counted == sent, f"rejections counted {counted}, messages published {sent}"
        assert cluster.alive(0)
        health = cluster.health(0)
        assert health is not None and health["ready"]
        assert cluster.hashes() == before_hash
        log = cluster.log_path(0).read_text(errors="replace")
        assert "Traceback" not in log and "message handling failed" not in log
    tally.done()
    assert tally.inputs > 0


def _connects(dev: dict[str, Any]) -> bool:
    try:
        asyncio.run(_publish(dev, []))
    except aiomqtt.MqttError:
        return False
    return True
