"""edge/codec.py under the real MicroPython interpreter."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.golden import CASES, TEST_KEY, VECTORS, flatc_json
from tests.malformed import KEY, cases, expected_message, golden
from tests.strategies import messages
from tests.support import micropython_codec, run_micropython

pytestmark = pytest.mark.micropython

MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text())
NAMES = sorted(MANIFEST["vectors"])


def test_interpreter_is_micropython() -> None:
    out = run_micropython("-c", "import sys; print(sys.implementation.name)")
    assert out.strip() == "micropython"


def test_micropython_decodes_every_vector_from_both_codecs() -> None:
    jobs = [{"op": "decode", "hex": golden(n).hex()} for n in NAMES]
    for name, res in zip(NAMES, micropython_codec(jobs), strict=True):
        assert res["ok"], (name, res)
        assert m.from_dict(res["type"], res["fields"]) == expected_message(name), name


def test_micropython_bytes_decode_with_official_runtime_and_flatc(tmp_path: Path) -> None:
    jobs = [
        {"op": "encode", "type": type(msg).__name__, "fields": m.to_edge_fields(msg)}
        for msg in CASES.values()
    ]
    paths = []
    for (case, msg), res in zip(CASES.items(), micropython_codec(jobs), strict=True):
        assert res["ok"], (case, res)
        data = bytes.fromhex(res["hex"])
        # Same bytes as the checked-in edge vector, so the same flatc JSON.
        assert data == golden(f"{case}-edge"), case
        assert wire.decode(data) == msg, case
        path = tmp_path / f"{case}-edge.bin"
        path.write_bytes(data)
        paths.append(path)
    printed = flatc_json(paths, tmp_path / "json")
    for case, msg in CASES.items():
        doc = json.loads(printed[f"{case}-edge"])
        assert m.from_dict(doc["payload_type"], doc["payload"]) == msg
        assert printed[f"{case}-edge"] == (VECTORS / f"{case}-edge.json").read_text()


def test_micropython_signs_like_the_manifest() -> None:
    jobs = [
        {
            "op": "encode",
            "type": type(msg).__name__,
            "fields": m.to_edge_fields(msg),
            "key_hex": TEST_KEY.hex(),
        }
        for msg in CASES.values()
    ]
    for (case, msg), res in zip(CASES.items(), micropython_codec(jobs), strict=True):
        frame = bytes.fromhex(res["hex"])
        assert frame[-32:].hex() == MANIFEST["vectors"][f"{case}-edge"]["hmac_hex"]
        assert wire.decode_frame(frame, TEST_KEY) == msg


def test_micropython_opens_official_signed_frames() -> None:
    names = [n for n in NAMES if n.endswith("-official")]
    jobs = [
        {"op": "decode", "hex": wire.seal(golden(n), TEST_KEY).hex(), "key_hex": TEST_KEY.hex()}
        for n in names
    ]
    for name, res in zip(names, micropython_codec(jobs), strict=True):
        assert res["ok"], (name, res)
        assert m.from_dict(res["type"], res["fields"]) == expected_message(name)


def test_malformed_input_raises_codec_error_under_micropython() -> None:
    malformed = cases()
    jobs = []
    for _, frame, _ in malformed:
        head = frame.rstrip(b"\0") if len(frame) > 4096 else frame
        jobs.append(
            {
                "op": "decode",
                "hex": head.hex(),
                "zeros": len(frame) - len(head),
                "key_hex": KEY.hex(),
            }
        )
    # A 2 G-element claim must not allocate. 128 KB rather than the firmware's
    # 96 KB only because this runner itself holds the 16 KB "oversized" frame.
    results = micropython_codec(jobs, heap="128k")
    for (name, _frame, reason), res in zip(malformed, results, strict=True):
        assert res == {
            "ok": False,
            "error": "CodecError",
            "reason": reason,
            "message": res.get("message"),
        }, name
        assert res["message"].startswith(reason)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_hypothesis_messages_round_trip_through_micropython(msg: m.Message) -> None:
    # Official bytes -> MicroPython decode; MicroPython encode -> official decode.
    jobs = [
        {"op": "decode", "hex": wire.encode(msg).hex()},
        {"op": "encode", "type": type(msg).__name__, "fields": m.to_edge_fields(msg)},
    ]
    dec, enc = micropython_codec(jobs)
    assert dec["ok"] and enc["ok"], (dec, enc)
    assert m.from_dict(dec["type"], dec["fields"]) == msg
    assert wire.decode(bytes.fromhex(enc["hex"])) == msg


def test_generated_garbage_through_micropython_matches_cpython() -> None:
    # A seeded batch of mutated and random frames, fed through the interpreter
    # in one process: every one must end in a result or a CodecError, exactly
    # as the same code does on CPython.
    rng = random.Random(20261121)
    frames = []
    for _ in range(400):
        data = bytearray(golden(rng.choice(NAMES)))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        frames.append(wire.seal(bytes(data), KEY))
    for _ in range(100):
        frames.append(wire.seal(b"\x0c\x00\x00\x00AIO1" + rng.randbytes(rng.randrange(200)), KEY))
    jobs = [{"op": "decode", "hex": f.hex(), "key_hex": KEY.hex()} for f in frames]
    hm = edge_codec.Hmac(KEY)
    rejected = 0
    for frame, res in zip(frames, micropython_codec(jobs, heap="96k"), strict=True):
        try:
            kind, fields = edge_codec.decode(frame, hm)
        except edge_codec.CodecError as exc:
            rejected += 1
            assert res["error"] == "CodecError" and res["reason"] == exc.reason, res
        else:
            assert res["ok"], res
            want = m.to_dict(m.from_dict(kind, fields))
            assert m.to_dict(m.from_dict(res["type"], res["fields"])) == want
    assert 0 < rejected < len(frames)
