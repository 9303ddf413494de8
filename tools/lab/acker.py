"""A stand-in hub for the edge alone: a real MQTT client that consumes
batches and acks them, with none of the hub's machinery.

It plays the hub where only the device is measured or tested (the edge
tests, `aiot bench edge`, the walkthrough): it subscribes to
``aiot/v1/+/up`` (and ``status``, ``ack``) on one or more brokers,
authenticates and decodes every batch with the official runtime, records
every sequence number it received, and answers each batch with a signed
``CommitAck`` carrying the highest contiguous sequence number seen so far for
that device. It keeps no state beyond memory: no Raft, no LMDB, no quorum.

    with Acker({"plug-1": key}, [port]) as acker:
        ...
        acker.wait_for("plug-1", 10_000)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError

# paho logs a lost broker connection at error level; the acker reconnects, so
# those lines stay out of stderr unless the application configures logging.
_LOG = logging.getLogger("aiot.acker")
_LOG.addHandler(logging.NullHandler())


def _quiet_broker_loss(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # aiomqtt leaves a failed future behind when a broker dies under it.
    if isinstance(context.get("exception"), aiomqtt.MqttError):
        return
    loop.default_exception_handler(context)


@dataclass
class DeviceLog:
    received: set[int] = field(default_factory=set)
    watermark: int = 0
    batches: int = 0
    duplicates: int = 0  # readings received more than once
    lost_before: int = 0  # the highest lost_before the device declared
    values: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    by_port: dict[int, int] = field(default_factory=dict)  # batches per broker
    watermark_at: float = 0.0  # time.monotonic() when the watermark last moved
    # time.monotonic() when the first CommitAck went out through each broker
    first_ack_at: dict[int, float] = field(default_factory=dict)


class Acker:
    def __init__(self, keys: dict[str, bytes], ports: Iterable[int], ack: bool = True) -> None:
        self.keys = keys
        self.ports = list(ports)
        self.ack = ack  # False: consume but never ack (a dead hub behind a live broker)
        self.logs: dict[str, DeviceLog] = {k: DeviceLog() for k in keys}
        self.rejected: list[str] = []
        self.statuses: list[tuple[str, Any]] = []
        self.results: list[m.CommandResult] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        # A client id of its own: two ackers on one broker (a test's and a
        # bench's, or one still stopping) must not take turns kicking each other.
        self._client_id = "acker-" + secrets.token_hex(4)

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Acker:
        self._thread = threading.Thread(target=self._run, name="acker", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("acker could not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def alive(self) -> bool:
        """The acker's thread is still running (after __exit__: it failed to stop)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_broker_loss)
        self._stop = asyncio.Event()
        subscribed = [asyncio.Event() for _ in self.ports]
        tasks = [
            asyncio.create_task(self._serve(port, ev), name=f"acker-{port}")
            for port, ev in zip(self.ports, subscribed, strict=True)
        ]

        async def ready() -> None:
            for ev in subscribed:
                await ev.wait()
            self._ready.set()

        waiter = asyncio.create_task(ready())
        await self._stop.wait()
        for t in [*tasks, waiter]:
            t.cancel()
        await asyncio.gather(*tasks, waiter, return_exceptions=True)

    async def _serve(self, port: int, subscribed: asyncio.Event) -> None:
        # Stay subscribed across broker restarts.
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", port, identifier=self._client_id, clean_session=True, logger=_LOG
                ) as client:
                    await client.subscribe(topics.subscription("up"), qos=1)
                    await client.subscribe(topics.subscription("status"), qos=1)
                    await client.subscribe(topics.subscription("ack"), qos=1)
                    subscribed.set()
                    async for msg in client.messages:
                        await self._handle(client, port, str(msg.topic), bytes(msg.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    async def _handle(self, client: aiomqtt.Client, port: int, topic: str, payload: bytes) -> None:
        try:
            device_id, channel = topics.parse(topic)
            key = self.keys[device_id]
            msg = wire.decode_frame(payload, key)
        except (topics.TopicError, KeyError, CodecError) as exc:
            with self._lock:
                self.rejected.append(f"{topic}: {exc}")
            return
        if channel == "status":
            with self._lock:
                self.statuses.append((device_id, msg))
            return
        if channel == "ack" and isinstance(msg, m.CommandResult):
            with self._lock:
                self.results.append(msg)
            return
        if not isinstance(msg, m.TelemetryBatch) or msg.device_id != device_id:
            with self._lock:
                self.rejected.append(f"{topic}: unexpected {type(msg).__name__}")
            return
        with self._lock:
            log = self.logs[device_id]
            log.batches += 1
            log.by_port[port] = log.by_port.get(port, 0) + 1
            for i, r in enumerate(msg.readings):
                seq = msg.first_seq + i
                if seq in log.received:
                    log.duplicates += 1
                log.received.add(seq)
                log.values[seq] = (r.sensor, msg.base_ts_ms + r.offset_ms, r.value)
            # A device that lost readings says so (protocol/README.md): the
            # watermark may move past the gap, as the hub's store does.
            declared = min(msg.lost_before, msg.first_seq) - 1 if msg.lost_before else 0
            if declared > log.watermark:
                log.watermark = declared
                log.lost_before = max(log.lost_before, msg.lost_before)
            if log.watermark + 1 in log.received:
                while log.watermark + 1 in log.received:
                    log.watermark += 1
                log.watermark_at = time.monotonic()
            watermark = log.watermark
        if self.ack:
            ack = m.CommitAck(device_id, watermark, int(time.time() * 1000))
            await client.publish(
                topics.topic(device_id, "down"), wire.seal(wire.encode(ack), key), qos=1
            )
            with self._lock:
                self.logs[device_id].first_ack_at.setdefault(port, time.monotonic())

    # -- queries (thread-safe) ----------------------------------------------------

    def watermark(self, device_id: str) -> int:
        with self._lock:
            return self.logs[device_id].watermark

    def latest(self, device_id: str, sensor: int) -> float | None:
        """The value of the newest reading of ``sensor`` received from the device."""
        with self._lock:
            values = self.logs[device_id].values
            found = [(seq, v[2]) for seq, v in values.items() if v[0] == sensor]
        return max(found)[1] if found else None

    def received(self, device_id: str) -> set[int]:
        with self._lock:
            return set(self.logs[device_id].received)

    def watermark_at(self, device_id: str) -> float:
        """time.monotonic() when the device's watermark last moved (0.0: never)."""
        with self._lock:
            return self.logs[device_id].watermark_at

    def first_ack_at(self, device_id: str, port: int) -> float | None:
        """time.monotonic() of the first CommitAck sent to the device through ``port``."""
        with self._lock:
            return self.logs[device_id].first_ack_at.get(port)

    def wait_for(self, device_id: str, watermark: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watermark(device_id) >= watermark:
                return
            time.sleep(0.05)
        raise AssertionError(
            f"{device_id}: watermark {self.watermark(device_id)} did not reach {watermark}"
            f" within {timeout}s"
        )
