"""`aiot bench ingest` and `aiot bench failover`: a hub cluster under load.

Both run a LocalCluster (tools/lab/cluster.py) on loopback: three `aiot hub run`
processes, each with its own Mosquitto, with the hub's default election
timeouts. Devices are registered through the cluster's API; each gets its
key, broker credentials and its own rendezvous order of hubs.

The load generator
------------------

A CPython harness in its own process (``python -m tools.bench_hub generate``;
``--generators`` splits the devices over several), driven by this module with
one JSON command per line on its stdin, one JSON answer per line on its
stdout. Per device it holds:

- one MQTT 3.1.1 connection with the device's own credentials (the broker's
  ACL lets a device publish only on its own topic), to the first hub of the
  device's list; a small asyncio protocol of its own, so that the harness
  spends as little of the machine's CPU as it can;
- its frames, built before the clock starts: signed TelemetryBatch frames of
  ``batch_readings`` readings with consecutive sequence numbers
  (``protocol/wire.py`` encode and seal; the template is encoded once per
  device and each frame patches first_seq and base_ts into a copy, which is
  checked byte for byte against ``wire.encode``), each already wrapped in its
  QoS 1 PUBLISH packet;
- a window of unacknowledged batches, as the edge uplink keeps
  (``edge/uplink.py``, default 4).

A batch counts as committed when a CommitAck (HMAC checked with the device
key) carries a watermark that covers it: the hub sends one only after the Raft
entry is committed and applied on the acking node. Every watermark move is
logged with its time, the readings it covers and the latest publish time of
the batches it covers; the figures below are computed from that log.

Modes: closed loop (each device sends whenever its window has room: the
maximum rate) or paced (the schedule releases batches round-robin over the
devices at a given total rate; a batch whose device has a full window waits,
and its latency from the schedule is reported too).

`aiot bench ingest`
-------------------

1. ``readings_per_s``: closed loop for ``warmup_s`` + ``duration_s``;
   readings committed during the last ``duration_s`` / ``duration_s``. No
   batch is ever resent: a batch that fails is simply never acknowledged, and
   the rejects and failures the hubs counted are reported.
2. ``ack_latency_ms_p50`` / ``_p99``: paced at half the rate of phase 1 for
   ``latency_s`` (after 2 s of warm-up), from each batch's publish to the
   CommitAck that covers it.
3. ``baseline_readings_per_s``: the cluster is stopped; each node is
   replaced by its stand-in, a process with the same Mosquitto (the hub's
   ``MosquittoSupervisor``: same generated config, credentials and ACL) and a
   plain aiomqtt subscriber that answers each batch with a signed CommitAck
   (no Raft, no store, no validation: it reads first_seq and the count from
   the frame). The same generator sends the same frames to the same node
   index, closed loop, timed the same way.

`aiot bench failover`
---------------------

Paced load at ``rate`` readings/s; the generator behaves as the edge does
when a hub goes away: when its broker connection drops it connects to the
next hub in its list and sends again from its watermark; when its watermark
has not moved for ``ack_timeout_ms`` it sends again from the watermark. After
``settle_s`` the leader is killed (SIGKILL; its Mosquitto dies with it).
Per kill:

- ``leader_kill_to_first_commit_s``: from the kill to the first CommitAck
  that covers a batch first published after the kill (a resent batch may
  have been committed before the kill: its ack died with the node);
- ``leader_kill_to_90pct_rate_s``: from the kill to the end of the first
  1-second window after the kill (windows start in 50 ms steps) in which the
  cluster committed at least 90% of what it committed per second over the
  ``pre_s`` seconds before the kill (so never under 1 s).

Then the node is restarted, the cluster waited for (every node ready, one
leader), and the next round starts after ``settle_s``.

CPU: for every process (hubs, their brokers, generators, stand-ins) the CPU
seconds it used during the measured window, in cores (CPU seconds / wall
seconds), from /proc.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import hashlib
import hmac
import json
import math
import os
import platform
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from protocol import messages as m
from protocol import topics, wire
from protocol.generated import aiot_generated as g
from tools.base.paths import ROOT
from tools.bench.codec import BenchError

HOST: Final = "127.0.0.1"
NODES: Final = 3
BATCH_READINGS: Final = 32  # the firmware's default batch_readings
WINDOW: Final = 4  # edge/uplink.py's default window
BASE_TS: Final = 1_763_700_000_000
BATCH_SPAN_MS: Final = 4_000  # base_ts step from one batch to the next
LATENCY_WARMUP_S: Final = 2.0
INGEST_BAR: Final = 20_000  # readings/s, 32-reading batches
P99_BAR_MS: Final = 250.0
FIRST_COMMIT_BAR_S: Final = 3.0
RECOVERY_WINDOW_S: Final = 1.0
RECOVERY_STEP_S: Final = 0.05
RECOVERY_SHARE: Final = 0.9

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- frames ------------------------------------------------------------------------------


def _rows(n: int) -> tuple[m.Reading, ...]:
    """The readings of every batch: power, energy, voltage of a plug, 333 ms apart."""
    return tuple(m.Reading(i % 3, 333 * (i // 3), (152.3, 4096.25, 229.8)[i % 3]) for i in range(n))


def _only(buf: bytes, needle: bytes) -> int:
    at = buf.find(needle)
    if at < 0 or buf.find(needle, at + 1) >= 0:
        raise BenchError("cannot locate a field in the TelemetryBatch template")
    return at


class FrameMaker:
    """One device's signed TelemetryBatch frames: batch ``k`` holds sequence
    numbers ``k * n + 1`` to ``(k + 1) * n``.

    The envelope is encoded once by ``wire.encode`` with marker values, and
    each frame is a copy with first_seq and base_ts written over the markers,
    then sealed; ``check`` compares a frame with ``wire.encode`` byte for byte.
    """

    _SEQ_MARK: Final = 0x5EC0_5EC0_5EC0_5EC1
    _TS_MARK: Final = 0x7150_7150_7150_7151

    def __init__(self, device_id: str, key: bytes, readings: int = BATCH_READINGS) -> None:
        self.device_id = device_id
        self.key = key
        self.n = readings
        self._rows = _rows(readings)
        tpl = wire.encode(m.TelemetryBatch(device_id, 1, self._SEQ_MARK, self._TS_MARK, self._rows))
        self._seq_at = _only(tpl, struct.pack("<Q", self._SEQ_MARK))
        self._ts_at = _only(tpl, struct.pack("<Q", self._TS_MARK))
        self._tpl = tpl
        self.topic = topics.topic(device_id, "up").encode()

    def batch(self, k: int) -> m.TelemetryBatch:
        return m.TelemetryBatch(
            self.device_id, 1, k * self.n + 1, BASE_TS + k * BATCH_SPAN_MS, self._rows
        )

    def envelope(self, k: int) -> bytes:
        buf = bytearray(self._tpl)
        struct.pack_into("<Q", buf, self._seq_at, k * self.n + 1)
        struct.pack_into("<Q", buf, self._ts_at, BASE_TS + k * BATCH_SPAN_MS)
        return bytes(buf)

    def frame(self, k: int) -> bytes:
        return wire.seal(self.envelope(k), self.key)

    def packet(self, k: int) -> bytes:
        """The QoS 1 PUBLISH packet carrying frame k (packet id from k)."""
        return publish_packet(self.topic, k % 0xFFFF + 1, self.frame(k))

    def check(self, k: int) -> None:
        if self.frame(k) != wire.seal(wire.encode(self.batch(k)), self.key):
            raise BenchError(f"frame {k} of {self.device_id} differs from wire.encode")


# -- MQTT 3.1.1 packets ------------------------------------------------------------------


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mstr(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def connect_packet(client_id: str, user: str, password: str, keepalive: int = 60) -> bytes:
    """CONNECT, clean session, with user name and password."""
    body = _mstr(b"MQTT") + bytes([4, 0xC2]) + struct.pack(">H", keepalive)
    body += _mstr(client_id.encode()) + _mstr(user.encode()) + _mstr(password.encode())
    return b"\x10" + _varlen(len(body)) + body


def subscribe_packet(pid: int, topic: str, qos: int = 1) -> bytes:
    body = struct.pack(">H", pid) + _mstr(topic.encode()) + bytes([qos])
    return b"\x82" + _varlen(len(body)) + body


def publish_packet(topic: bytes, pid: int, payload: bytes) -> bytes:
    """PUBLISH at QoS 1."""
    body = _mstr(topic) + struct.pack(">H", pid) + payload
    return b"\x32" + _varlen(len(body)) + body


_PINGREQ: Final = b"\xc0\x00"
_DISCONNECT: Final = b"\xe0\x00"


def ack_watermark(frame: bytes, key: bytes) -> int | None:
    """The watermark of a CommitAck frame signed with ``key``; None for
    anything else. The trailer is checked; the envelope is read in place
    (generated accessors), which is enough for a frame the key vouches for."""
    if len(frame) < wire.TAG_SIZE + 12:
        return None
    env = frame[: -wire.TAG_SIZE]
    tag = hmac.new(key, env, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, frame[-wire.TAG_SIZE :]):
        return None
    try:
        e = g.Envelope.GetRootAs(env, 0)
        if e.PayloadType() != int(m.PayloadType.CommitAck):
            return None
        tab = e.Payload()
        if tab is None:
            return None
        ack = g.CommitAck()
        ack.Init(tab.Bytes, tab.Pos)
        return int(ack.Watermark())
    except (IndexError, struct.error):
        return None


def batch_last_seq(frame: bytes) -> tuple[str, int] | None:
    """(device id, last seq) of a TelemetryBatch frame, read in place without
    any verification (the baseline's stand-in)."""
    try:
        e = g.Envelope.GetRootAs(frame, 0)
        tab = e.Payload()
        if tab is None:
            return None
        b = g.TelemetryBatch()
        b.Init(tab.Bytes, tab.Pos)
        dev = b.DeviceId()
        return (dev.decode() if isinstance(dev, bytes) else str(dev)), int(
            b.FirstSeq() + b.ReadingsLength() - 1
        )
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


# -- the generator (its own process) -----------------------------------------------------


class _Refused(Exception):
    pass


class _Dev:
    """One simulated device in the generator."""

    def __init__(self, spec: dict[str, Any], readings: int) -> None:
        self.id: str = spec["device_id"]
        self.key = bytes.fromhex(spec["key"])
        self.user: str = spec["user"]
        self.password: str = spec["password"]
        self.hubs: list[tuple[str, int]] = [(h, int(p)) for h, p in spec["hubs"]]
        self.hub_i = 0
        self.maker = FrameMaker(self.id, self.key, readings)
        self.packets: list[bytes] = []
        self.pub_t = array.array("d")  # last publish time of each batch
        self.first_t = array.array("d")  # first publish time of each batch (resends keep it)
        self.rel_t = array.array("d")  # when the schedule released it (paced mode)
        self.next = 0  # index of the next batch to send
        self.acked = 0  # batches covered by the watermark
        self.released = 0  # batches the schedule allows (closed loop: all)
        self.link: _Link | None = None
        self.progress = 0.0
        self.round = 0.0
        self.exhausted = False
        self.stats = dict.fromkeys(
            (
                "published",
                "stale_acks",
                "bad_acks",
                "odd_watermarks",
                "rewinds",
                "disconnects",
                "reconnects",
                "refused",
            ),
            0,
        )

    def build(self, total: int) -> None:
        have = len(self.packets)
        if total <= have:
            return
        for k in range(have, total):
            self.packets.append(self.maker.packet(k))
        for arr in (self.pub_t, self.first_t, self.rel_t):
            arr.extend(bytes(8 * (total - have)))
        for k in {have, (have + total) // 2, total - 1}:
            self.maker.check(k)


class _Link(asyncio.Protocol):
    """One device's MQTT connection: CONNECT, SUBSCRIBE to its down topic,
    then PUBLISH out and CommitAcks in."""

    def __init__(self, gen: Generator, dev: _Dev, ready: asyncio.Future[None]) -> None:
        self.gen = gen
        self.dev = dev
        self.ready = ready
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        dev = self.dev
        self.write(connect_packet(dev.id, dev.user, dev.password))

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
            self.sent_at = time.monotonic()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        i, n = 0, len(buf)
        while n - i >= 2:
            j, size, mult, complete = i + 1, 0, 1, False
            while j < n and j - i <= 4:  # the remaining length: 1 to 4 bytes
                byte = buf[j]
                j += 1
                size += (byte & 0x7F) * mult
                mult *= 128
                if not byte & 0x80:
                    complete = True
                    break
            if not complete or j + size > n:
                break
            self._packet(buf[i], j, j + size)
            i = j + size
        if i:
            del buf[:i]

    def _packet(self, head: int, start: int, end: int) -> None:
        buf = self.buf
        kind = head & 0xF0
        if kind == 0x30:  # PUBLISH: a CommitAck (or anything else on the down topic)
            tlen = (buf[start] << 8) | buf[start + 1]
            p = start + 2 + tlen
            if (head >> 1) & 3:
                self.write(b"\x40\x02" + bytes(buf[p : p + 2]))
                p += 2
            self.gen.on_down(self.dev, bytes(buf[p:end]))
        elif kind == 0x20:  # CONNACK
            rc = buf[start + 1] if end - start >= 2 else 255
            if rc != 0:
                if not self.ready.done():
                    self.ready.set_exception(_Refused(f"CONNACK {rc}"))
                return
            self.write(subscribe_packet(1, topics.topic(self.dev.id, "down")))
        elif kind == 0x90:  # SUBACK
            granted = buf[end - 1] if end > start + 2 else 0x80
            if not self.ready.done():
                if granted == 0x80:
                    self.ready.set_exception(_Refused("SUBACK refused"))
                else:
                    self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost"))
        if self.dev.link is self:
            self.dev.link = None
            self.gen.lost(self.dev)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.write(_DISCONNECT)
            self.transport.close()


class Generator:
    """The load generator's state and commands (one process)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.n: int = spec["batch_readings"]
        self.window: int = spec["window"]
        ack_timeout = spec.get("ack_timeout_s")
        self.ack_timeout: float | None = None if ack_timeout is None else float(ack_timeout)
        self.devs = [_Dev(d, self.n) for d in spec["devices"]]
        self.running = False
        self.closing = False
        self.paced = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._reset_log()

    def _reset_log(self) -> None:
        self.ev_t = array.array("d")  # when the watermark moved
        self.ev_n = array.array("q")  # readings newly covered
        self.ev_pub = array.array("d")  # latest first-publish time of the batches covered
        self.lat_pub = array.array("d")  # per batch covered: its publish time
        self.lat = array.array("d")  # ... ack time - publish time
        self.lat_rel = array.array("d")  # ... ack time - release time (paced), else -1

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- sending --

    def pump(self, dev: _Dev, now: float) -> None:
        link = dev.link
        if link is None or not self.running:
            return
        end = len(dev.packets)
        limit = min(dev.released, end, dev.acked + self.window)
        if dev.next >= limit:
            if dev.next >= end and dev.released > end:
                dev.exhausted = True
            return
        if dev.next == dev.acked:  # sending after idle or a rewind
            dev.progress = dev.round = now
        pub, first = dev.pub_t, dev.first_t
        for k in range(dev.next, limit):
            pub[k] = now
            if not first[k]:
                first[k] = now
        link.write(b"".join(dev.packets[dev.next : limit]))
        dev.stats["published"] += limit - dev.next
        dev.next = limit

    def on_down(self, dev: _Dev, payload: bytes) -> None:
        w = ack_watermark(payload, dev.key)
        if w is None:
            dev.stats["bad_acks"] += 1
            return
        k, odd = divmod(w, self.n)
        if odd:
            dev.stats["odd_watermarks"] += 1
        if k <= dev.acked:
            dev.stats["stale_acks"] += 1
            return
        now = time.monotonic()
        k = min(k, len(dev.packets))
        pub, rel, first = dev.pub_t, dev.rel_t, dev.first_t
        latest = 0.0
        for j in range(dev.acked, k):
            if first[j] > latest:
                latest = first[j]
            t = pub[j]
            if t > 0:
                self.lat_pub.append(t)
                self.lat.append(now - t)
                self.lat_rel.append(now - rel[j] if rel[j] > 0 else -1.0)
        self.ev_t.append(now)
        self.ev_n.append((k - dev.acked) * self.n)
        self.ev_pub.append(latest)
        dev.acked = k
        if dev.next < k:
            dev.next = k
        dev.progress = now
        self.pump(dev, now)

    async def _release(self, batches_per_s: float) -> None:
        """Paced mode: release batches round-robin over the devices on schedule."""
        t0 = time.monotonic()
        devs = self.devs
        nd = len(devs)
        total = 0
        while self.running:
            now = time.monotonic()
            due = int((now - t0) * batches_per_s)
            while total < due:
                dev = devs[total % nd]
                j = dev.released
                if j < len(dev.rel_t):
                    dev.rel_t[j] = t0 + total / batches_per_s
                dev.released = j + 1
                total += 1
                self.pump(dev, now)
            await asyncio.sleep(0.002)

    async def _watch(self) -> None:
        """Ack timeouts (failover mode) and keepalive pings."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for dev in self.devs:
                link = dev.link
                if link is None:
                    continue
                if now - link.sent_at > 20:
                    link.write(_PINGREQ)
                if (
                    self.running
                    and self.ack_timeout is not None
                    and dev.next > dev.acked
                    and now - max(dev.progress, dev.round) > self.ack_timeout
                ):
                    dev.next = dev.acked  # send again from the watermark
                    dev.round = now
                    dev.stats["rewinds"] += 1
                    self.pump(dev, now)

    # -- connections --

    async def _connect(self, dev: _Dev, i: int, timeout: float) -> bool:
        host, port = dev.hubs[i]
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        link = _Link(self, dev, ready)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: link, host, port)
                await ready
        except _Refused:
            dev.stats["refused"] += 1
            link.close()
            return False
        except (OSError, TimeoutError, ConnectionError):
            link.close()
            return False
        dev.link = link
        dev.hub_i = i
        return True

    async def _first_connect(self, dev: _Dev, deadline: float) -> None:
        while time.monotonic() < deadline:
            if await self._connect(dev, 0, 5.0):
                return
            await asyncio.sleep(0.2)  # the broker may not know the credentials yet
        raise BenchError(f"{dev.id} could not connect to {dev.hubs[0]}")

    def lost(self, dev: _Dev) -> None:
        if self.closing:
            return
        dev.stats["disconnects"] += 1
        self.spawn(self._reconnect(dev))

    async def _reconnect(self, dev: _Dev) -> None:
        """As the edge: the next hub in the device's list, then round again."""
        pause = 0.1
        while not self.closing:
            for step in range(len(dev.hubs)):
                i = (dev.hub_i + step) % len(dev.hubs)
                if await self._connect(dev, i, 2.0):
                    dev.stats["reconnects"] += 1
                    now = time.monotonic()
                    dev.next = dev.acked  # what was in flight may be lost: resend
                    dev.progress = dev.round = now
                    self.pump(dev, now)
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _close_links(self) -> None:
        self.closing = True
        for dev in self.devs:
            link, dev.link = dev.link, None
            if link is not None:
                link.close()
        await asyncio.sleep(0.1)
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.closing = False

    # -- commands --

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["cmd"]
        if name == "build":
            t0 = time.perf_counter()
            for dev in self.devs:
                dev.build(dev.next + int(cmd["batches"]) if cmd.get("more") else cmd["batches"])
            return {"seconds": time.perf_counter() - t0, "frames": len(self.devs[0].packets)}
        if name == "connect":
            await self._close_links()
            for dev in self.devs:
                dev.hubs = [(h, int(p)) for h, p in cmd["hubs"][dev.id]]
                dev.hub_i = 0
            deadline = time.monotonic() + float(cmd.get("timeout", 60))
            await asyncio.gather(*(self._first_connect(dev, deadline) for dev in self.devs))
            self.spawn(self._watch())
            return {"connected": len(self.devs)}
        if name == "start":
            return self._start(cmd.get("rate"), bool(cmd.get("reset")))
        if name == "stop":
            return await self._stop(float(cmd.get("drain_s", 5.0)))
        if name == "events":
            return self._events(float(cmd["since"]))
        if name == "disconnect":
            await self._close_links()
            return {}
        raise BenchError(f"unknown generator command {name!r}")

    def _start(self, rate: float | None, reset: bool) -> dict[str, Any]:
        self._reset_log()
        for dev in self.devs:
            if reset:
                dev.next = dev.acked = 0
                for arr in (dev.pub_t, dev.first_t, dev.rel_t):
                    arr[:] = array.array("d", bytes(8 * len(arr)))
            for s in ("published", "rewinds", "disconnects", "reconnects"):
                dev.stats[s] = 0
            dev.exhausted = False
            dev.released = dev.next if rate else sys.maxsize
        self.running = True
        self.paced = bool(rate)
        t0 = time.monotonic()
        if rate:
            self.spawn(self._release(float(rate) / self.n))
        else:
            for dev in self.devs:
                self.pump(dev, t0)
        return {"t0": t0}

    async def _stop(self, drain_s: float) -> dict[str, Any]:
        self.running = False
        stopped = time.monotonic()
        deadline = stopped + drain_s
        while time.monotonic() < deadline and any(d.next > d.acked for d in self.devs):
            await asyncio.sleep(0.02)
        totals: dict[str, int] = {}
        for dev in self.devs:
            for k, v in dev.stats.items():
                totals[k] = totals.get(k, 0) + v
        hubs: dict[str, int] = {}
        for dev in self.devs:
            if dev.link is not None:
                host, port = dev.hubs[dev.hub_i]
                key = f"{host}:{port}"
                hubs[key] = hubs.get(key, 0) + 1
        return {
            "stopped": stopped,
            "stats": totals,
            "unacked_batches": sum(d.next - d.acked for d in self.devs),
            "acked_batches": sum(d.acked for d in self.devs),
            "exhausted": sum(d.exhausted for d in self.devs),
            "connected_to": hubs,
            "events": self._events(0.0),
            "latency": {
                "pub": self.lat_pub.tolist(),
                "lat": self.lat.tolist(),
                "rel": self.lat_rel.tolist(),
            },
        }

    def _events(self, since: float) -> dict[str, Any]:
        i = bisect.bisect_right(self.ev_t, since)
        return {
            "t": self.ev_t[i:].tolist(),
            "n": self.ev_n[i:].tolist(),
            "pub": self.ev_pub[i:].tolist(),
        }


async def _generator_main() -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, "")

    threading.Thread(target=read_stdin, daemon=True, name="stdin").start()
    gen: Generator | None = None
    while True:
        line = await queue.get()
        if not line.strip():
            break
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "exit":
                break
            if cmd["cmd"] == "init":
                gen = Generator(cmd)
                reply: dict[str, Any] = {"devices": len(gen.devs)}
            else:
                assert gen is not None, "init first"
                reply = await gen.command(cmd)
            reply["ok"] = True
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if gen is not None:
        await gen._close_links()


