"""`aiot bench store`: what a plug's readings take in the hub store, and what
a retention step costs.

A real Store (LMDB in a temporary folder) applies a plug's readings as ingest
would: 3 sensors at 1 Hz (power, energy counter, voltage), 10 samples per
uplink batch, 100 batches per apply. The live bytes it gains (every table:
readings, their hours index, the energy index, the hourly and daily rollups)
divided by the readings stored is the cost of one reading; a GiB over the
bytes of one plug-day is the days of raw data a GiB holds per plug (its
rollups included: a day's are 75 rows of 48 bytes and keys). Then the
retention steps that delete the first half, ``step_records`` at most each,
are timed one by one: the longest step is how long apply is busy with one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m

SAMPLES_PER_BATCH: Final = 10
BATCHES_PER_APPLY: Final = 100
SENSORS: Final = 3  # power W, energy counter Wh, voltage V
GIB: Final = 1 << 30
DAY_S: Final = 86_400
_BASE_TS: Final = 1_763_596_800_000  # 2025-11-20 00:00 UTC


def _plug_batches(device_id: str, hours: float) -> list[bytes]:
    out, wh, seq = [], 0.0, 1
    for t in range(0, int(hours * 3600), SAMPLES_PER_BATCH):
        rs = []
        for j in range(SAMPLES_PER_BATCH):
            watts = 400.0 + ((t + j) * 37 % 900)
            wh += watts / 3600
            rs += [
                m.Reading(0, j * 1000, watts),
                m.Reading(1, j * 1000, wh),
                m.Reading(2, j * 1000, 229.0 + ((t + j) % 7) / 3),
            ]
        msg = m.TelemetryBatch(device_id, 1, seq, _BASE_TS + t * 1000, tuple(rs))
        out.append(e.encode(e.Batch.from_message(msg, "hub-1")))
        seq += len(rs)
    return out


def store(
    hours: float = 24.0, step_records: int = 20_000, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """The figures above, for ``hours`` of one plug."""
    device = "plug-1"
    cap = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
    register = e.RegisterDevice(e.Device(device, b"k" * 32, (cap,), None, ""), 1)
    with tempfile.TemporaryDirectory(prefix="aiot-bench-store-") as tmp:
        s = Store(Path(tmp) / "store", map_size=4 * GIB)
        try:
            s.apply([(1, e.encode(register))])
            before = s.usage()
            batches = _plug_batches(device, hours)
            say(f"applying {hours:g} h of one plug ({len(batches)} batches)...")
            index, t0 = 2, time.perf_counter()
            for i in range(0, len(batches), BATCHES_PER_APPLY):
                part = batches[i : i + BATCHES_PER_APPLY]
                s.apply(list(enumerate(part, index)))
                index += len(part)
            apply_s = time.perf_counter() - t0
            after = s.usage()
            readings = s.watermark(device)
            rollups = len(s.rollups(device, 0, 2**62)) + len(
                s.rollups(device, 0, 2**62, None, "day")
            )
            per = (after.used - before.used) / readings
            say("retention steps over the first half...")
            cut = _BASE_TS + int(hours * 3600 * 1000 / 2)
            steps: list[float] = []
            removed = 0
            while True:
                prune = e.Prune((e.PruneDevice(device, cut, 0),), step_records, 0)
                t1 = time.perf_counter()
                (res,) = s.apply([(index, e.encode(prune))])
                index += 1
                if not res.removed:
                    break
                steps.append(time.perf_counter() - t1)
                removed += res.removed
            freed = after.used - s.usage().used
        finally:
            s.close()
    plug_day = per * SENSORS * DAY_S
    return {
        "hours": hours,
        "readings": readings,
        "bytes_per_reading": round(per, 1),
        "file_bytes_per_reading": round((after.high - before.high) / readings, 1),
        "wire_bytes_per_reading": 8,  # what a reading takes in a BATCH entry
        "bytes_per_plug_day": round(plug_day),
        "days_per_gib_per_plug": round(GIB / plug_day, 1),
        "rollup_rows": rollups,
        "apply_readings_per_s": round(readings / apply_s),
        "retention_step_records": step_records,
        "retention_steps": len(steps),
        "retention_removed": removed,
        "retention_step_max_ms": round(1000 * max(steps), 1) if steps else None,
        "retention_freed_bytes": freed,
    }
