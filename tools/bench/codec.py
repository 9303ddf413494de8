"""`aiot bench codec`: the edge codec on MicroPython against the official
FlatBuffers runtime on CPython, both measured in the same run, so the ratio
holds on a noisy machine; and BenchError, which every benchmark raises when
it cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import flatbuffers

from protocol import messages as m
from protocol import wire
from protocol.generated import aiot_generated as g
from protocol.golden import CASES, TEST_KEY
from protocol.verify import FILE_IDENTIFIER
from tools.base.errors import ToolError
from tools.base.paths import MPY_SCRIPTS, ROOT, micropython_binary

MPY_BENCH = MPY_SCRIPTS / "bench_codec.py"


class BenchError(ToolError):
    """A benchmark could not run; the message says what to install or fix."""


def edge_encode_rate_micropython(seconds: float) -> dict[str, Any]:
    env = dict(os.environ, MICROPYPATH=f"{ROOT}:.frozen")
    proc = subprocess.run(
        [micropython_binary(), "-X", "heapsize=96k", str(MPY_BENCH), str(seconds)],
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds * 10 + 30,
    )
    if proc.returncode != 0:
        raise BenchError(f"micropython bench failed: {proc.stderr.strip()}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def builder_encode(batch: m.TelemetryBatch, builder: flatbuffers.Builder) -> bytes:
    """The official runtime's fastest path: the generated builder functions."""
    builder.Clear()
    device_id = builder.CreateString(batch.device_id)
    g.TelemetryBatchStartReadingsVector(builder, len(batch.readings))
    for r in reversed(batch.readings):
        g.CreateReading(builder, r.sensor, r.offset_ms, r.value)
    readings = builder.EndVector()
    g.TelemetryBatchStart(builder)
    g.TelemetryBatchAddDeviceId(builder, device_id)
    g.TelemetryBatchAddBootEpoch(builder, batch.boot_epoch)
    g.TelemetryBatchAddFirstSeq(builder, batch.first_seq)
    g.TelemetryBatchAddBaseTsMs(builder, batch.base_ts_ms)
    g.TelemetryBatchAddReadings(builder, readings)
    payload = g.TelemetryBatchEnd(builder)
    g.EnvelopeStart(builder)
    g.EnvelopeAddPayloadType(builder, int(m.PayloadType.TelemetryBatch))
    g.EnvelopeAddPayload(builder, payload)
    builder.Finish(g.EnvelopeEnd(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _rate(encode: Callable[[], bytes], seconds: float) -> float:
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            wire.seal(encode(), TEST_KEY)
            n += 1
    return n / (time.perf_counter() - t0)


def codec(seconds: float = 2.0) -> dict[str, Any]:
    """Edge codec on MicroPython against the official runtime on CPython."""
    batch = CASES["telemetry_batch"]
    assert isinstance(batch, m.TelemetryBatch)
    builder = flatbuffers.Builder(512)
    if wire.decode(builder_encode(batch, builder)) != batch:
        raise BenchError("the builder baseline does not round-trip")
    # Alternate the sides over a few rounds so drift on a noisy machine hits
    # both alike.
    rounds = 3
    edge_batches, edge_seconds, frame_bytes = 0, 0.0, 0
    official_rates, object_api_rates = [], []
    for _ in range(rounds):
        edge = edge_encode_rate_micropython(seconds / rounds)
        edge_batches += edge["batches"]
        edge_seconds += edge["seconds"]
        frame_bytes = edge["frame_bytes"]
        official_rates.append(_rate(lambda: builder_encode(batch, builder), seconds / rounds))
        object_api_rates.append(_rate(lambda: wire.encode(batch), seconds / rounds))
    edge_rate = edge_batches / edge_seconds
    official_rate = sum(official_rates) / rounds
    object_api_rate = sum(object_api_rates) / rounds
    official_bytes = len(builder_encode(batch, builder)) + wire.TAG_SIZE
    return {
        "bench": "codec",
        "batch_readings": len(batch.readings),
        "device_id": batch.device_id,
        "bytes_per_reading": frame_bytes / len(batch.readings),
        "frame_bytes_edge": frame_bytes,
        "frame_bytes_official": official_bytes,
        "edge_encode_per_s_micropython": round(edge_rate, 1),
        "official_encode_per_s_cpython": round(official_rate, 1),
        "official_object_api_encode_per_s_cpython": round(object_api_rate, 1),
        "ratio": round(edge_rate / official_rate, 4),
        "seconds_per_side": seconds,
        "rounds": rounds,
        "note": (
            "encode + HMAC-SHA256 seal of one 32-reading batch; official = generated "
            "builder functions; ratio = edge / official"
        ),
    }
