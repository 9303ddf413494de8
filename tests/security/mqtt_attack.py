"""What the MQTT attack tests share: signed frames of a device (its real key,
from the registry's answer), and raw MQTT connections to a hub node's broker
as an attacker outside the hub would make them."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiomqtt
import httpx

from protocol import messages as m
from protocol import topics, wire
from tools.lab.cluster import LocalCluster

BASE_TS = 1_763_700_000_000


def batch(device_id: str, first: int, n: int, key: bytes) -> bytes:
    readings = tuple(m.Reading(2, i * 10, float(i)) for i in range(n))
    msg = m.TelemetryBatch(device_id, 1, first, BASE_TS + first * 10, readings, 0)
    return wire.seal(wire.encode(msg), key)


def status(
    device_id: str, key: bytes, boot_epoch: int, uptime_s: int, online: bool = True
) -> bytes:
    state = m.LinkState.ONLINE if online else m.LinkState.OFFLINE
    msg = m.DeviceStatus(device_id, state, "test", boot_epoch, uptime_s if online else 0)
    return wire.seal(wire.encode(msg), key)


def result(device_id: str, key: bytes, command_id: str, seq: int) -> bytes:
    msg = m.CommandResult(command_id, device_id, seq, m.CommandStatus.DONE, m.Reason.NONE, "", 1)
    return wire.seal(wire.encode(msg), key)


def client(port: int, user: str, password: str, identifier: str, **kw: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, username=user, password=password, identifier=identifier, **kw
    )


def can_login(port: int, user: str, password: str) -> bool:
    """Whether the broker takes the login yet (it learns new devices on a reload)."""

    async def attempt() -> bool:
        try:
            async with client(port, user, password, user):
                return True
        except aiomqtt.MqttError:
            return False

    return asyncio.run(attempt())


def metric(cluster: LocalCluster, i: int, name: str, label: str) -> float:
    """One sample of node i's GET /metrics (0 when absent)."""
    text = httpx.get(cluster.client(i).url + "/metrics", timeout=15).text
    pat = re.compile(rf'^{re.escape(name)}\{{reason="{re.escape(label)}"\}} (\S+)$', re.M)
    found = pat.search(text)
    return 0.0 if found is None else float(found.group(1))


def gauge(cluster: LocalCluster, i: int, name: str) -> float:
    """One unlabelled sample of node i's GET /metrics."""
    text = httpx.get(cluster.client(i).url + "/metrics", timeout=15).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


class Acker:
    """A well-behaved device, simulated: publishes one batch at a time and
    times how long its CommitAck takes (the commit-ack latency)."""

    def __init__(self, port: int, device_id: str, password: str, key: bytes) -> None:
        self.port, self.device_id, self.password, self.key = port, device_id, password, key
        self.next_seq = 1

    async def run(self, rounds: int, stop: asyncio.Event | None = None) -> list[float]:
        out: list[float] = []
        down = topics.topic(self.device_id, "down")
        up = topics.topic(self.device_id, "up")
        async with client(self.port, self.device_id, self.password, self.device_id) as c:
            await c.subscribe(down, qos=1)
            messages = aiter(c.messages)
            for _ in range(rounds):
                if stop is not None and stop.is_set():
                    break
                first = self.next_seq
                t0 = time.perf_counter()
                await c.publish(up, batch(self.device_id, first, 8, self.key), qos=1)
                async with asyncio.timeout(30):
                    while True:
                        msg = await anext(messages)
                        ack = wire.decode_frame(bytes(msg.payload), self.key)
                        if isinstance(ack, m.CommitAck) and ack.watermark >= first + 7:
                            break
                out.append(time.perf_counter() - t0)
                self.next_seq = first + 8
        return out


def p99(samples: list[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * 0.99))]
