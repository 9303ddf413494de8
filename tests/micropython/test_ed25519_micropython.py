"""edge/ed25519.py and the device's release checks (edge/ota.py) under the real
MicroPython interpreter, judged against `cryptography`'s Ed25519.

A device takes an over-the-air update only for a release whose signed
manifest verifies with a key pinned in its config, for its platform, of the
bundle the command names, and not older than what it runs unless the command
allows a downgrade; it refuses before anything is written to the app slot."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge import ed25519 as edge_ed25519
from hub.decide.registry import release_manifest
from tests.support import ROOT, run_micropython

pytestmark = pytest.mark.micropython

RUNNER = ROOT / "tests" / "micropython" / "release_runner.py"
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493


def run_jobs(jobs: list[dict[str, Any]], heap: str = "256k") -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        f.writelines(json.dumps(j) + "\n" for j in jobs)
        path = f.name
    try:
        out = run_micropython(RUNNER, path, heap=heap)
    finally:
        os.unlink(path)
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(results) == len(jobs), out
    return results


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def cryptography_says(pub: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def verify_job(pub: bytes, msg: bytes, sig: bytes) -> dict[str, Any]:
    return {"op": "verify", "pub": pub.hex(), "msg": msg.hex(), "sig": sig.hex()}


def test_verdicts_match_cryptography_for_valid_and_tampered_signatures() -> None:
    rng = random.Random(25519)
    cases: list[tuple[str, bytes, bytes, bytes]] = []
    # Message lengths around SHA-512's block and padding edges (with R || A: +64).
    for n in (0, 1, 47, 48, 63, 64, 111, 112, 175, 176, 300, 1000):
        key = Ed25519PrivateKey.generate()
        msg = rng.randbytes(n)
        sig = key.sign(msg)
        other = Ed25519PrivateKey.generate()
        cases += [
            (f"valid {n}", raw(key), msg, sig),
            (
                f"message tampered {n}",
                raw(key),
                flip(msg, rng.randrange(8 * n)) if n else b"x",
                sig,
            ),
            (f"R tampered {n}", raw(key), msg, flip(sig, rng.randrange(256))),
            (f"S tampered {n}", raw(key), msg, flip(sig, 256 + rng.randrange(252))),
            (f"wrong key {n}", raw(other), msg, sig),
            (f"key tampered {n}", flip(raw(key), rng.randrange(255)), msg, sig),
        ]
    # RFC 8032 section 7.1, test 1: the empty message.
    rfc_pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    rfc_sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
        "39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    cases.append(("RFC 8032 test 1", rfc_pub, b"", rfc_sig))
    results = run_jobs([verify_job(pub, msg, sig) for _, pub, msg, sig in cases])
    for (what, pub, msg, sig), res in zip(cases, results, strict=True):
        want = cryptography_says(pub, msg, sig)
        assert res["ok"] is want, what
        assert edge_ed25519.verify(pub, msg, sig) is want, what  # the same code on CPython
    assert sum(r["ok"] for r in results) == 13  # each valid one and the RFC's


def test_non_canonical_and_malformed_encodings_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    pub, msg = raw(key), b"release"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    # S + L verifies the same equation: the malleable form, refused (S < L).
    s_plus_l = sig[:32] + (s + L).to_bytes(32, "little")
    # y >= p: a non-canonical encoding of the point with y = 1 (or y = 2..18).
    y_over_p = (P + 1).to_bytes(32, "little")
    # A y with no x on the curve (x^2 = (y^2-1)/(dy^2+1) has no root for y = 2).
    off_curve = (2).to_bytes(32, "little")
    # x = 0 with the sign bit set: y = 1 is the only point with x = 0 besides y = -1.
    zero_x_signed = (1 | (1 << 255)).to_bytes(32, "little")
    # An R whose y is at or above p can never equal an encoding.
    r_over_p = (P + 3).to_bytes(32, "little") + sig[32:]
    cases = [
        ("S + L", pub, msg, s_plus_l, False),
        ("S = L", pub, msg, sig[:32] + L.to_bytes(32, "little"), False),
        ("S top bits set", pub, msg, sig[:32] + (s | (7 << 253)).to_bytes(32, "little"), False),
        ("key y >= p", y_over_p, msg, sig, False),
        ("key not on the curve", off_curve, msg, sig, False),
        ("key x = 0 with its sign bit", zero_x_signed, msg, sig, False),
        ("R y >= p", pub, msg, r_over_p, False),
        ("signature of 63 bytes", pub, msg, sig[:63], False),
        ("signature of 65 bytes", pub, msg, sig + b"\0", False),
        ("key of 31 bytes", pub[:31], msg, sig, False),
        ("empty", b"", b"", b"", False),
        ("the genuine one", pub, msg, sig, True),
    ]
    results = run_jobs([verify_job(p, m, sg) for _, p, m, sg, _ in cases])
    for (what, p, m, sg, want), res in zip(cases, results, strict=True):
        assert res["ok"] is want, what
        assert edge_ed25519.verify(p, m, sg) is want, what
    # Where cryptography judges the same bytes, it agrees.
    assert not cryptography_says(pub, msg, s_plus_l)
    assert not cryptography_says(pub, msg, r_over_p)


# -- the device's release checks ----------------------------------------------------------


def bundle_manifest(version: str, platform: str = "linux") -> bytes:
    doc = {"files": {}, "format": 1, "platform": platform, "board": "unix", "mpy": 6}
    return json.dumps({**doc, "version": version}, sort_keys=True).encode()


def release_params(
    key: Ed25519PrivateKey, version: str, platform: str = "linux", allow: bool = False
) -> dict[str, Any]:
    """An ota.update's params as the hub sends them for a release signed by ``key``."""
    manifest = bundle_manifest(version, platform)
    signed = release_manifest(manifest)
    return {
        "url": "http://127.0.0.1:1/v1/firmware/x/",
        "sha256": hashlib.sha256(manifest).hexdigest(),
        "allow_downgrade": allow,
        "release": signed.decode(),
        "signature": key.sign(signed).hex(),
    }