# -- the baseline's stand-in for a hub node (its own process) -----------------------------


async def _baseline_node_main(config_path: str) -> None:
    import aiomqtt

    from hub.core.clock import wall_ms
    from hub.core.config import Address
    from hub.link.broker import BrokerUser, MosquittoSupervisor
    from hub.link.ingest import commit_ack

    cfg = json.loads(Path(config_path).read_text())
    users = [BrokerUser(n, p, r) for n, p, r in cfg["users"]]
    keys = {d: bytes.fromhex(k) for d, k in cfg["keys"].items()}
    broker = MosquittoSupervisor(Path(cfg["workdir"]), Address(HOST, int(cfg["port"])), users)
    await broker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    marks: dict[str, int] = {}
    slots = asyncio.Semaphore(512)  # as the hub's MAX_IN_HAND
    in_hand: set[asyncio.Task[None]] = set()

    async def one(client: aiomqtt.Client, payload: bytes) -> None:
        try:
            got = batch_last_seq(payload[: -wire.TAG_SIZE])
            if got is None or got[0] not in keys:
                return
            device_id, last = got
            w = marks[device_id] = max(marks.get(device_id, 0), last)
            ack = commit_ack(device_id, w, keys[device_id], wall_ms)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(ack.topic, ack.payload, qos=1)
        finally:
            slots.release()

    async def consume() -> None:
        user, password = cfg["hub_user"]
        async with aiomqtt.Client(
            HOST,
            int(cfg["port"]),
            username=user,
            password=password,
            identifier="baseline-consumer",
            clean_session=True,
        ) as client:
            await client.subscribe(topics.subscription("up"), qos=1)
            sys.stdout.write(json.dumps({"ready": True, "broker_pid": broker.pid}) + "\n")
            sys.stdout.flush()
            async for msg in client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                await slots.acquire()
                task = asyncio.create_task(one(client, payload))
                in_hand.add(task)
                task.add_done_callback(in_hand.discard)

    task = asyncio.create_task(consume())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    stopper.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)
    await broker.stop()


