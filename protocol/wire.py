"""Frames on the wire, encoded and decoded with the official FlatBuffers runtime.

A frame is an ``Envelope`` followed by a 32-byte HMAC-SHA256 trailer computed
with the device's key over the envelope bytes (``protocol/README.md`` has the
exact layout). This is the codec of the hub and the tools; the device uses
``edge/codec.py``, which writes and reads the same bytes.

    frame = seal(encode(msg), key)
    msg = decode(open_frame(frame, key))

Everything wrong with incoming bytes raises ``CodecError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Final

import flatbuffers

from protocol import messages as m
from protocol.errors import CodecError
from protocol.generated import aiot_generated as g
from protocol.verify import FILE_IDENTIFIER, verify

TAG_SIZE: Final = 32
# Frames larger than this are refused before any parsing. A 32-reading batch
# is under 400 bytes; the largest legitimate frame is a DeviceStatus with a
# long capability list.
MAX_FRAME: Final = 16 * 1024


# -- authentication -------------------------------------------------------------


def sign(envelope: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """The HMAC-SHA256 trailer for ``envelope``."""
    return hmac.new(key, envelope, hashlib.sha256).digest()


def seal(envelope: bytes, key: bytes) -> bytes:
    """Envelope plus trailer: the bytes that go on the wire."""
    return envelope + sign(envelope, key)


def open_frame(
    frame: bytes | bytearray | memoryview, key: bytes, max_size: int = MAX_FRAME
) -> bytes:
    """Check size and trailer; return the envelope bytes."""
    if len(frame) > max_size:
        raise CodecError("oversized", f"{len(frame)} bytes, limit {max_size}")
    if len(frame) < TAG_SIZE + 12:
        raise CodecError("truncated", f"{len(frame)} bytes is shorter than envelope + HMAC")
    envelope = bytes(frame[:-TAG_SIZE])
    if not hmac.compare_digest(sign(envelope, key), bytes(frame[-TAG_SIZE:])):
        raise CodecError("bad_hmac", "trailer does not match the device key")
    return envelope


def peek_device_id(frame: bytes | bytearray | memoryview, max_size: int = MAX_FRAME) -> str:
    """The device id inside an unauthenticated frame, to look up its key.

    The whole envelope is verified first, so this is safe on hostile bytes.
    The caller must still ``open_frame`` with the key before trusting anything.
    """
    if len(frame) > max_size:
        raise CodecError("oversized", f"{len(frame)} bytes, limit {max_size}")
    if len(frame) < TAG_SIZE + 12:
        raise CodecError("truncated", f"{len(frame)} bytes is shorter than envelope + HMAC")
    return decode(bytes(frame[:-TAG_SIZE])).device_id


# -- encode -------------------------------------------------------------------------


def _param_t(p: m.Param) -> Any:
    t: Any = g.ParamT()
    t.name = p.name
    t.kind = int(p.kind)
    if t.kind == g.ParamKind.Text:
        t.textValue = p.value
    elif t.kind == g.ParamKind.Float:
        t.floatValue = float(p.value)
    else:
        t.intValue = int(p.value)
    return t


def _payload_t(msg: m.Message) -> Any:
    if isinstance(msg, m.TelemetryBatch):
        t: Any = g.TelemetryBatchT()
        t.deviceId, t.bootEpoch, t.firstSeq, t.baseTsMs = (
            msg.device_id,
            msg.boot_epoch,
            msg.first_seq,
            msg.base_ts_ms,
        )
        t.readings = [g.ReadingT(r.sensor, r.offset_ms, r.value) for r in msg.readings]
        t.lostBefore = msg.lost_before
    elif isinstance(msg, m.CommitAck):
        t = g.CommitAckT()
        t.deviceId, t.watermark, t.hubTimeMs = msg.device_id, msg.watermark, msg.hub_time_ms
    elif isinstance(msg, m.Command):
        t = g.CommandT()
        t.commandId, t.deviceId, t.seq, t.term, t.action = (
            msg.command_id,
            msg.device_id,
            msg.seq,
            msg.term,
            msg.action,
        )
        t.params = [_param_t(p) for p in msg.params] or None
        t.issuedAtMs, t.deadlineMs = msg.issued_at_ms, msg.deadline_ms
    elif isinstance(msg, m.CommandResult):
        t = g.CommandResultT()
        t.commandId, t.deviceId, t.seq = msg.command_id, msg.device_id, msg.seq
        t.status, t.reason = int(msg.status), int(msg.reason)
        t.detail = msg.detail or None
        t.executedAtMs = msg.executed_at_ms
    else:
        t = g.DeviceStatusT()
        t.deviceId, t.state, t.firmware = msg.device_id, int(msg.state), msg.firmware or None
        t.bootEpoch, t.uptimeS, t.freeHeap = msg.boot_epoch, msg.uptime_s, msg.free_heap
        t.bufferFillPermille, t.unacked, t.dropped = (
            msg.buffer_fill_permille,
            msg.unacked,
            msg.dropped,
        )
        t.reconnects, t.hubIndex = msg.reconnects, msg.hub_index
        caps = []
        for c in msg.capabilities:
            ct: Any = g.CapabilityT()
            ct.action = c.action
            ct.params = [g.ParamSpecT(s.name, int(s.kind), s.min, s.max) for s in c.params] or None
            caps.append(ct)
        t.capabilities = caps or None
    return t


def encode(msg: m.Message) -> bytes:
    """The Envelope bytes for ``msg``, built by the official runtime."""
    env: Any = g.EnvelopeT()
    env.payloadType = int(m.PAYLOAD_TYPES[type(msg)])
    env.payload = _payload_t(msg)
    builder = flatbuffers.Builder(256)
    try:
        builder.Finish(env.Pack(builder), file_identifier=FILE_IDENTIFIER)
    except (ValueError, TypeError) as exc:  # e.g. an int that does not fit its field
        raise CodecError("bad_value", str(exc)) from None
    return bytes(builder.Output())


# -- decode -------------------------------------------------------------------------


def _s(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _param(t: Any) -> m.Param:
    kind = m.ParamKind(t.kind)
    value: m.ParamValue
    if kind is m.ParamKind.Text:
        value = _s(t.textValue)
    elif kind is m.ParamKind.Float:
        value = float(t.floatValue)
    elif kind is m.ParamKind.Bool:
        value = bool(t.intValue)
    else:
        value = int(t.intValue)
    return m.Param(_s(t.name), value)


def _batch(t: Any) -> m.TelemetryBatch:
    return m.TelemetryBatch(
        _s(t.deviceId),
        t.bootEpoch,
        t.firstSeq,
        t.baseTsMs,
        tuple(m.Reading(r.sensor, r.offsetMs, r.value) for r in t.readings or ()),
        t.lostBefore,
    )


def _ack(t: Any) -> m.CommitAck:
    return m.CommitAck(_s(t.deviceId), t.watermark, t.hubTimeMs)


def _command(t: Any) -> m.Command:
    return m.Command(
        _s(t.commandId),
        _s(t.deviceId),
        t.seq,
        t.term,
        _s(t.action),
        tuple(_param(p) for p in t.params or ()),
        t.issuedAtMs,
        t.deadlineMs,
    )


def _result(t: Any) -> m.CommandResult:
    return m.CommandResult(
        _s(t.commandId),
        _s(t.deviceId),
        t.seq,
        m.CommandStatus(t.status),
        m.Reason(t.reason),
        _s(t.detail),
        t.executedAtMs,
    )


def _status(t: Any) -> m.DeviceStatus:
    caps = tuple(
        m.Capability(
            _s(c.action),
            tuple(
                m.ParamSpec(_s(s.name), m.ParamKind(s.kind), s.min, s.max) for s in c.params or ()
            ),
        )
        for c in t.capabilities or ()
    )
    return m.DeviceStatus(
        _s(t.deviceId),
        m.LinkState(t.state),
        _s(t.firmware),
        t.bootEpoch,
        t.uptimeS,
        t.freeHeap,
        t.bufferFillPermille,
        t.unacked,
        t.dropped,
        t.reconnects,
        t.hubIndex,
        caps,
    )


_FROM_T: Final[dict[int, Callable[[Any], m.Message]]] = {
    m.PayloadType.TelemetryBatch: _batch,
    m.PayloadType.CommitAck: _ack,
    m.PayloadType.Command: _command,
    m.PayloadType.CommandResult: _result,
    m.PayloadType.DeviceStatus: _status,
}


def decode(envelope: bytes | bytearray | memoryview, max_size: int = MAX_FRAME) -> m.Message:
    """Verify and decode Envelope bytes (no trailer) into a message."""
    if len(envelope) > max_size:
        raise CodecError("oversized", f"{len(envelope)} bytes, limit {max_size}")
    buf = bytes(envelope)
    tag = verify(buf)
    env = g.EnvelopeT.InitFromPackedBuf(buf, 0)
    return _FROM_T[tag](env.payload)


def decode_frame(
    frame: bytes | bytearray | memoryview,
    key: bytes,
    expect: type[m.Message] | tuple[type[m.Message], ...] | None = None,
    max_size: int = MAX_FRAME,
) -> m.Message:
    """Authenticate and decode a frame; optionally insist on its type."""
    msg = decode(open_frame(frame, key, max_size), max_size)
    if expect is not None and not isinstance(msg, expect):
        raise CodecError("unexpected_type", f"got {type(msg).__name__}")
    return msg