def b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(raw(key)).decode()


def test_the_device_takes_only_signed_releases_of_its_platform_and_no_downgrade() -> None:
    key, rogue = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pinned = [b64(rogue), b64(key)]  # a second pinned key (rotation) works as well
    good = release_params(key, "0.3.0")
    tampered = {**good, "release": good["release"].replace('"0.3.0"', '"9.3.0"')}
    other_sha = {**good, "sha256": "0" * 64}
    cases: list[tuple[str, dict[str, Any], list[str], str, str]] = [
        ("an upgrade", good, pinned, "0.2.0", "0.3.0"),
        ("the same version again", good, pinned, "0.3.0", "0.3.0"),
        ("a downgrade allowed", release_params(key, "0.1.9", allow=True), pinned, "0.2.0", "0.1.9"),
        ("no key pinned", good, [], "0.2.0", "no release key pinned (release_keys in config.json)"),
        ("unsigned", {**good, "signature": "00" * 64}, pinned, "0.2.0", "not by a pinned"),
        ("signature not hex", {**good, "signature": "zz" * 64}, pinned, "0.2.0", "not by a pinned"),
        ("signed by another key", release_params(rogue, "0.3.0"), [b64(key)], "0.2.0", "not by"),
        ("a tampered release", tampered, pinned, "0.2.0", "not by a pinned release key"),
        ("another bundle", other_sha, pinned, "0.2.0", "signed release is for another bundle"),
        (
            "another platform",
            release_params(key, "0.3.0", platform="esp32"),
            pinned,
            "0.2.0",
            "release is for esp32, this is linux",
        ),
        (
            "a downgrade",
            release_params(key, "0.1.9"),
            pinned,
            "0.2.0",
            "downgrade from 0.2.0 to 0.1.9 not allowed by the command",
        ),
        (
            "a downgrade by the numbers, not the text",
            release_params(key, "0.2.9"),
            pinned,
            "0.2.10",
            "downgrade from 0.2.10 to 0.2.9 not allowed by the command",
        ),
    ]
    jobs = [{"op": "release", "params": p, "keys": k, "running": r} for _, p, k, r, _ in cases]
    for (what, _, _, _, want), res in zip(cases, run_jobs(jobs), strict=True):
        if want[0].isdigit():
            assert res == {"version": want}, what
        else:
            assert want in res.get("error", ""), (what, res)


def test_a_refused_update_writes_nothing_and_queues_no_download(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    slot = tmp_path / "app_b"  # where a download would go
    jobs = [
        {"op": "start", "params": release_params(key, "0.0.1"), "keys": [b64(key)]},
        {"op": "start", "params": release_params(Ed25519PrivateKey.generate(), "0.9.0")},
        {"op": "start", "params": release_params(key, "0.9.0"), "keys": [b64(key)]},
        {"op": "start", "params": release_params(key, "0.9.0"), "keys": ["bm90IGEga2V5"]},
    ]
    jobs[1]["keys"] = [b64(key)]
    for job in jobs:
        job["slot"] = str(slot)
    refused_old, refused_unsigned, taken, bad_key = run_jobs(jobs)
    # The running firmware is edge/node.py's FIRMWARE (0.1.0).
    assert refused_old == {
        "error": "downgrade from 0.1.0 to 0.0.1 not allowed by the command",
        "job": False,
        "slot": None,
    }
    assert refused_unsigned == {
        "error": "release signature not by a pinned release key",
        "job": False,
        "slot": None,
    }
    assert bad_key["job"] is False and "is not a base64 Ed25519 public key" in bad_key["error"]
    assert taken == {"answer": "downloading into app b", "job": True, "slot": None}