# -- analysis (pure functions over the generator's log) -------------------------------


def committed(events: dict[str, list[float]], t0: float, t1: float) -> int:
    """Readings whose CommitAck arrived in [t0, t1)."""
    return int(sum(n for t, n in zip(events["t"], events["n"], strict=True) if t0 <= t < t1))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise BenchError("no samples")
    s = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[rank - 1]


def first_commit_after(events: dict[str, list[float]], t_kill: float) -> float | None:
    """Seconds from t_kill to the first CommitAck covering a batch first
    published after it (a batch sent before and resent after does not count:
    it may have been committed before the kill, its ack lost with the node)."""
    for t, pub in zip(events["t"], events["pub"], strict=True):
        if pub > t_kill and t >= t_kill:
            return t - t_kill
    return None


def recovery_after(
    events: dict[str, list[float]],
    t_kill: float,
    rate: float,
    until: float,
    share: float = RECOVERY_SHARE,
    window: float = RECOVERY_WINDOW_S,
    step: float = RECOVERY_STEP_S,
) -> float | None:
    """Seconds from t_kill to the end of the first ``window`` that lies wholly
    after t_kill (starts in ``step`` steps) and committed at least ``share``
    x ``rate`` readings per second: when the commit rate over the last
    ``window`` was back. At least ``window``; None if no window that ends by
    ``until`` does."""
    times = events["t"]
    prefix = [0]
    for n in events["n"]:
        prefix.append(prefix[-1] + int(n))
    need = share * rate * window
    k = 0
    while True:
        start = t_kill + k * step
        if start + window > until:
            return None
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_left(times, start + window)
        if prefix[hi] - prefix[lo] >= need:
            return start + window - t_kill
        k += 1


