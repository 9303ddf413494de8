"""Malformed input: one clear error type from both codecs, no crash, no hang."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.errors import CodecError
from tests.malformed import KEY, cases, golden

pytestmark = pytest.mark.unit

CASES = cases()
HM = edge_codec.Hmac(KEY)


def official(frame: bytes) -> str | m.Message:
    try:
        return wire.decode_frame(frame, KEY)
    except CodecError as exc:
        return exc.reason


def edge(frame: bytes) -> str | m.Message:
    try:
        kind, fields = edge_codec.decode(frame, HM)
    except edge_codec.CodecError as exc:
        return exc.reason
    return m.from_dict(kind, fields)


@pytest.mark.parametrize(("name", "frame", "reason"), CASES, ids=[c[0] for c in CASES])
def test_official_codec_raises_codec_error(name: str, frame: bytes, reason: str) -> None:
    with pytest.raises(CodecError) as err:
        wire.decode_frame(frame, KEY)
    assert err.value.reason == reason
    assert str(err.value).startswith(reason)


@pytest.mark.parametrize(("name", "frame", "reason"), CASES, ids=[c[0] for c in CASES])
def test_edge_codec_raises_codec_error(name: str, frame: bytes, reason: str) -> None:
    with pytest.raises(edge_codec.CodecError) as err:
        edge_codec.decode(frame, HM)
    assert err.value.reason == reason


def test_codec_errors_are_value_errors_with_machine_readable_reason() -> None:
    assert issubclass(CodecError, ValueError)
    assert issubclass(edge_codec.CodecError, ValueError)
    with pytest.raises(AssertionError):
        CodecError("not-a-reason")


@pytest.mark.parametrize(
    "name", ["telemetry_batch-official", "command-edge", "device_status-official"]
)
def test_every_truncation_is_rejected_or_harmless(name: str) -> None:
    data = golden(name)
    for cut in range(len(data)):
        frame = wire.seal(data[:cut], KEY)
        a, b = official(frame), edge(frame)
        assert isinstance(a, str), f"official accepted a {cut}-byte prefix"
        assert isinstance(b, str), f"edge accepted a {cut}-byte prefix"


def test_huge_vector_claim_allocates_nothing_big() -> None:
    frame = dict((c[0], c[1]) for c in CASES)["vector_2g_readings"]
    tracemalloc.start()
    try:
        for decode in (official, edge):
            assert decode(frame) == "bad_vector"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [
            "telemetry_batch-edge",
            "telemetry_batch-official",
            "command-official",
            "command-edge",
            "device_status-edge",
            "device_status-official",
            "command_result_rejected-official",
        ]
    ),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_frames_never_escape_codec_error_and_both_codecs_agree(
    name: str, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(golden(name))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    frame = wire.seal(bytes(data), KEY)
    a, b = official(frame), edge(frame)
    if isinstance(a, str) or isinstance(b, str):
        # Both must reject, though the first fault each meets may differ when
        # a mutation leaves several.
        assert isinstance(a, str) and isinstance(b, str), (a, b)
    else:
        assert m.to_dict(a) == m.to_dict(b)  # to_dict spells NaN, so NaN == NaN


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_codec_error(blob: bytes) -> None:
    for data in (blob, b"\x0c\x00\x00\x00AIO1" + blob):
        frame = wire.seal(data, KEY)
        assert isinstance(official(frame), str | m.Message)
        assert isinstance(edge(frame), str | m.Message)
