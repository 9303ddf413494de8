"""`aiot bench ingest --json` and `aiot bench failover --json` end to end with
tiny parameters: three real hub processes, each with its own Mosquitto. They
check that the figures are present and consistent, never timings or bars."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.support import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.bench]


def aiot_bench(*args: str, timeout: float = 280) -> dict[str, Any]:
    need_mosquitto()
    # Its own process group, so a timeout takes the hubs and brokers with it.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "bench", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"aiot bench {args[0]} ran over {timeout} s:\n{err}") from None
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    doc: dict[str, Any] = json.loads(lines[0])
    return doc


def test_bench_ingest_json_is_complete_and_consistent() -> None:
    doc = aiot_bench(
        "ingest",
        *("--seconds", "3", "--latency-seconds", "2", "--warmup", "1", "--devices", "6"),
        "--journal-baseline",
    )
    assert doc["bench"] == "ingest"
    for key in (
        "readings_per_s",
        "ack_latency_ms_p50",
        "ack_latency_ms_p99",
        "baseline_readings_per_s",
        "ratio",
        "bars",
        "nodes",
        "devices",
        "batch_readings",
        "duration_s",
        "rejects",
        "failures",
        "machine",
    ):
        assert key in doc, key
    assert doc["nodes"] == 3 and doc["devices"] == 6 and doc["batch_readings"] == 32
    assert doc["duration_s"] == 3
    assert set(doc["bars"]) == {"readings_per_s_at_least_20000", "ack_latency_ms_p99_at_most_250"}
    assert all(isinstance(v, bool) for v in doc["bars"].values())

    # Nothing was refused or failed; every batch sent was acknowledged.
    assert doc["rejects"] == {} and doc["failures"] == {}
    t = doc["throughput"]
    assert t["unacked_batches_at_end"] == 0 and t["disconnects"] == 0
    assert t["devices_out_of_frames"] == 0
    # The rate is what the watermarks covered in the measured window, in whole batches.
    assert t["readings"] > 0 and t["readings"] % 32 == 0
    assert doc["readings_per_s"] == pytest.approx(t["readings"] / t["seconds"], rel=1e-3)
    assert t["per_second_min"] <= t["per_second_max"]
    assert t["batches_published"] * 32 >= t["readings"]
    # Every batch acked by a hub was published; a Raft entry groups one or more.
    assert doc["acked_batches_by_hubs"] >= t["batches_published"]
    assert t["batches_per_raft_entry"] >= 1

    lat = doc["latency"]
    assert lat["offered_readings_per_s"] == pytest.approx(doc["readings_per_s"] / 2, rel=1e-3)
    assert lat["samples"] > 0 and lat["unacked_batches_at_end"] == 0
    assert 0 < doc["ack_latency_ms_p50"] <= lat["ack_latency_ms_p90"]
    assert lat["ack_latency_ms_p90"] <= doc["ack_latency_ms_p99"] <= lat["ack_latency_ms_max"]

    base = doc["baseline"]
    assert base["readings"] > 0 and base["readings"] % 32 == 0
    assert base["unacked_batches_at_end"] == 0 and base["devices_out_of_frames"] == 0
    assert doc["baseline_readings_per_s"] == pytest.approx(
        base["readings"] / base["seconds"], rel=1e-3
    )
    assert doc["ratio"] == pytest.approx(
        doc["readings_per_s"] / doc["baseline_readings_per_s"], rel=1e-3
    )
    for cpu in (t["cpu_cores"], lat["cpu_cores"], base["cpu_cores"]):
        assert cpu["machine_cores"] == doc["machine"]["cores"]
        assert cpu["all_of_the_above"] >= 0 and cpu["machine_busy"] >= 0

    # The Raft journal: synced in the measured run, never with the switch off.
    assert doc["raft_journal_flushes"] > 0 and doc["raft_journal_flush_ms_mean"] > 0
    off = doc["undurable_journal"]
    assert off["raft_journal_flushes"] == 0 and off["raft_journal_flush_ms_mean"] is None
    assert off["rejects"] == {} and off["failures"] == {}
    assert off["readings_per_s"] > 0 and off["throughput"]["unacked_batches_at_end"] == 0
    assert off["latency"]["samples"] > 0
    cost = doc["durable_journal_cost"]
    assert cost["readings_per_s_ratio"] == pytest.approx(
        doc["readings_per_s"] / off["readings_per_s"], rel=1e-3
    )
    assert cost["ack_latency_ms_p99_added"] == pytest.approx(
        doc["ack_latency_ms_p99"] - off["ack_latency_ms_p99"], abs=0.11
    )


def test_bench_failover_json_is_complete_and_consistent() -> None:
    doc = aiot_bench(
        "failover",
        *("--kills", "1", "--rate", "2000", "--devices", "6", "--settle", "3", "--pre", "2"),
        *("--observe", "20", "--ack-timeout-ms", "1500"),
    )
    assert doc["bench"] == "failover"
    for key in (
        "leader_kill_to_first_commit_s",
        "leader_kill_to_90pct_rate_s",
        "first_commit_samples_s",
        "rate_90pct_samples_s",
        "election",
        "bars",
    ):
        assert key in doc, key
    assert doc["kills"] == 1 and len(doc["killed"]) == 1
    assert doc["killed"][0] in {"hub-1", "hub-2", "hub-3"}
    assert len(doc["first_commit_samples_s"]) == len(doc["rate_90pct_samples_s"]) == 1
    first = doc["first_commit_samples_s"][0]
    assert first is not None and first > 0
    assert doc["leader_kill_to_first_commit_s"] == first  # the median of one sample
    rec = doc["rate_90pct_samples_s"][0]
    assert rec is None or rec >= 1.0  # the end of a whole 1 s window after the kill
    assert doc["leader_kill_to_90pct_rate_s"] == rec
    assert len(doc["pre_kill_readings_per_s"]) == len(doc["restart_to_ready_s"]) == 1
    assert doc["pre_kill_readings_per_s"][0] > 0
    e = doc["election"]
    assert 0 < e["election_min_ms"] <= e["election_max_ms"]
    assert isinstance(doc["bars"]["leader_kill_to_first_commit_s_at_most_3"], bool)
    gen = doc["generator"]
    # The killed leader's broker died with it: its devices (if it had any) reconnected.
    assert gen["reconnects"] <= gen["disconnects"]
    assert gen["devices_out_of_frames"] == 0
    assert sum(gen["connected_to_at_end"].values()) == doc["devices"] == 6