def per_second(events: dict[str, list[float]], t0: float, t1: float) -> list[int]:
    """Readings committed in each whole second of [t0, t1)."""
    bins = [0] * max(0, int(t1 - t0))
    for t, n in zip(events["t"], events["n"], strict=True):
        i = int(t - t0)
        if t >= t0 and i < len(bins):
            bins[i] += int(n)
    return bins


def _slices(
    samples: Sequence[tuple[float, float]], t0: float, t1: float, step: float
) -> list[list[float]]:
    """The values of (time, value) samples in consecutive ``step``-second slices of [t0, t1)."""
    out: list[list[float]] = [[] for _ in range(max(1, math.ceil((t1 - t0) / step)))]
    for t, v in samples:
        if t0 <= t < t1:
            out[min(int((t - t0) / step), len(out) - 1)].append(v)
    return out


def _merge_events(parts: Sequence[dict[str, list[float]]]) -> dict[str, list[float]]:
    rows = sorted(
        (t, n, p) for e in parts for t, n, p in zip(e["t"], e["n"], e["pub"], strict=True)
    )
    return {"t": [r[0] for r in rows], "n": [r[1] for r in rows], "pub": [r[2] for r in rows]}


# -- processes, CPU, machine -------------------------------------------------------------


def _cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(parts[:8])
    idle = parts[3] + parts[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


class CpuMeter:
    """CPU used by named processes over a window, in cores. For the names in
    ``main_threads`` also the process's main thread alone (a hub's asyncio
    loop: MQTT, ingest, API; the rest of a hub is pysyncobj's thread: Raft,
    apply, LMDB)."""

    def __init__(self, pids: dict[str, int | None], main_threads: Sequence[str] = ()) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.main = [k for k in main_threads if k in self.pids]
        self.t0 = time.monotonic()
        self.start = {k: _cpu_seconds(v) for k, v in self.pids.items()}
        self.start_main = {k: _cpu_seconds(self.pids[k], self.pids[k]) for k in self.main}
        self.busy0 = _machine_busy()

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {}
        for k, pid in self.pids.items():
            a, b = self.start[k], _cpu_seconds(pid)
            out[k] = None if a is None or b is None else round((b - a) / wall, 3)
        threads: dict[str, Any] = {}
        for k in self.main:
            pid = self.pids[k]
            a, b = self.start_main[k], _cpu_seconds(pid, pid)
            threads[f"{k}-main-thread"] = (
                None if a is None or b is None else round((b - a) / wall, 3)
            )
        busy1 = _machine_busy()
        busy = (busy1[0] - self.busy0[0]) / wall
        ours = sum(v for v in out.values() if v is not None)
        out["all_of_the_above"] = round(ours, 3)
        out["machine_busy"] = round(busy, 3)
        # Whatever else ran on the machine meanwhile (the kernel's own work on
        # loopback traffic included): a figure taken with this high is suspect.
        out["other_processes"] = round(max(0.0, busy - ours), 3)
        out["machine_cores"] = os.cpu_count()
        out.update(threads)
        return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]) // 1024
    mosq = ""
    from hub.link.broker import find_mosquitto

    binary = find_mosquitto()
    if binary is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)
            mosq = (out.stdout or out.stderr).splitlines()[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": mosq,
    }


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


