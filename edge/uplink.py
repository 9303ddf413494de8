# The uplink: stored readings -> signed batches -> the hub; commit-acks back.
#
#   up = Uplink(device_id, hmac, store, client, clock, meta)
#   asyncio.create_task(up.run())
#   up.on_ack(fields)         # from the down topic (a decoded CommitAck)
#   up.kick()                 # new readings were flushed
#
# Batches are built from the oldest unacknowledged reading, in sequence order,
# with at most max_readings readings and max_bytes bytes on the wire. A batch
# also ends where time runs backwards or spans more than 65.535 s, because
# reading offsets are u16 ms from the batch's base time. Up to `window`
# batches are in flight; if the hub's watermark does not move for
# ack_timeout_ms, sending restarts from the watermark (the hub stores each
# sequence number once, so a resend is harmless). If nothing is acknowledged
# for failover_after_ms while connected, the client moves to the next hub:
# a live broker in front of a dead hub must not hold the device.
import asyncio

from edge import const
from edge.clock import ticks_diff, ticks_ms
from edge.codec import Encoder

_ENVELOPE_FIXED = const(92)  # batch frame bytes besides readings and id
_READING = const(8)
_TAG = const(32)


class Uplink:
    def __init__(
        self,
        device_id,
        hmac,
        store,
        client,
        clock,
        meta,
        max_readings=32,
        max_bytes=1024,
        window=4,
        ack_timeout_ms=5000,
        failover_after_ms=15000,
        enc=None,
    ):
        # enc: an Encoder to share (edge/node.py's); a batch is built and
        # copied out in one go. Without one, or if it is too small, the uplink
        # makes its own.
        self.device_id = device_id
        self.topic = "aiot/v1/%s/up" % device_id
        self.hm = hmac
        self.store = store
        self.client = client
        self.clock = clock
        self.meta = meta
        fixed = _ENVELOPE_FIXED + len(device_id) + _TAG
        self.max_readings = max(1, min(max_readings, (max_bytes - fixed) // _READING))
        self.window = window
        self.ack_timeout_ms = ack_timeout_ms
        self.failover_after_ms = failover_after_ms
        need = fixed + _READING * self.max_readings + 16
        self.enc = enc if enc is not None and len(enc.buf) >= need else Encoder(need)
        self._wake = asyncio.Event()
        self._b = [0, 0, 0]
        self._next = 0  # next sequence number to send
        self._flight = []  # [first, last, sent ticks] of batches in flight
        self._progress = ticks_ms()  # watermark moved, or sending began after idle
        self._round = ticks_ms()  # the current round of sending began
        self._idle = True  # nothing sent is waiting for an ack
        self.batches_sent = 0
        self.readings_sent = 0
        self.retransmits = 0
        self.failovers = 0
        self.acks = 0
        self.stale_acks = 0
        self.errors = 0
        self.last_error = None

    # -- batches --------------------------------------------------------------

    def build(self, from_seq):
        # The frame of the next batch starting at or after from_seq, as
        # (first seq, last seq, frame bytes), or None when nothing is stored.
        # Readings stream from flash straight into the encoder's buffer.
        enc = self.enc
        b = self._b  # [count, first seq, base ts]
        floor = self.store.ack_floor()

        def take(seq, sensor, ts, value):
            n = b[0]
            if n == 0:
                b[1] = seq
                b[2] = ts
                # Readings the hub never acknowledged and the device no
                # longer holds (overflow, corruption): declare them lost, or
                # the hub would wait for them for ever.
                lost = seq if seq > self.meta.watermark + 1 and from_seq <= floor + 1 else 0
                enc.begin_batch(
                    self.device_id, self.meta.boot_epoch, seq, ts, self.max_readings, lost
                )
            else:
                dt = ts - b[2]
                if dt < 0 or dt > 0xFFFF:
                    return False  # offsets are u16 ms from the base time
            enc.set_reading(n, sensor, ts - b[2], value)
            b[0] = n + 1
            return True

        b[0] = 0
        n = self.store.scan(from_seq, self.max_readings, take)
        if not n:
            return None
        enc.end_batch(n)
        frame = bytes(enc.seal(self.hm))  # a copy: the client may resend it
        return b[1], b[1] + n - 1, frame

    # -- acknowledgements ---------------------------------------------------------

    def on_ack(self, fields):
        # A decoded, authenticated CommitAck for this device.
        w = fields["watermark"]
        self.acks += 1
        if w <= self.store.ack_floor():
            self.stale_acks += 1
        else:
            self.store.ack(w)
            self._progress = ticks_ms()
        rtt = 0
        while self._flight and self._flight[0][1] <= w:
            rtt = ticks_diff(ticks_ms(), self._flight[0][2])
            self._flight.pop(0)
        if not self._flight and w >= self._next - 1:
            self._idle = True
        self.clock.sync(fields["hub_time_ms"], rtt)
        self._wake.set()

    def kick(self):
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self):
        pause = 0.1
        while True:
            await self.client.up.wait()
            self._restart()
            try:
                await self._pump()
                pause = 0.1
            except Exception as e:  # the device must keep going
                # A link error, or a flash read error: count it, back off,
                # resume from the watermark. Never spin: an already-set `up`
                # does not yield.
                self.errors += 1
                self.last_error = repr(e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30)

    def _restart(self):
        self._flight = []
        self._next = self.store.ack_floor() + 1
        self._progress = self._round = ticks_ms()
        self._idle = True

    async def _pump(self):
        while self.client.up.is_set():
            floor = self.store.ack_floor()
            if self._next <= floor:
                self._next = floor + 1
            now = ticks_ms()
            if not self._idle:
                if ticks_diff(now, self._progress) > self.failover_after_ms:
                    # Acks stopped while the broker still answers: the hub
                    # behind it is gone. Move on to the next one.
                    self.failovers += 1
                    self.client.next_server()
                    self._restart()
                    return
                waited = min(ticks_diff(now, self._progress), ticks_diff(now, self._round))
                if waited > self.ack_timeout_ms:
                    # No progress: send again from the oldest unacknowledged.
                    self.retransmits += 1
                    self._flight = []
                    self._next = floor + 1
                    self._round = now
            if len(self._flight) < self.window:
                batch = self.build(self._next)
                if batch is not None:
                    first, last, frame = batch
                    if self._idle:
                        self._progress = self._round = now
                        self._idle = False
                    self._flight.append([first, last, now])
                    self._next = last + 1
                    await self.client.publish(self.topic, frame, 1)
                    self.batches_sent += 1
                    self.readings_sent += last - first + 1
                    continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.ack_timeout_ms / 4000)
            except asyncio.TimeoutError:  # noqa: UP041 - MicroPython has no builtin TimeoutError
                pass
