"""A device played over raw MQTT: its signed frames, made with its real key
(from the registry's answer), and a connection to a hub node's broker with
its real login, as a device or an attacker holding a device's secrets would
make them. The security tests and `aiot bench flood` use it; the firmware
itself runs under MicroPython elsewhere (tools/lab/device.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import aiomqtt

from protocol import messages as m
from protocol import topics, wire

BASE_TS: Final = 1_763_700_000_000
ACK_WAIT_S: Final = 30.0


def batch(device_id: str, first: int, n: int, key: bytes) -> bytes:
    """A signed TelemetryBatch of ``n`` readings from seq ``first``."""
    readings = tuple(m.Reading(2, i * 10, float(i)) for i in range(n))
    msg = m.TelemetryBatch(device_id, 1, first, BASE_TS + first * 10, readings, 0)
    return wire.seal(wire.encode(msg), key)


def status(
    device_id: str, key: bytes, boot_epoch: int, uptime_s: int, online: bool = True
) -> bytes:
    """A signed DeviceStatus, online or offline."""
    state = m.LinkState.ONLINE if online else m.LinkState.OFFLINE
    msg = m.DeviceStatus(device_id, state, "test", boot_epoch, uptime_s if online else 0)
    return wire.seal(wire.encode(msg), key)


def result(device_id: str, key: bytes, command_id: str, seq: int) -> bytes:
    """A signed CommandResult saying ``command_id`` was done."""
    msg = m.CommandResult(command_id, device_id, seq, m.CommandStatus.DONE, m.Reason.NONE, "", 1)
    return wire.seal(wire.encode(msg), key)


def client(port: int, user: str, password: str, identifier: str, **kw: Any) -> aiomqtt.Client:
    """An MQTT connection to the broker on 127.0.0.1:``port``."""
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


class NoCommitAck(Exception):
    """A batch got no CommitAck within ACK_WAIT_S."""


class TimedDevice:
    """A well-behaved device: publishes one batch at a time and times how long
    its CommitAck takes (the commit-ack latency)."""

    def __init__(self, port: int, device_id: str, password: str, key: bytes) -> None:
        self.port, self.device_id, self.password, self.key = port, device_id, password, key
        self.next_seq = 1

    async def run(self, rounds: int, stop: asyncio.Event | None = None) -> list[float]:
        """Up to ``rounds`` batches (fewer once ``stop`` is set): each one's
        seconds from publish to the CommitAck that covers it."""
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
                try:
                    async with asyncio.timeout(ACK_WAIT_S):
                        while True:
                            msg = await anext(messages)
                            ack = wire.decode_frame(bytes(msg.payload), self.key)
                            if isinstance(ack, m.CommitAck) and ack.watermark >= first + 7:
                                break
                except TimeoutError:
                    raise NoCommitAck(
                        f"{self.device_id}: no CommitAck for seq {first} within {ACK_WAIT_S:.0f} s"
                    ) from None
                out.append(time.perf_counter() - t0)
                self.next_seq = first + 8
        return out