class Generators:
    """The generator processes, driven line by line."""

    MODULE = "tools.bench.hub"  # whose `generate` entry point the processes run

    def __init__(
        self,
        work: Path,
        devices: list[dict[str, Any]],
        procs: int,
        batch_readings: int,
        window: int,
        ack_timeout_s: float | None = None,
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        self.shares: list[float] = []
        groups = [devices[i::procs] for i in range(procs)]
        for i, group in enumerate(grp for grp in groups if grp):
            log = work / f"generator-{i}.log"
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", self.MODULE, "generate"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=ROOT,
                    env=_env(),
                )
            self.procs.append(proc)
            self.logs.append(log)
            self.shares.append(len(group) / len(devices))
            self._send(
                proc,
                {
                    "cmd": "init",
                    "devices": group,
                    "batch_readings": batch_readings,
                    "window": window,
                    "ack_timeout_s": ack_timeout_s,
                },
            )
        for i in range(len(self.procs)):
            self._answer(i, 60)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _send(self, proc: subprocess.Popen[str], cmd: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()

    def _answer(self, i: int, timeout: float) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            tail = self.logs[i].read_text(errors="replace").strip().splitlines()[-5:]
            what = "timed out" if not ready else f"exited ({proc.poll()})"
            raise BenchError(f"load generator {i} {what}: {' | '.join(tail)}")
        doc: dict[str, Any] = json.loads(line)
        if not doc.get("ok"):
            raise BenchError(f"load generator {i}: {doc.get('error')}")
        return doc

    def call(self, cmd: dict[str, Any], timeout: float = 120.0) -> list[dict[str, Any]]:
        for i, proc in enumerate(self.procs):
            one = dict(cmd)
            if cmd.get("rate"):
                one["rate"] = cmd["rate"] * self.shares[i]
            self._send(proc, one)
        return [self._answer(i, timeout) for i in range(len(self.procs))]

    def events(self, since: float) -> dict[str, list[float]]:
        return _merge_events(self.call({"cmd": "events", "since": since}))

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._send(proc, {"cmd": "exit"})
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Generators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _stand_ins(
    work: Path, devices: list[dict[str, Any]], nodes: int
) -> Iterator[tuple[list[int], list[int], list[int | None]]]:
    """The baseline's stand-in nodes: (broker ports, pids, broker pids)."""
    from hub.core import auth
    from tools.base.ports import free_port

    ports = [free_port() for _ in range(nodes)]
    procs: list[subprocess.Popen[str]] = []
    broker_pids: list[int | None] = []
    try:
        for i, port in enumerate(ports):
            home = work / f"stand-in-{i + 1}"
            home.mkdir(parents=True, exist_ok=True)
            hub_user = (auth.hub_user(f"stand-in-{i + 1}"), "stand-in-password-0123456789")
            users = [[d["user"], d["password"], "device"] for d in devices]
            users.append([*hub_user, "hub"])
            cfg = {
                "workdir": str(home / "broker"),
                "port": port,
                "users": users,
                "keys": {d["device_id"]: d["key"] for d in devices},
                "hub_user": hub_user,
            }
            (home / "config.json").write_text(json.dumps(cfg))
            with (home / "stand-in.log").open("w") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tools.bench.hub",
                            "baseline-node",
                            str(home / "config.json"),
                        ],
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        cwd=ROOT,
                        env=_env(),
                    )
                )
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline() if ready else ""
            if not line:
                log = work / f"stand-in-{i + 1}" / "stand-in.log"
                raise BenchError(f"baseline stand-in {i + 1} did not start: {_tail(log)}")
            broker_pids.append(json.loads(line).get("broker_pid"))
        yield ports, [p.pid for p in procs], broker_pids
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


# -- the cluster ---------------------------------------------------------------------------


def _election_ms() -> tuple[int, int]:
    from hub.core.config import RaftConfig

    fields = RaftConfig.__dataclass_fields__
    lo, hi = fields["election_min_ms"].default, fields["election_max_ms"].default
    assert isinstance(lo, int) and isinstance(hi, int)
    return lo, hi


def _start_cluster(work: Path, election_ms: tuple[int, int], say: Say) -> Any:
    from tools.lab.cluster import ClusterError, LocalCluster

    cluster = LocalCluster(work / "cluster", NODES, election_ms=election_ms)
    say(f"starting {NODES} hub nodes, each with its own Mosquitto")
    try:
        cluster.start(90)
    except ClusterError as exc:
        cluster.stop()
        raise BenchError(f"the cluster did not start: {exc}") from None
    return cluster


def _register(cluster: Any, count: int, say: Say) -> list[dict[str, Any]]:
    say(f"registering {count} devices through the API")
    out = []
    for k in range(count):
        out.append(cluster.add_device(f"bench-{k:03d}", owner="bench"))
    return out


def _node_pids(cluster: Any) -> dict[str, int | None]:
    pids: dict[str, int | None] = {}
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        name = cluster.node_id(i)
        pids[name] = cluster.procs[i].pid
        pids[f"{name}-mosquitto"] = cluster.status(i)["broker"]["pid"]
    return pids


