"""edge/slots.py and edge/meta.py under the real MicroPython interpreter, on
LittleFS over a RAM block device that can lose power (edge/ramdisk.py)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, run_micropython

pytestmark = pytest.mark.micropython

HERE = Path(__file__).resolve().parent
TORTURE = HERE / "slots_torture.py"
CASES = HERE / "slots_cases.py"


def case(name: str) -> dict[str, Any]:
    out = run_micropython(CASES, name, heap="1m")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("backend", ["lfs", "raw"])
def test_power_cut_at_every_program_and_erase(backend: str) -> None:
    out = run_micropython(TORTURE, backend, "count", heap="4m")
    count = json.loads(out.strip().splitlines()[-1])
    assert count["error"] is None
    # The scenario must exercise what the acceptance asks for.
    assert count["switches"] >= 2 and count["cleanups"] >= 2, count
    ops = count["ops"]
    result = json.loads(
        run_micropython(TORTURE, backend, "run", "1", str(ops), heap="4m").strip().splitlines()[-1]
    )
    assert result["failures"] == [] and result["failed"] == 0
    # Every cut point twice: the write lost, and the write torn.
    assert result["tested"] == 2 * ops


def test_torn_tail_is_truncated_and_appends_continue() -> None:
    r = case("torn_tail")
    assert r["truncated_bytes"] == 40
    assert r["intact"] and r["count"] == 90
    assert r["next_seq"] == 97 and r["appended_after"]


def test_bit_flip_loses_only_the_flipped_record() -> None:
    r = case("bit_flip")
    assert r["corrupt_records"] == 1
    assert r["missing"] == list(range(r["flipped_seq"], r["flipped_seq"] + 15))
    assert r["next_seq"] == 91  # nothing reused


def test_torn_or_flipped_metadata_falls_back_to_the_other_copy() -> None:
    r = case("meta_torn")
    watermark, next_seq, loaded_from, rejected = r["fell_back"]
    assert (watermark, next_seq, loaded_from) == (10, 20, "a") and rejected == 1
    assert r["after_save"] == [12, "b", ""]  # the save replaced the torn copy
    assert r["flip"][:2] == [12, "b"] and r["flip"][2] == 1


def test_metadata_clips_on_characters_and_falls_back_when_undecodable() -> None:
    r = case("meta_utf8")
    assert r["clipped_len"] == 200 and r["clipped_ok"] and r["watermark"] == 6
    assert r["fallback"] == [5, "a", 1]


def test_raw_flash_record_ending_in_ff_survives_a_reboot() -> None:
    r = case("raw_record_ending_in_ff")
    assert r["same"] and r["count"] == 7 and r["corrupt"] == 0
    assert r["next_seq_fresh"] and r["new_reads_back"]


def test_raw_flash_header_crc_ending_in_ff_survives_a_reboot() -> None:
    r = case("raw_header_crc_ending_in_ff")
    assert r["reread"] == 10 and r["first"] == r["want_first"]


def test_recovery_never_numbers_below_the_watermark() -> None:
    r = case("recovery_never_below_watermark")
    assert r["watermark"] == 30 and r["next_seq"] > 30


def test_overflow_drop_oldest_counts_and_keeps_the_newest() -> None:
    r = case("drop_oldest")
    assert r["accepted"] == 1500
    assert r["dropped"] == r["floor"] == r["first_stored"] - 1 > 0
    assert r["last_stored"] == 1500 and r["next_seq"] == 1501
    assert r["stored"] == r["unacked"] == 1500 - r["dropped"]
    assert r["values_match"]


def test_overflow_stop_sampling_refuses_until_cleanup() -> None:
    r = case("stop_sampling")
    assert r["accepted"] < 1500 and r["refused"] and r["stopped_before"]
    assert r["dropped"] == 0 and r["contiguous"]
    assert r["erased"] == 1 and r["resumed"] and not r["stopped_after"]


def test_cleanup_ratio_switches_early_only_while_acks_flow() -> None:
    r = case("cleanup_ratio")
    cap = r["capacity"]
    assert len(r["online"]["switch_sizes"]) >= 2 and r["online"]["erased"] >= 2
    assert all(cap * 0.5 <= s < cap * 0.75 for s in r["online"]["switch_sizes"])
    # Offline the whole slot is used before the switch.
    assert r["offline_switch_sizes"] and all(s > cap * 0.9 for s in r["offline_switch_sizes"])


def test_sequence_numbers_survive_reboots_without_reuse() -> None:
    ranges = case("reboots_never_reuse")["ranges"]
    for (a, b), (c, _d) in itertools.pairwise(ranges):
        assert a < b <= c


@pytest.mark.parametrize("name", ["torn_tail", "bit_flip", "drop_oldest", "meta_torn", "meta_utf8"])
def test_same_store_runs_on_cpython(name: str, tmp_path: Path) -> None:
    # The fleet simulator runs edge/ on CPython over a host directory.
    proc = subprocess.run(
        [sys.executable, str(CASES), name, str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == case(name)
