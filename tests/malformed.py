"""Malformed inputs shared by the CPython and MicroPython codec tests.

Each case is (name, frame bytes, expected CodecError reason). Frames are
signed with the golden test key unless the case is about the signature, so
that the codec gets past the HMAC check and meets the fault it is named for.
"""

from __future__ import annotations

import struct

import flatbuffers

from protocol import messages as m
from protocol import wire
from protocol.generated import aiot_generated as g
from protocol.golden import CASES, TEST_KEY, VECTORS

KEY = TEST_KEY


def golden(name: str) -> bytes:
    return (VECTORS / f"{name}.bin").read_bytes()


def signed(envelope: bytes) -> bytes:
    return wire.seal(envelope, KEY)


def _patch(buf: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def _table_of_payload(env: bytes) -> tuple[int, int]:
    """(payload table position, its vtable position) in a valid envelope."""
    root = struct.unpack_from("<I", env, 0)[0]
    vt = root - struct.unpack_from("<i", env, root)[0]
    off = struct.unpack_from("<H", env, vt + 6)[0]
    payload = root + off + struct.unpack_from("<I", env, root + off)[0]
    pvt = payload - struct.unpack_from("<i", env, payload)[0]
    return payload, pvt


def _field_pos(env: bytes, slot: int) -> int:
    payload, pvt = _table_of_payload(env)
    return payload + struct.unpack_from("<H", env, pvt + 4 + 2 * slot)[0]


def _bare_batch_root(with_identifier: bool) -> bytes:
    """A TelemetryBatch as the root table: the wrong root type."""
    b = flatbuffers.Builder(64)
    t = g.TelemetryBatchT()
    t.deviceId, t.readings = "plug-07", [g.ReadingT(1, 2, 3.0)]
    ident = b"AIO1" if with_identifier else None
    b.Finish(t.Pack(b), file_identifier=ident)
    return bytes(b.Output())


def _with_status(status: int) -> bytes:
    b = flatbuffers.Builder(64)
    t = g.CommandResultT()
    t.commandId, t.deviceId, t.status = "c-1", "plug-07", status
    env = g.EnvelopeT()
    env.payloadType, env.payload = int(m.PayloadType.CommandResult), t
    b.Finish(env.Pack(b), file_identifier=b"AIO1")
    return bytes(b.Output())


def _without_device_id() -> bytes:
    b = flatbuffers.Builder(64)
    t = g.CommitAckT()
    t.watermark = 5
    env = g.EnvelopeT()
    env.payloadType, env.payload = int(m.PayloadType.CommitAck), t
    b.Finish(env.Pack(b), file_identifier=b"AIO1")
    return bytes(b.Output())


def _bad_utf8() -> bytes:
    env = wire.encode(m.CommitAck("plug-07", 1, 2))
    pos = _field_pos(env, 0)
    s = pos + struct.unpack_from("<I", env, pos)[0]
    out = bytearray(env)
    out[s + 4] = 0xFF
    return bytes(out)


def cases() -> list[tuple[str, bytes, str]]:
    batch = golden("telemetry_batch-official")
    command = golden("command-edge")
    out: list[tuple[str, bytes, str]] = []
    # Truncation: shorter than any envelope, and cut mid-message.
    out.append(("truncated_tiny", signed(batch[:8]), "truncated"))
    out.append(("truncated_half", signed(batch[: len(batch) // 2]), "bad_offset"))
    out.append(("truncated_tail", signed(batch[:-9]), "truncated"))
    out.append(("truncated_unsigned", batch[:40], "truncated"))
    # Offsets out of range.
    out.append(("root_offset_huge", signed(_patch(batch, 0, "<I", 0xFFFFFFF0)), "bad_offset"))
    out.append(("root_offset_unaligned", signed(_patch(batch, 0, "<I", 13)), "bad_offset"))
    root = struct.unpack_from("<I", batch, 0)[0]
    out.append(("vtable_outside", signed(_patch(batch, root, "<i", -100000)), "bad_vtable"))
    out.append(("vtable_negative", signed(_patch(batch, root, "<i", 100000)), "bad_vtable"))
    _payload, pvt = _table_of_payload(batch)
    out.append(("vtable_size_huge", signed(_patch(batch, pvt, "<H", 0xFFFE)), "bad_vtable"))
    out.append(("table_size_huge", signed(_patch(batch, pvt + 2, "<H", 0xFFF0)), "bad_vtable"))
    out.append(("field_past_table", signed(_patch(batch, pvt + 4, "<H", 0xFFF0)), "bad_vtable"))
    str_field = _field_pos(batch, 0)
    out.append(
        ("string_offset_out", signed(_patch(batch, str_field, "<I", 0x7FFFFFF0)), "bad_offset")
    )
    s = str_field + struct.unpack_from("<I", batch, str_field)[0]
    out.append(("string_too_long", signed(_patch(batch, s, "<I", 0x7FFFFFFF)), "bad_string"))
    out.append(("string_unterminated", signed(_patch(batch, s, "<I", 8)), "bad_string"))
    # Vectors longer than the buffer.
    vec_field = _field_pos(batch, 4)
    v = vec_field + struct.unpack_from("<I", batch, vec_field)[0]
    out.append(("vector_2g_readings", signed(_patch(batch, v, "<I", 0x7FFFFFFF)), "bad_vector"))
    # In edge output the readings come last, so one more runs off the end.
    edge_batch = golden("telemetry_batch-edge")
    ev_field = _field_pos(edge_batch, 4)
    ev = ev_field + struct.unpack_from("<I", edge_batch, ev_field)[0]
    out.append(("vector_one_too_many", signed(_patch(edge_batch, ev, "<I", 33)), "bad_vector"))
    params_field = _field_pos(command, 5)
    pv = params_field + struct.unpack_from("<I", command, params_field)[0]
    out.append(("table_vector_huge", signed(_patch(command, pv, "<I", 0xFFFFFFFF)), "bad_vector"))
    # The wrong root type.
    out.append(("root_is_batch", signed(_bare_batch_root(True)), "missing_field"))
    out.append(("no_identifier", signed(_bare_batch_root(False)), "wrong_root"))
    out.append(("foreign_identifier", signed(batch[:4] + b"XXXX" + batch[8:]), "wrong_root"))
    # Payload type outside the union, enum outside the schema.
    rvt = root - struct.unpack_from("<i", batch, root)[0]
    tag_at = root + struct.unpack_from("<H", batch, rvt + 4)[0]
    out.append(("union_tag_9", signed(_patch(batch, tag_at, "<B", 9)), "unknown_type"))
    out.append(("union_tag_0", signed(_patch(batch, tag_at, "<B", 0)), "unknown_type"))
    out.append(("status_enum_77", signed(_with_status(77)), "bad_enum"))
    out.append(("missing_device_id", signed(_without_device_id()), "missing_field"))
    out.append(("bad_utf8", signed(_bad_utf8()), "bad_utf8"))
    # Authentication.
    good = signed(batch)
    flipped = bytearray(good)
    flipped[-1] ^= 1
    out.append(("hmac_flipped_bit", bytes(flipped), "bad_hmac"))
    out.append(("hmac_wrong_key", wire.seal(batch, bytes(32)), "bad_hmac"))
    body = bytearray(good)
    body[20] ^= 0x40
    out.append(("hmac_body_changed", bytes(body), "bad_hmac"))
    out.append(("hmac_missing", batch, "bad_hmac"))
    out.append(("oversized", good + bytes(wire.MAX_FRAME), "oversized"))
    return out


def expected_message(vector: str) -> m.Message:
    return CASES[vector.rsplit("-", 1)[0]]
