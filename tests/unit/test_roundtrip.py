"""Hypothesis round-trips between the official runtime and edge/codec.py (CPython)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.golden import edge_encode
from tests.strategies import messages

pytestmark = pytest.mark.unit

HM = edge_codec.Hmac(b"k" * 32)


@settings(max_examples=400)
@given(messages)
def test_official_encode_edge_decode(msg: m.Message) -> None:
    kind, fields = edge_codec.decode_envelope(wire.encode(msg))
    assert m.from_dict(kind, fields) == msg


@settings(max_examples=400)
@given(messages)
def test_edge_encode_official_decode(msg: m.Message) -> None:
    assert wire.decode(edge_encode(msg)) == msg


@settings(max_examples=200)
@given(messages)
def test_signed_edge_frames_open_with_official_hmac(msg: m.Message) -> None:
    enc = edge_codec.Encoder(8192)
    enc.message(type(msg).__name__, m.to_edge_fields(msg))
    frame = bytes(enc.seal(HM))
    assert wire.decode_frame(frame, b"k" * 32) == msg


@settings(max_examples=200)
@given(messages)
def test_edge_encoding_is_deterministic_and_buffer_reuse_safe(msg: m.Message) -> None:
    enc = edge_codec.Encoder(8192)
    # Dirty the buffer with a larger message first: padding must be re-zeroed.
    enc.message("CommitAck", {"device_id": "x" * 200, "watermark": 2**64 - 1})
    enc.buf[:] = b"\xff" * len(enc.buf)
    again = bytes(enc.message(type(msg).__name__, m.to_edge_fields(msg)))
    assert again == edge_encode(msg)


def test_batch_streaming_api_matches_batch() -> None:
    rs = [(i % 3, i * 10, float(i)) for i in range(32)]
    a = edge_codec.Encoder(512)
    want = bytes(a.batch("plug-1", 2, 100, 1_763_700_000_000, rs))
    b = edge_codec.Encoder(512)
    b.begin_batch("plug-1", 2, 100, 1_763_700_000_000, 32)
    for i in reversed(range(32)):
        b.set_reading(i, *rs[i])
    assert bytes(b.mv[: b.pos]) == want


def test_end_batch_shortens_to_the_same_bytes_as_a_smaller_batch() -> None:
    rs = [(i % 3, i * 10, float(i)) for i in range(32)]
    want = bytes(edge_codec.Encoder(512).batch("plug-1", 2, 100, 1_763_700_000_000, rs[:7]))
    enc = edge_codec.Encoder(512)
    enc.begin_batch("plug-1", 2, 100, 1_763_700_000_000, 32)
    for i in range(7):
        enc.set_reading(i, *rs[i])
    assert bytes(enc.end_batch(7)) == want
    with pytest.raises(edge_codec.CodecError):
        enc.end_batch(8)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"device_id": "d", "watermark": -1}, "negative u64"),
        ({"device_id": "d", "watermark": 2**64}, "u64 overflow"),
        ({"device_id": None, "watermark": 1}, "missing required"),
    ],
)
def test_edge_encoder_rejects_unrepresentable_values(fields: dict[str, object], why: str) -> None:
    with pytest.raises(edge_codec.CodecError) as err:
        edge_codec.Encoder(256).message("CommitAck", fields)
    assert err.value.reason in ("bad_value", "missing_field"), why


def test_edge_encoder_rejects_reading_out_of_u16() -> None:
    enc = edge_codec.Encoder(256)
    with pytest.raises(edge_codec.CodecError, match="bad_value"):
        enc.batch("d", 1, 1, 0, [(70000, 0, 1.0)])
    with pytest.raises(edge_codec.CodecError, match="bad_value"):
        enc.batch("d", 1, 1, 0, [(1, 65536, 1.0)])


def test_edge_encoder_reports_a_full_buffer_as_oversized() -> None:
    with pytest.raises(edge_codec.CodecError) as err:
        edge_codec.Encoder(64).batch("plug-1", 1, 1, 0, [(0, 0, 1.0)] * 32)
    assert err.value.reason == "oversized"


def test_official_encoder_rejects_unrepresentable_values() -> None:
    from protocol.errors import CodecError

    with pytest.raises(CodecError) as err:
        wire.encode(m.CommitAck("d", 2**64, 0))
    assert err.value.reason == "bad_value"
