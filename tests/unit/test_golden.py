"""Golden vectors: both codecs write them, both read them, flatc agrees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.golden import CASES, TEST_KEY, VECTORS, edge_encode, flatc_json
from tests.malformed import expected_message

pytestmark = pytest.mark.unit

MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text())
NAMES = sorted(MANIFEST["vectors"])


def test_every_message_type_has_vectors_from_both_codecs() -> None:
    seen = {(v["type"], v["producer"]) for v in MANIFEST["vectors"].values()}
    for kind in m.PayloadType:
        assert (kind.name, "official") in seen
        assert (kind.name, "edge") in seen


@pytest.mark.parametrize("name", NAMES)
def test_official_runtime_decodes_vector(name: str) -> None:
    data = (VECTORS / f"{name}.bin").read_bytes()
    assert wire.decode(data) == expected_message(name)


@pytest.mark.parametrize("name", NAMES)
def test_edge_codec_decodes_vector_on_cpython(name: str) -> None:
    data = (VECTORS / f"{name}.bin").read_bytes()
    kind, fields = edge_codec.decode_envelope(data)
    assert m.from_dict(kind, fields) == expected_message(name)


@pytest.mark.parametrize("name", NAMES)
def test_producers_write_the_checked_in_bytes(name: str) -> None:
    case, producer = name.rsplit("-", 1)
    msg = CASES[case]
    data = wire.encode(msg) if producer == "official" else edge_encode(msg)
    assert data == (VECTORS / f"{name}.bin").read_bytes()


def test_flatc_json_matches_checked_in_json_and_expected_values(tmp_path: Path) -> None:
    paths = [VECTORS / f"{n}.bin" for n in NAMES]
    printed = flatc_json(paths, tmp_path)
    for name in NAMES:
        assert printed[name] == (VECTORS / f"{name}.json").read_text(), name
        doc = json.loads(printed[name])
        assert m.from_dict(doc["payload_type"], doc["payload"]) == expected_message(name), name


def test_to_dict_is_what_flatc_prints_with_defaults(tmp_path: Path) -> None:
    printed = flatc_json([VECTORS / f"{n}.bin" for n in NAMES], tmp_path, defaults=True)
    for name in NAMES:
        flatc_doc = json.loads(printed[name])
        ours = m.to_dict(expected_message(name))
        assert flatc_doc["payload_type"] == ours["payload_type"]
        left_out = {k: v for k, v in ours["payload"].items() if k not in flatc_doc["payload"]}
        assert all(v in ("", []) for v in left_out.values()), (name, left_out)
        kept = {k: v for k, v in ours["payload"].items() if k in flatc_doc["payload"]}
        assert list(kept.items()) == list(flatc_doc["payload"].items()), name


@pytest.mark.parametrize("name", NAMES)
def test_hmac_trailer_matches_manifest_in_both_implementations(name: str) -> None:
    data = (VECTORS / f"{name}.bin").read_bytes()
    want = bytes.fromhex(MANIFEST["vectors"][name]["hmac_hex"])
    assert bytes.fromhex(MANIFEST["key_hex"]) == TEST_KEY
    assert wire.sign(data, TEST_KEY) == want
    assert edge_codec.Hmac(TEST_KEY).digest(data) == want


def test_hmac_with_long_key_matches_stdlib() -> None:
    key = bytes(range(100))  # longer than the SHA-256 block: hashed first
    assert edge_codec.Hmac(key).digest(b"abc") == wire.sign(b"abc", key)


def test_signed_frames_open_in_both_codecs() -> None:
    for name in NAMES:
        data = (VECTORS / f"{name}.bin").read_bytes()
        frame = wire.seal(data, TEST_KEY)
        assert wire.decode_frame(frame, TEST_KEY) == expected_message(name)
        kind, fields = edge_codec.decode(frame, edge_codec.Hmac(TEST_KEY))
        assert m.from_dict(kind, fields) == expected_message(name)


def test_batch_of_32_stays_under_12_bytes_per_reading() -> None:
    batch = CASES["telemetry_batch"]
    assert isinstance(batch, m.TelemetryBatch)
    assert len(batch.readings) == 32
    for data in (wire.encode(batch), edge_encode(batch)):
        assert (len(data) + wire.TAG_SIZE) / 32 <= 12


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.gen", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_golden_vectors_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "protocol.golden", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
