"""The load generator: one process simulating many devices, driven by JSON lines.

``python -m tools.bench.hub generate`` runs ``serve()``: one JSON command per
line on stdin, one JSON answer per line on stdout (tools/bench/load.py's
``Generators`` drives it). Per device it holds:

- one MQTT 3.1.1 connection with the device's own credentials (the broker's
  ACL lets a device publish only on its own topic), to the first hub of the
  device's list; a small asyncio protocol of its own, so that the harness
  spends as little of the machine's CPU as it can;
- its frames, built before the clock starts (tools/bench/frames.py), each
  already wrapped in its QoS 1 PUBLISH packet;
- a window of unacknowledged batches, as the edge uplink keeps
  (``edge/uplink.py``, default 4).

A batch counts as committed when a CommitAck (HMAC checked with the device
key) carries a watermark that covers it: the hub sends one only after the Raft
entry is committed and applied on the acking node. Every watermark move is
logged with its time, the readings it covers and the latest publish time of
the batches it covers; the benchmarks' figures are computed from that log
(tools/bench/figures.py).

Modes: closed loop (each device sends whenever its window has room: the
maximum rate) or paced (the schedule releases batches round-robin over the
devices at a given total rate; a batch whose device has a full window waits,
and its latency from the schedule is reported too). With ``ack_timeout_s``
the devices behave as the edge does when a hub goes away: when the broker
connection drops they connect to the next hub of their list and send again
from their watermark; when the watermark has not moved for that long they
send again from it.

Commands: ``init`` (the devices), ``build``, ``connect``, ``start``, ``stop``,
``events``, ``disconnect``, ``exit``.
"""

from __future__ import annotations

import array
import asyncio
import bisect
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from protocol import topics
from tools.base import mqttwire
from tools.bench import frames
from tools.bench.codec import BenchError


class _Refused(Exception):
    pass


class SimDevice:
    """One simulated device in the generator."""

    def __init__(self, spec: dict[str, Any], readings: int) -> None:
        self.id: str = spec["device_id"]
        self.key = bytes.fromhex(spec["key"])
        self.user: str = spec["user"]
        self.password: str = spec["password"]
        self.hubs: list[tuple[str, int]] = [(h, int(p)) for h, p in spec["hubs"]]
        self.hub_i = 0
        self.maker = frames.FrameMaker(self.id, self.key, readings)
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

    def __init__(self, gen: Generator, dev: SimDevice, ready: asyncio.Future[None]) -> None:
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
        self.write(mqttwire.connect(dev.id, dev.user, dev.password))

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
            self.write(mqttwire.subscribe(1, topics.topic(self.dev.id, "down")))
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
                self.transport.write(mqttwire.DISCONNECT)
            self.transport.close()


class Generator:
    """The load generator's state and commands (one process)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.n: int = spec["batch_readings"]
        self.window: int = spec["window"]
        ack_timeout = spec.get("ack_timeout_s")
        self.ack_timeout: float | None = None if ack_timeout is None else float(ack_timeout)
        self.devs = [SimDevice(d, self.n) for d in spec["devices"]]
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

    def pump(self, dev: SimDevice, now: float) -> None:
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

    def on_down(self, dev: SimDevice, payload: bytes) -> None:
        w = frames.ack_watermark(payload, dev.key)
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
                    link.write(mqttwire.PINGREQ)
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

    async def _connect(self, dev: SimDevice, i: int, timeout: float) -> bool:
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

    async def _first_connect(self, dev: SimDevice, deadline: float) -> None:
        while time.monotonic() < deadline:
            if await self._connect(dev, 0, 5.0):
                return
            await asyncio.sleep(0.2)  # the broker may not know the credentials yet
        raise BenchError(f"{dev.id} could not connect to {dev.hubs[0]}")

    def lost(self, dev: SimDevice) -> None:
        if self.closing:
            return
        dev.stats["disconnects"] += 1
        self.spawn(self._reconnect(dev))

    async def _reconnect(self, dev: SimDevice) -> None:
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


async def serve(make: Callable[[dict[str, Any]], Generator] = Generator) -> None:
    """The generator process's loop: ``make`` builds the Generator on ``init``."""
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
                gen = make(cmd)
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