def _hub_counters(cluster: Any) -> dict[str, Any]:
    rejected: dict[str, int] = {}
    failed: dict[str, int] = {}
    acked = 0
    commit = 0
    term = 0
    snapshots = 0
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        st = cluster.status(i)
        acked += st["ingest"]["acked"]
        for k, v in st["ingest"]["rejected"].items():
            rejected[k] = rejected.get(k, 0) + v
        for k, v in st["ingest"]["failed"].items():
            failed[k] = failed.get(k, 0) + v
        commit = max(commit, st["raft"]["commit_index"])
        term = max(term, st["raft"]["term"])
        snapshots += st["raft"]["snapshots_taken"]
    return {
        "acked": acked,
        "rejected": rejected,
        "failed": failed,
        "commit_index": commit,
        "term": term,
        "snapshots": snapshots,
    }


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(keys)
        if after.get(k, 0) - before.get(k, 0)
    }


def _raft_timing(cluster: Any) -> dict[str, Any]:
    from hub.core.config import load
    from hub.state.raft import raft_timing

    cfg = load(cluster.configs[0])
    return {
        "election_min_ms": cfg.raft.election_min_ms,
        "election_max_ms": cfg.raft.election_max_ms,
        **{f"pysyncobj_{k}_s": v for k, v in asdict(raft_timing(cfg.raft)).items()},
    }


