"""`aiot bench all`: every benchmark in one go, and the report it rewrites.

The end-to-end test runs ``aiot bench all --quick --json --out <a copy of
docs/BENCHMARKS.md>``: real hub clusters, real MicroPython, real Mosquitto.
It checks that the JSON object is complete and consistent with itself and
that the report's table and history are what the run says, never a timing or
whether a bar was met. The report's parsing and rewriting are also checked
on their own, without running anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.support import ROOT, micropython
from tools.bench import suite as ba

DOC = ROOT / "docs" / "BENCHMARKS.md"


def _outside(text: str) -> str:
    """The report without the two generated blocks."""
    head, rest = text.split(ba.TABLE_BEGIN, 1)
    mid, rest = rest.split(ba.TABLE_END, 1)[1].split(ba.HISTORY_BEGIN, 1)
    return head + mid + rest.split(ba.HISTORY_END, 1)[1]


def _bar_holds(bar: str, value: Any) -> bool | None:
    if not bar or value is None:
        return None
    op, _, limit = bar.partition(" ")
    if op == "=":
        want: Any = True if limit == "true" else float(limit.replace(",", ""))
        return bool(value == want)
    number = float(limit.replace(",", ""))
    return value <= number if op == "≤" else value >= number


# -- the report on its own ------------------------------------------------------------------


def _summary(quick: bool = False, shared: bool = True) -> dict[str, Any]:
    results = {
        "codec": {
            "edge_encode_per_s_micropython": 200.0,
            "official_encode_per_s_cpython": 100.0,
            "bytes_per_reading": 11.875,
            "frame_bytes_official": 376,
            "batch_readings": 32,
        },
        "soak": {"converged": True, "acked_readings_missing": 0, "fd_growth_max": 2},
    }
    commands = {"codec": "aiot bench codec --json", "soak": "aiot bench soak --json"}
    return {
        "quick": quick,
        "started": "2026-11-23T10:00:00+00:00",
        "seconds": 60.0,
        "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11.7", "memory_mib": 1024},
        "cpu": {
            "other_processes_cores": 1.2 if shared else 0.0,
            "benchmarks_cores": 0.8,
            "machine_cores": 2,
            "shared": shared,
        },
        "table": ba.rows(results, commands),
        "results": results,
        "errors": {},
    }


@pytest.mark.unit
def test_rows_compute_ratio_and_bars_from_the_results() -> None:
    table = {r["figure"]: r for r in _summary()["table"]}
    enc = table["codec.edge_encode_per_s_micropython"]
    assert (enc["value"], enc["baseline"], enc["ratio"], enc["bar_met"]) == (
        200.0,
        100.0,
        2.0,
        None,
    )
    size = table["codec.bytes_per_reading"]
    assert (size["baseline"], size["ratio"], size["bar"], size["bar_met"]) == (
        11.75,
        1.0106,
        "≤ 12",
        True,
    )
    assert table["soak.fd_growth_max"]["bar_met"] is False  # 2 descriptors more
    assert table["soak.converged"]["bar_met"] is True
    assert table["soak.rss_growth_pct_max"]["value"] is None  # not in the results
    assert table["soak.rss_growth_pct_max"]["bar_met"] is None


@pytest.mark.unit
def test_a_run_replaces_the_table_and_appends_to_the_history() -> None:
    text = DOC.read_text()
    old = ba.history_rows(text)
    assert old, "docs/BENCHMARKS.md has a history table"
    summary = _summary()
    first, previous = ba.update_doc(text, summary)
    assert _outside(first) == _outside(text)  # everything written by hand is kept
    rows = ba.history_rows(first)
    assert rows[: len(old)] == old
    added = rows[len(old) :]
    assert [r["figure"] for r in added] == [r["figure"] for r in summary["table"]]
    assert all(r["machine"] == "Test CPU, 2 cores, Python 3.11.7" for r in added)
    assert all(r["note"].startswith("shared (1.20 cores)") for r in added)
    assert previous == {}  # no earlier run on this machine
    # A second run finds the first one's values as previous ones, and keeps both.
    second, previous = ba.update_doc(first, summary)
    assert previous["codec.edge_encode_per_s_micropython"] == "200"
    assert len(ba.history_rows(second)) == len(old) + 2 * len(summary["table"])
    table = second.split(ba.TABLE_BEGIN, 1)[1].split(ba.TABLE_END, 1)[0]
    assert table.count("\n| `") == len(summary["table"])
    assert "**The machine was shared**" in table
    # A quick run is marked, and is never the previous value of a full run.
    third, _ = ba.update_doc(second, _summary(quick=True))
    assert all(
        "quick" in r["note"] for r in ba.history_rows(third)[len(old) + 2 * len(summary["table"]) :]
    )
    assert ba.update_doc(third, summary)[1]["codec.edge_encode_per_s_micropython"] == "200"


@pytest.mark.unit
def test_cells_with_pipes_survive_a_round_trip() -> None:
    row = dict.fromkeys(ba.HISTORY_COLUMNS, "a | b")
    doc = ba.EMPTY_DOC.replace(
        ba.HISTORY_END,
        "| "
        + " | ".join(ba.HISTORY_COLUMNS)
        + " |\n"
        + ba._history_line(row)
        + "\n"
        + ba.HISTORY_END,
    )
    assert ba.history_rows(doc) == [row]


@pytest.mark.unit
def test_a_report_without_markers_gets_them_and_keeps_its_text() -> None:
    new, _ = ba.update_doc("# Old notes\n\nsome figure: 42\n", _summary())
    assert ba.TABLE_BEGIN in new and ba.HISTORY_BEGIN in new
    assert "some figure: 42" in new
    assert len(ba.history_rows(new)) == len(_summary()["table"])


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.bench
@pytest.mark.cluster
@pytest.mark.micropython
@pytest.mark.timeout(1500)
def test_bench_all_quick_json_is_complete_and_its_report_consistent(tmp_path: Path) -> None:
    need_mosquitto()
    micropython()
    report = tmp_path / "BENCHMARKS.md"
    shutil.copy(DOC, report)
    before = report.read_text()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.cli",
            "bench",
            "all",
            "--quick",
            "--json",
            "--out",
            str(report),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # a timeout takes the hubs, brokers and devices with it
    )
    try:
        out, err = proc.communicate(timeout=1400)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"aiot bench all --quick ran too long:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    lines = out.strip().splitlines()
    assert len(lines) == 1, out[-2000:]
    doc: dict[str, Any] = json.loads(lines[0])

    assert doc["bench"] == "all" and doc["quick"] is True
    assert doc["errors"] == {}
    assert set(doc["results"]) == set(ba.BENCHES) == set(doc["commands"])
    for bench, res in doc["results"].items():
        assert res.get("bench", bench) == bench  # decide does not name itself
        assert doc["commands"][bench].startswith(f"aiot bench {bench} ")
    for key in ("cpu", "cores", "python", "micropython", "mosquitto"):
        assert key in doc["machine"], key
    assert isinstance(doc["cpu"]["shared"], bool)
    assert doc["report"] == str(report)

    # Every figure, taken from its benchmark's own result, with a consistent ratio and bar.
    table = doc["table"]
    figures = [r["figure"] for r in table]
    assert len(figures) == len(set(figures))
    for f in ba.FIGURES:
        assert f"{f.bench}.{f.key}" in figures
    for row in table:
        bench, key = row["figure"].split(".", 1)
        assert row["value"] == doc["results"][bench][key], row
        assert row["command"] == doc["commands"][bench]
        if isinstance(row["value"], int | float) and row["baseline"]:
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=1e-3, abs=1e-4)
        else:
            assert row["ratio"] is None
        assert row["bar_met"] == _bar_holds(row["bar"], row["value"]), row
        assert "previous" in row
    assert doc["bars_missed"] == [r["figure"] for r in table if r["bar_met"] is False]

    # The short soak ran at half the ingest rate this run measured.
    ingest, soak = doc["results"]["ingest"], doc["results"]["soak"]
    assert soak["offered_readings_per_s"] == pytest.approx(ingest["readings_per_s"] / 2, rel=1e-3)
    assert soak["rate_source"] == "given"
    assert set(soak["hubs"]) == {"hub-1", "hub-2", "hub-3"}

    # The report: this run's table, the old history and this run's rows after it.
    after = report.read_text()
    assert _outside(after) == _outside(before)
    old, new = ba.history_rows(before), ba.history_rows(after)
    assert new[: len(old)] == old
    added = new[len(old) :]
    assert [r["figure"] for r in added] == figures
    assert all("quick" in r["note"] for r in added)
    assert all(r["date"] == doc["started"][:10] for r in added)
    block = after.split(ba.TABLE_BEGIN, 1)[1].split(ba.TABLE_END, 1)[0]
    assert "`aiot bench all --quick --json`" in block
    for row in table:
        assert f"| `{row['figure']}` | {ba.fmt(row['value'])} |" in block
