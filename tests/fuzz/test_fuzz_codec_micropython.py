"""Fuzzing the edge codec (edge/codec.py) on the real MicroPython interpreter.

Each example draws a batch of frames and feeds it through one
``micropython -X heapsize=96k`` process (tests/micropython/codec_runner.py),
half of them as signed frames (``codec.decode``: size, HMAC, then the
envelope) and half as bare envelopes (``codec.decode_envelope``: straight to
the FlatBuffers reader, with no HMAC to stop a mutation). Inputs: golden
vectors with byte edits, truncations and extensions, generated messages of
every type (tests/strategies.py), mutated generated messages, offsets and
lengths overwritten with huge values, random bytes behind a valid file
identifier, and plain random bytes.

- The interpreter exits cleanly after every batch (no crash, no uncaught
  error, no MemoryError in a firmware-sized heap).
- Every outcome is a decoded message or ``CodecError``: the runner reports
  any other exception by its type, which fails here.
- Each outcome is the one the same code gives on CPython, and the official
  runtime (protocol/wire.py) accepts exactly the frames the edge accepts.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.errors import CodecError
from protocol.golden import VECTORS
from tests import strategies as wire_st
from tests.fuzz.budget import Tally, fuzz_settings
from tests.malformed import KEY
from tests.support import micropython, micropython_codec

pytestmark = pytest.mark.micropython

GOLDEN = sorted(p.stem for p in VECTORS.glob("*.bin"))
HM = edge_codec.Hmac(KEY)
KINDS = ("golden_edit", "truncated", "extended", "generated", "generated_edit", "huge", "ident")


def _edits(data: st.DataObject, buf: bytes) -> bytes:
    out = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        if not out:
            break
        pos = data.draw(st.integers(0, len(out) - 1), label="at")
        out[pos] = data.draw(st.integers(0, 255), label="byte")
    return bytes(out)


def _huge(data: st.DataObject, buf: bytes) -> bytes:
    """A u32 (an offset, a vtable reference, a length) made huge or negative."""
    if len(buf) < 4:
        return buf
    out = bytearray(buf)
    pos = data.draw(st.integers(0, (len(out) - 4) // 4), label="word") * 4
    value = data.draw(
        st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 0xFFFF, len(buf), len(buf) + 1]),
        label="value",
    )
    struct.pack_into("<I", out, pos, value)
    return bytes(out)


def envelope(data: st.DataObject, kind: str) -> bytes:
    golden = (VECTORS / f"{data.draw(st.sampled_from(GOLDEN), label='vector')}.bin").read_bytes()
    if kind == "golden_edit":
        return _edits(data, golden)
    if kind == "truncated":
        return golden[: data.draw(st.integers(0, len(golden) - 1), label="cut")]
    if kind == "extended":
        return golden + data.draw(st.binary(min_size=1, max_size=64), label="tail")
    if kind == "huge":
        return _huge(data, golden)
    if kind == "ident":
        return b"\x0c\x00\x00\x00AIO1" + data.draw(st.binary(max_size=300), label="body")
    msg = data.draw(wire_st.messages, label="message")
    env = wire.encode(msg)
    if len(env) > 3000:  # keep the batch's JSON lines small for the runner's heap
        env = env[:3000]
    return env if kind == "generated" else _edits(data, env)


def cpython_outcome(raw: bytes, signed: bool) -> dict[str, Any]:
    try:
        if signed:
            kind, fields = edge_codec.decode(raw, HM)
        else:
            kind, fields = edge_codec.decode_envelope(raw)
    except edge_codec.CodecError as exc:
        return {"error": "CodecError", "reason": exc.reason}
    return {"type": kind, "message": m.to_dict(m.from_dict(kind, fields))}


def official_accepts(raw: bytes, signed: bool) -> bool:
    try:
        if signed:
            wire.decode_frame(raw, KEY, max_size=edge_codec.MAX_FRAME)
        else:
            wire.decode(raw)
    except CodecError:
        return False
    return True


def test_fuzz_edge_codec_under_micropython() -> None:
    micropython()  # skip with the install hint when the interpreter is missing
    tally = Tally("edge_codec_micropython")

    @fuzz_settings(80)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        tally.example()
        inputs: list[tuple[str, bytes, bool]] = []
        for _ in range(data.draw(st.integers(10, 50), label="frames")):
            kind = data.draw(st.sampled_from((*KINDS, "random")), label="kind")
            signed = data.draw(st.booleans(), label="signed")
            if kind == "random":
                raw = data.draw(st.binary(max_size=600), label="bytes")
                raw = wire.seal(raw, KEY) if signed else raw
            else:
                env = envelope(data, kind)
                raw = wire.seal(env, KEY) if signed else env
            inputs.append((kind, raw, signed))
        jobs = [
            {"op": "decode", "hex": raw.hex(), "key_hex": KEY.hex() if signed else None}
            for _, raw, signed in inputs
        ]
        results = micropython_codec(jobs, heap="96k")  # fails on a non-zero exit
        for (kind, raw, signed), res in zip(inputs, results, strict=True):
            tally.hit(kind)
            want = cpython_outcome(raw, signed)
            if res["ok"]:
                got = {
                    "type": res["type"],
                    "message": m.to_dict(m.from_dict(res["type"], res["fields"])),
                }
            else:
                assert res["error"] == "CodecError", (kind, raw.hex(), res)
                got = {"error": "CodecError", "reason": res["reason"]}
            assert got == want, (kind, raw.hex(), got, want)
            assert ("error" not in got) == official_accepts(raw, signed), (kind, raw.hex(), got)

    one()
    tally.done()
    assert tally.inputs >= tally.examples * 10 > 0


# -- what the fuzzing found, kept as plain cases ----------------------------------------------

ILL_FORMED = {
    "overlong 2-byte": b"\xc0\xaf",
    "overlong 3-byte": b"\xe0\x80\xaf",
    "surrogate": b"\xed\xa0\x80",
    "past U+10FFFF": b"\xf4\x90\x80\x80",
}


@pytest.mark.parametrize("sequence", list(ILL_FORMED.values()), ids=list(ILL_FORMED))
def test_fuzz_finding_ill_formed_utf8_is_refused_as_by_the_official_runtime(
    sequence: bytes,
) -> None:
    # MicroPython's str(bytes, "utf-8") takes these; CPython and the hub do not.
    micropython()
    env = wire.encode(m.CommitAck("plug-07", 1, 2))
    at = env.index(b"plug-07")
    bad = env[:at] + sequence + env[at + len(sequence) :]
    with pytest.raises(CodecError) as official:
        wire.decode(bad)
    assert official.value.reason == "bad_utf8"
    [res] = micropython_codec([{"op": "decode", "hex": bad.hex()}], heap="96k")
    assert (res["ok"], res.get("reason")) == (False, "bad_utf8"), res
    assert cpython_outcome(bad, signed=False) == {"error": "CodecError", "reason": "bad_utf8"}