class RaftWatch:
    """Polls every running node's status once a second from a thread, and
    keeps when a node took a snapshot or saw its Raft term rise (the moments
    latency tails are made of)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.seen: dict[int, tuple[int, int]] = {}
        self.marks: list[tuple[float, str, str]] = []  # (time.monotonic(), node, what)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raft-watch", daemon=True)

    def __enter__(self) -> RaftWatch:
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._poll()

    def _poll(self) -> None:
        from tools.base.hubclient import HubError

        for i in range(self.cluster.n):
            if not self.cluster.alive(i):
                continue
            try:
                raft = self.cluster.status(i)["raft"]
            except (HubError, KeyError):
                continue
            now = (int(raft["snapshots_taken"]), int(raft["term"]))
            before = self.seen.get(i)
            self.seen[i] = now
            if before is None:
                continue
            name = self.cluster.node_id(i)
            if now[0] > before[0]:
                self.marks.append((time.monotonic(), name, "snapshot"))
            if now[1] > before[1]:
                self.marks.append((time.monotonic(), name, f"term {now[1]}"))

    def between(self, t0: float, t1: float) -> list[str]:
        """'<seconds after t0> <node> <what>' for the marks in [t0, t1) (1 s polling)."""
        return [f"{t - t0:.0f} s {n} {w}" for t, n, w in self.marks if t0 <= t < t1]


def _batches_for(rate: float, seconds: float, devices: int, batch_readings: int) -> int:
    return math.ceil(rate * seconds / batch_readings / devices) + 2 * WINDOW


def _closed_loop(
    gens: Generators,
    warmup_s: float,
    duration_s: float,
    pids: dict[str, int | None],
    main_threads: Sequence[str] = (),
) -> dict[str, Any]:
    """Closed loop: warm up, measure, stop. The rate over the measured window."""
    gens.call({"cmd": "start", "rate": None, "reset": True})
    time.sleep(warmup_s)
    cpu = CpuMeter(pids, main_threads)
    w0 = time.monotonic()
    time.sleep(duration_s)
    w1 = time.monotonic()
    usage = cpu.read()
    stops = gens.call({"cmd": "stop"}, timeout=60)
    events = _merge_events([s["events"] for s in stops])
    n = committed(events, w0, w1)
    bins = per_second(events, w0, w1)
    stats: dict[str, int] = {}
    for s in stops:
        for k, v in s["stats"].items():
            stats[k] = stats.get(k, 0) + v
    lat = [
        x
        for s in stops
        for t, x in zip(s["latency"]["pub"], s["latency"]["lat"], strict=True)
        if w0 <= t < w1
    ]
    return {
        "w0": w0,
        "readings": n,
        "seconds": w1 - w0,
        "rate": n / (w1 - w0),
        "per_second_min": min(bins) if bins else 0,
        "per_second_max": max(bins) if bins else 0,
        "latency_ms_p50": round(percentile(lat, 50) * 1000, 1) if lat else None,
        "latency_ms_p99": round(percentile(lat, 99) * 1000, 1) if lat else None,
        "cpu": usage,
        "stats": stats,
        "unacked_at_end": sum(s["unacked_batches"] for s in stops),
        "exhausted": sum(s["exhausted"] for s in stops),
    }


# -- aiot bench ingest -----------------------------------------------------------------------


def ingest(
    duration_s: float = 60.0,
    latency_s: float = 30.0,
    devices: int = 48,
    batch_readings: int = BATCH_READINGS,
    window: int = WINDOW,
    warmup_s: float = 5.0,
    generators: int = 1,
    max_rate: float = 80_000.0,
    baseline: bool = True,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Committed readings per second, ack latency at half that rate, and the
    bare-broker baseline; one JSON-ready dict."""
    from hub.link.broker import INSTALL_HINT, find_mosquitto

    if find_mosquitto() is None:
        raise BenchError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    if devices < 1 or batch_readings < 1 or window < 1 or generators < 1:
        raise BenchError("devices, batch readings, window and generators must be at least 1")
    if duration_s <= 0 or latency_s <= 0 or warmup_s < 0:
        raise BenchError("durations must be positive")
    election = _election_ms()
    work = Path(tempfile.mkdtemp(prefix="aiot-bench-ingest-"))
    try:
        cluster = _start_cluster(work, election, say)
        try:
            creds = _register(cluster, devices, say)
            timing = _raft_timing(cluster)
            with Generators(work, creds, generators, batch_readings, window) as gens:
                per_dev = _batches_for(max_rate, warmup_s + duration_s, devices, batch_readings)
                say(f"pre-building {per_dev * devices} signed frames ({per_dev} per device)")
                built = gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
                build_s = max(b["seconds"] for b in built)
                say("connecting every device to the first hub of its list")
                gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
                before = _hub_counters(cluster)
                watch = RaftWatch(cluster).__enter__()
                pids = {
                    **_node_pids(cluster),
                    **{f"generator-{i}": p for i, p in enumerate(gens.pids)},
                }
                say(
                    f"phase 1: closed loop, window {window}, "
                    f"{warmup_s:g} s warm-up + {duration_s:g} s"
                )
                hubs = [f"hub-{i + 1}" for i in range(NODES)]
                p1 = _closed_loop(gens, warmup_s, duration_s, pids, hubs)
                mid = _hub_counters(cluster)
                rate = p1["rate"]
                if rate <= 0:
                    raise BenchError("nothing was committed in phase 1: see the hub logs")
                half = rate / 2
                more = _batches_for(half, LATENCY_WARMUP_S + latency_s + 5, devices, batch_readings)
                say(
                    f"phase 2: paced at {half:,.0f} readings/s "
                    f"(half of {rate:,.0f}) for {latency_s:g} s"
                )
                gens.call({"cmd": "build", "batches": more, "more": True}, timeout=600)
                gens.call({"cmd": "start", "rate": half, "reset": False})
                time.sleep(LATENCY_WARMUP_S)
                cpu2 = CpuMeter(pids, hubs)
                w0 = time.monotonic()
                time.sleep(latency_s)
                w1 = time.monotonic()
                cpu2_use = cpu2.read()
                stops = gens.call({"cmd": "stop"}, timeout=60)
                watch.__exit__(None, None, None)
                after = _hub_counters(cluster)
                events2 = _merge_events([s["events"] for s in stops])
                lat_pub = [x for s in stops for x in s["latency"]["pub"]]
                lat = [x for s in stops for x in s["latency"]["lat"]]
                lat_rel = [x for s in stops for x in s["latency"]["rel"]]
                sel = [i for i, t in enumerate(lat_pub) if w0 <= t < w1]
                lat_ms = [lat[i] * 1000 for i in sel]
                lat_sel = [(lat_pub[i], lat[i] * 1000) for i in sel]
                rel_ms = [lat_rel[i] * 1000 for i in sel if lat_rel[i] >= 0]
                if not lat_ms:
                    raise BenchError("no batch was acknowledged in phase 2")
                p2_rate = committed(events2, w0, w1) / (w1 - w0)
                unacked2 = sum(s["unacked_batches"] for s in stops)
                gens.call({"cmd": "disconnect"})
                cluster.stop()
                base: dict[str, Any] | None = None
                if baseline:
                    say(
                        "baseline: the same frames through the same Mosquitto setup "
                        "to a plain subscriber"
                    )
                    with _stand_ins(work, creds, NODES) as (ports, sp, bp):
                        by_port = {cluster.ports[i].broker: ports[i] for i in range(NODES)}
                        routes = {
                            d["device_id"]: [[h, by_port[int(p)]] for h, p in d["hubs"]]
                            for d in creds
                        }
                        # The bare path runs faster: frames for up to 8 times the hub's rate.
                        per_dev = _batches_for(
                            max(max_rate, 8 * rate), warmup_s + duration_s, devices, batch_readings
                        )
                        gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
                        gens.call({"cmd": "connect", "hubs": routes})
                        bpids: dict[str, int | None] = {
                            **{f"stand-in-{i + 1}": p for i, p in enumerate(sp)},
                            **{f"stand-in-{i + 1}-mosquitto": p for i, p in enumerate(bp)},
                            **{f"generator-{i}": p for i, p in enumerate(gens.pids)},
                        }
                        say(f"baseline: closed loop, {warmup_s:g} s warm-up + {duration_s:g} s")
                        stand_ins = [f"stand-in-{i + 1}" for i in range(NODES)]
                        base = _closed_loop(gens, warmup_s, duration_s, bpids, stand_ins)
                        gens.call({"cmd": "disconnect"})
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rejects_1 = _diff(mid["rejected"], before["rejected"])
    failures_1 = _diff(mid["failed"], before["failed"])
    rejects = _diff(after["rejected"], before["rejected"])
    failures = _diff(after["failed"], before["failed"])
    acked_batches = after["acked"] - before["acked"]
    entries = mid["commit_index"] - before["commit_index"]
    p50 = round(percentile(lat_ms, 50), 1)
    p99 = round(percentile(lat_ms, 99), 1)
    base_rate = None if base is None else base["rate"]
    result: dict[str, Any] = {
        "bench": "ingest",
        "readings_per_s": round(rate, 1),
        "ack_latency_ms_p50": p50,
        "ack_latency_ms_p99": p99,
        "baseline_readings_per_s": None if base_rate is None else round(base_rate, 1),
        "ratio": None if not base_rate else round(rate / base_rate, 4),
        "bars": {
            "readings_per_s_at_least_20000": rate >= INGEST_BAR,
            "ack_latency_ms_p99_at_most_250": p99 <= P99_BAR_MS,
        },
        "nodes": NODES,
        "devices": devices,
        "batch_readings": batch_readings,
        "window": window,
        "generators": generators,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "rejects": rejects,
        "failures": failures,
        "throughput": {
            "readings": p1["readings"],
            "seconds": round(p1["seconds"], 3),
            "per_second_min": p1["per_second_min"],
            "per_second_max": p1["per_second_max"],
            "ack_latency_ms_p50_at_max": p1["latency_ms_p50"],
            "ack_latency_ms_p99_at_max": p1["latency_ms_p99"],
            "batches_published": p1["stats"]["published"],
            "unacked_batches_at_end": p1["unacked_at_end"],
            "devices_out_of_frames": p1["exhausted"],
            "disconnects": p1["stats"]["disconnects"],
            "rejects": rejects_1,
            "failures": failures_1,
            "raft_entries": entries,
            "raft_events": watch.between(p1["w0"], p1["w0"] + p1["seconds"]),
            "batches_per_raft_entry": round((mid["acked"] - before["acked"]) / entries, 2)
            if entries
            else None,
            "cpu_cores": p1["cpu"],
        },
        "latency": {
            "offered_readings_per_s": round(half, 1),
            "committed_readings_per_s": round(p2_rate, 1),
            "seconds": round(w1 - w0, 3),
            "samples": len(lat_ms),
            "ack_latency_ms_p90": round(percentile(lat_ms, 90), 1),
            "ack_latency_ms_max": round(max(lat_ms), 1),
            "raft_events": watch.between(w0, w1),
            "ack_latency_ms_p99_by_5s": [
                round(percentile(part, 99), 1) if part else None
                for part in _slices(lat_sel, w0, w1, 5.0)
            ],
            "from_schedule_ms_p50": round(percentile(rel_ms, 50), 1) if rel_ms else None,
            "from_schedule_ms_p99": round(percentile(rel_ms, 99), 1) if rel_ms else None,
            "unacked_batches_at_end": unacked2,
            "cpu_cores": cpu2_use,
        },
        "acked_batches_by_hubs": acked_batches,
        "raft_term_increase": after["term"] - before["term"],
        "raft_snapshots_taken": after["snapshots"] - before["snapshots"],
        "election": timing,
        "frame_build_s": round(build_s, 2),
        "machine": machine(),
        "note": (
            "readings_per_s: readings covered by CommitAck watermarks during the measured "
            "window, closed loop with a window of unacknowledged batches per device, nothing "
            "resent; latency: publish to the covering CommitAck, paced at half that rate; "
            "baseline: the same generator and frames through the same Mosquitto setup to a "
            "plain aiomqtt subscriber that acks every batch (no Raft, store or validation); "
            "cpu_cores: CPU seconds / wall seconds per process over the measured window"
        ),
    }
    if base is not None:
        result["baseline"] = {
            "readings": base["readings"],
            "seconds": round(base["seconds"], 3),
            "per_second_min": base["per_second_min"],
            "per_second_max": base["per_second_max"],
            "ack_latency_ms_p50": base["latency_ms_p50"],
            "ack_latency_ms_p99": base["latency_ms_p99"],
            "unacked_batches_at_end": base["unacked_at_end"],
            "devices_out_of_frames": base["exhausted"],
            "cpu_cores": base["cpu"],
        }
    return result


# -- aiot bench failover -------------------------------------------------------------------


