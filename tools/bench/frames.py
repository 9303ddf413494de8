"""The bytes the hub benchmarks put on the wire, built ahead of the clock.

- ``FrameMaker``: one device's signed TelemetryBatch frames with consecutive
  sequence numbers (``protocol/wire.py`` encode and seal). The template is
  encoded once per device and each frame patches first_seq and base_ts into
  a copy, which ``check`` compares byte for byte with ``wire.encode``.
- ``FrameMaker.packet``: the QoS 1 PUBLISH that carries a frame, as the
  load generator writes it on its own socket (``tools/base/mqttwire.py``).
- Reading frames in place: the watermark of a signed CommitAck, and the
  device and last sequence number of a TelemetryBatch (for the baseline's
  stand-in, which verifies nothing).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from protocol import messages as m
from protocol import topics, wire
from protocol.generated import aiot_generated as g
from tools.base import mqttwire
from tools.bench.codec import BenchError

BATCH_READINGS: Final = 32  # the firmware's default batch_readings
BASE_TS: Final = 1_763_700_000_000
BATCH_SPAN_MS: Final = 4_000  # base_ts step from one batch to the next


def plug_rows(n: int) -> tuple[m.Reading, ...]:
    """``n`` readings of a plug: power, energy, voltage in turn, 333 ms apart."""
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
        self._rows = plug_rows(readings)
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
        return mqttwire.publish(self.topic, self.frame(k), qos=1, pid=k % 0xFFFF + 1)

    def check(self, k: int) -> None:
        if self.frame(k) != wire.seal(wire.encode(self.batch(k)), self.key):
            raise BenchError(f"frame {k} of {self.device_id} differs from wire.encode")


# -- frames read in place ----------------------------------------------------------------


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
