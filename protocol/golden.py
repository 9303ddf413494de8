"""Golden test vectors: every message type, written by both codecs.

    python -m protocol.golden            # rewrite protocol/vectors/
    python -m protocol.golden --check    # exit 1 if protocol/vectors/ is stale

For each case in ``CASES`` there are two vectors, ``<case>-official`` (the
official FlatBuffers runtime, protocol/wire.py) and ``<case>-edge``
(edge/codec.py). Each ``NAME.bin`` holds the Envelope bytes and ``NAME.json``
is exactly what ``flatc --json --strict-json --raw-binary protocol/aiot.fbs
-- NAME.bin`` prints. ``MANIFEST.json`` records the test key and each
vector's HMAC-SHA256 trailer, so both HMAC implementations are pinned too.

Every value is exactly representable as a float32, so flatc's printing, the
two codecs and the expected messages agree without tolerances.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from edge import codec as edge_codec
from protocol import messages as m
from protocol import wire
from protocol.gen import flatc

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "aiot.fbs"
VECTORS = HERE / "vectors"
# The key every vector is signed with. Test material only.
TEST_KEY: Final = bytes(range(32))

_RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
_LIMIT = m.Capability("limit.set", (m.ParamSpec("watts", m.ParamKind.Float, 0.0, 3680.0),))
_NOTIFY = m.Capability("notify", (m.ParamSpec("text", m.ParamKind.Text, 0.0, 120.0),))

CASES: Final[dict[str, m.Message]] = {
    # A smart plug's batch: sensor 0 power (W), 1 energy (Wh), 2 voltage (V).
    "telemetry_batch": m.TelemetryBatch(
        "plug-07",
        3,
        1025,
        1_763_700_000_000,
        tuple(
            m.Reading(i % 3, 250 * i, (1200.5 + i, 4096.25 + i / 4, 230.0 + i / 8)[i % 3])
            for i in range(32)
        ),
    ),
    "telemetry_batch_empty": m.TelemetryBatch("meter-1", 1, 1, 1_763_700_000_000, ()),
    # After drop_oldest: readings below 1201 are gone from the device.
    "telemetry_batch_lost": m.TelemetryBatch(
        "plug-07", 4, 1201, 1_763_700_300_000, (m.Reading(0, 0, 1450.5),), 1201
    ),
    "commit_ack": m.CommitAck("plug-07", 1056, 1_763_700_000_512),
    "command": m.Command(
        "c-2-00000041",
        "plug-07",
        17,
        2,
        "relay.set",
        (
            m.Param("on", False),
            m.Param("hold_s", 300),
            m.Param("limit_w", 1500.25),
            m.Param("why", "power over the limit for 10 s"),
        ),
        1_763_700_001_000,
        1_763_700_031_000,
    ),
    "command_result": m.CommandResult(
        "c-2-00000041", "plug-07", 17, m.CommandStatus.DONE, m.Reason.NONE, "", 1_763_700_001_042
    ),
    "command_result_rejected": m.CommandResult(
        "c-1-00000007",
        "plug-07",
        9,
        m.CommandStatus.REJECTED,
        m.Reason.STALE_TERM,
        "term 1 below fence 2",
        1_763_700_002_000,
    ),
    "device_status": m.DeviceStatus(
        "plug-07",
        m.LinkState.ONLINE,
        "0.1.0",
        3,
        86_400,
        61_440,
        125,
        64,
        0,
        2,
        1,
        (_RELAY, _LIMIT, _NOTIFY),
    ),
    "device_status_offline": m.DeviceStatus("plug-07", m.LinkState.OFFLINE),
}


def edge_encode(msg: m.Message) -> bytes:
    """Envelope bytes for ``msg`` from edge/codec.py."""
    kind = type(msg).__name__
    return bytes(edge_codec.Encoder(4096).message(kind, m.to_edge_fields(msg)))


def flatc_json(bin_paths: list[Path], out_dir: Path, defaults: bool = False) -> dict[str, str]:
    """Run ``flatc --json`` on each file; return {stem: printed text}."""
    args = [flatc(), "--json", "--strict-json", "--raw-binary", "-o", str(out_dir)]
    if defaults:
        args.append("--defaults-json")
    subprocess.run([*args, str(SCHEMA), "--", *map(str, bin_paths)], check=True)
    return {p.stem: (out_dir / f"{p.stem}.json").read_text() for p in bin_paths}


def build(out: Path) -> None:
    """Write every vector, its flatc JSON and the manifest into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "key_hex": TEST_KEY.hex(),
        "trailer": "HMAC-SHA256(key, NAME.bin), 32 bytes, appended to NAME.bin on the wire",
        "vectors": {},
    }
    paths = []
    for case, msg in CASES.items():
        for producer, data in (("official", wire.encode(msg)), ("edge", edge_encode(msg))):
            name = f"{case}-{producer}"
            path = out / f"{name}.bin"
            path.write_bytes(data)
            paths.append(path)
            manifest["vectors"][name] = {
                "case": case,
                "producer": producer,
                "type": type(msg).__name__,
                "size": len(data),
                "hmac_hex": wire.sign(data, TEST_KEY).hex(),
            }
    flatc_json(paths, out)
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="golden vectors for the aiot wire protocol")
    parser.add_argument("--check", action="store_true", help="fail if protocol/vectors is stale")
    args = parser.parse_args(argv)
    if not args.check:
        for old in VECTORS.glob("*"):
            old.unlink()
        build(VECTORS)
        print(f"wrote {len(list(VECTORS.glob('*.bin')))} vectors to protocol/vectors")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        want = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    have = {p.name: p.read_bytes() for p in VECTORS.iterdir()}
    stale = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    if stale:
        print(f"protocol/vectors is stale ({', '.join(stale)}): run `make protocol`")
        return 1
    print(f"protocol/vectors is up to date ({len(want)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