def failover(
    kills: int = 5,
    rate: float = 10_000.0,
    devices: int = 48,
    batch_readings: int = BATCH_READINGS,
    window: int = WINDOW,
    ack_timeout_ms: int = 5000,
    settle_s: float = 10.0,
    pre_s: float = 5.0,
    observe_s: float = 30.0,
    generators: int = 1,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Kill the leader ``kills`` times under paced load; one JSON-ready dict."""
    from hub.link.broker import INSTALL_HINT, find_mosquitto

    if find_mosquitto() is None:
        raise BenchError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    if kills < 1 or devices < 1 or rate <= 0 or window < 1 or generators < 1:
        raise BenchError("kills, devices, rate, window and generators must be positive")
    if pre_s <= 0 or pre_s > settle_s:
        raise BenchError("pre_s must be positive and at most settle_s")
    election = _election_ms()
    work = Path(tempfile.mkdtemp(prefix="aiot-bench-failover-"))
    first: list[float | None] = []
    recover: list[float | None] = []
    pre_rates: list[float] = []
    victims: list[str] = []
    restarts: list[float] = []
    try:
        cluster = _start_cluster(work, election, say)
        try:
            creds = _register(cluster, devices, say)
            timing = _raft_timing(cluster)
            with Generators(
                work, creds, generators, batch_readings, window, ack_timeout_ms / 1000
            ) as gens:
                budget = settle_s + kills * (observe_s + 90 + settle_s)
                per_dev = _batches_for(rate, budget, devices, batch_readings)
                say(f"pre-building {per_dev * devices} signed frames ({per_dev} per device)")
                gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
                gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
                before = _hub_counters(cluster)
                say(f"paced load at {rate:,.0f} readings/s over {devices} devices")
                gens.call({"cmd": "start", "rate": rate, "reset": True})
                t_begin = time.monotonic()
                time.sleep(settle_s)
                for k in range(kills):
                    victim = _leader_now(cluster)
                    victims.append(cluster.node_id(victim))
                    say(f"kill {k + 1}/{kills}: SIGKILL to the leader {cluster.node_id(victim)}")
                    t_kill = time.monotonic()
                    cluster.kill(victim)
                    fc, rc, pre = _observe(gens, t_kill, pre_s, observe_s)
                    first.append(fc)
                    recover.append(rc)
                    pre_rates.append(pre)
                    say(
                        f"  first commit after {_fmt(fc)} s, 90% of {pre:,.0f} readings/s "
                        f"after {_fmt(rc)} s; restarting {cluster.node_id(victim)}"
                    )
                    t_r = time.monotonic()
                    cluster.start_node(victim)
                    cluster.wait_ready(120)
                    restarts.append(round(time.monotonic() - t_r, 3))
                    time.sleep(settle_s)
                stops = gens.call({"cmd": "stop"}, timeout=60)
                t_end = time.monotonic()
                after = _hub_counters(cluster)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    stats: dict[str, int] = {}
    for s in stops:
        for key, v in s["stats"].items():
            stats[key] = stats.get(key, 0) + v
    events = _merge_events([s["events"] for s in stops])
    got_first = [x for x in first if x is not None]
    got_rec = [x for x in recover if x is not None]
    med_first = _median(got_first) if len(got_first) == len(first) else None
    med_rec = _median(got_rec) if len(got_rec) == len(recover) else None
    return {
        "bench": "failover",
        "leader_kill_to_first_commit_s": None if med_first is None else round(med_first, 3),
        "leader_kill_to_90pct_rate_s": None if med_rec is None else round(med_rec, 3),
        "first_commit_samples_s": [None if x is None else round(x, 3) for x in first],
        "rate_90pct_samples_s": [None if x is None else round(x, 3) for x in recover],
        "bars": {
            "leader_kill_to_first_commit_s_at_most_3": med_first is not None
            and med_first <= FIRST_COMMIT_BAR_S,
        },
        "kills": kills,
        "killed": victims,
        "pre_kill_readings_per_s": [round(x, 1) for x in pre_rates],
        "restart_to_ready_s": restarts,
        "offered_readings_per_s": rate,
        "committed_readings_per_s_overall": round(
            committed(events, t_begin, t_end) / (t_end - t_begin), 1
        ),
        "nodes": NODES,
        "devices": devices,
        "batch_readings": batch_readings,
        "window": window,
        "ack_timeout_ms": ack_timeout_ms,
        "settle_s": settle_s,
        "pre_kill_window_s": pre_s,
        "election": timing,
        "generator": {
            "batches_published": stats.get("published", 0),
            "rewinds_after_ack_timeout": stats.get("rewinds", 0),
            "disconnects": stats.get("disconnects", 0),
            "reconnects": stats.get("reconnects", 0),
            "unacked_batches_at_end": sum(s["unacked_batches"] for s in stops),
            "devices_out_of_frames": sum(s["exhausted"] for s in stops),
            "connected_to_at_end": {k: v for s in stops for k, v in s["connected_to"].items()},
        },
        "rejects": _diff(after["rejected"], before["rejected"]),
        "failures": _diff(after["failed"], before["failed"]),
        "raft_term_increase": after["term"] - before["term"],
        "machine": machine(),
        "note": (
            "first commit: kill to the first CommitAck covering a batch first published after "
            "the kill; 90% rate: kill to the end of the first 1 s window after the kill (50 ms "
            "steps) that committed at least 90% of the rate over the pre-kill window; devices "
            "fail over to the next hub of their list and resend from their watermark on "
            "reconnect or after ack_timeout_ms without progress, as the edge does"
        ),
    }


def _leader_now(cluster: Any) -> int:
    """The node that says it leads (not only what another node last heard)."""
    from tools.lab.cluster import ClusterError

    for _ in range(100):
        with contextlib.suppress(ClusterError):
            i = int(cluster.leader())
            h = cluster.health(i)
            if h is not None and str(h.get("leader") or "").endswith(f":{cluster.ports[i].raft}"):
                return i
        time.sleep(0.05)
    raise BenchError("no node says it leads")


def _observe(
    gens: Generators, t_kill: float, pre_s: float, observe_s: float
) -> tuple[float | None, float | None, float]:
    """Poll the generators until both failover figures are known (or observe_s)."""
    fc: float | None = None
    rc: float | None = None
    pre = 0.0
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        ev = gens.events(t_kill - pre_s)
        pre = committed(ev, t_kill - pre_s, t_kill) / pre_s
        fc = first_commit_after(ev, t_kill)
        rc = recovery_after(ev, t_kill, pre, now) if pre > 0 else None
        if (fc is not None and rc is not None) or now - t_kill > observe_s:
            return fc, rc, pre


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: list[str]) -> int:
    """Entry point of the helper processes: `generate` and `baseline-node CONFIG`."""
    if argv[:1] == ["generate"]:
        asyncio.run(_generator_main())
        return 0
    if argv[:1] == ["baseline-node"] and len(argv) == 2:
        asyncio.run(_baseline_node_main(argv[1]))
        return 0
    print("usage: python -m tools.bench_hub generate | baseline-node CONFIG", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
