"""The cluster tests' exactly-once check (tests/cluster/hubs.py readings_problems)
on crafted listings: it passes what a node really lists, and fails on each
way of storing or listing a reading wrongly."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.hubs import readings_problems

pytestmark = pytest.mark.unit

T0 = 1_763_700_000_000


def sample_rows(first_seq: int, ts: int, power: float, energy: float) -> list[dict[str, Any]]:
    """One sample of a plug: power, energy and voltage at one device time."""
    values = (power, energy, 230.0 - power / 2000)
    return [
        {"seq": first_seq + k, "ts_ms": ts, "sensor": k, "value": v} for k, v in enumerate(values)
    ]


def plug_listing(samples: int = 10) -> list[dict[str, Any]]:
    """A plug's readings, sampled every 10 ms. The device clock slewed back
    10 ms after the fourth sample, so the fifth has the fourth's device time
    (and its energy); that is no duplicate."""
    rows: list[dict[str, Any]] = []
    ts = T0
    for i in range(samples):
        if i == 4:
            ts -= 10
        rows += sample_rows(1 + 3 * i, ts, 140.0 + i * 0.7, 12.5)
        ts += 10
    return rows


def listed(rows: list[dict[str, Any]], truncated: bool = False) -> dict[str, Any]:
    # The API lists by device time, then seq.
    return {"truncated": truncated, "readings": sorted(rows, key=lambda r: (r["ts_ms"], r["seq"]))}


def problems(rows: list[dict[str, Any]], watermark: int = 30, acked: int = 30, **kw: Any) -> str:
    lost_before = kw.pop("lost_before", 0)
    return "\n".join(readings_problems("plug-1", listed(rows, **kw), watermark, lost_before, acked))


def test_a_real_listing_passes_with_a_clock_slew_in_it() -> None:
    rows = plug_listing()
    assert [r["ts_ms"] for r in rows[9:15]] == [T0 + 30] * 6  # two samples, one device time
    assert problems(rows) == ""
    assert problems(rows, acked=25) == ""  # acked less than stored: fine


def test_a_sample_stored_again_under_new_seqs_fails() -> None:
    rows = plug_listing()
    again = [{**r, "seq": 31 + k} for k, r in enumerate(rows[6:9])]  # sample 3 as 31..33
    assert "stored twice, under seqs [7, 8, 9] and [31, 32, 33]" in problems(
        rows + again, watermark=33
    )
    # The seq check of before passed this listing: every seq once, 1..33 there.
    seqs = [r["seq"] for r in rows + again]
    assert len(seqs) == len(set(seqs)) and set(range(1, 34)) <= set(seqs)


def test_one_reading_stored_again_under_a_new_seq_fails() -> None:
    rows = plug_listing()
    power = {**rows[3], "seq": 31}  # sample 2's power reading, alone, once more
    assert "stored twice, under seqs [4, 5, 6] and [31]" in problems([*rows, power], watermark=31)


def test_a_listing_that_disagrees_with_the_watermark_fails() -> None:
    rows = plug_listing()
    gone = [r for r in rows if r["seq"] != 17]  # stored (the watermark says so), not listed
    assert "reports watermark 30 (lost_before 0) but lists 29 of the 30" in problems(gone, acked=10)
    assert "but lists 30 of the 32" in problems(rows, watermark=32, acked=10)


def test_readings_declared_lost_are_not_counted() -> None:
    rows = [r for r in plug_listing() if r["seq"] >= 10]  # 1..9 lost, declared lost
    assert problems(rows, acked=0, lost_before=10) == ""
    assert "lists 21 of the 22" in problems(rows, acked=0, lost_before=9)


def test_a_truncated_listing_a_seq_listed_twice_and_acks_past_the_store_fail() -> None:
    rows = plug_listing()
    assert "the listing is truncated" in problems(rows, truncated=True)
    assert "sequence numbers listed twice: [12]" in problems([*rows, rows[11]])
    assert "acknowledged up to 31, watermark 30" in problems(rows, acked=31)
    short = [r for r in rows if r["seq"] != 5]
    assert "acknowledged readings missing (1 of 30, first [5])" in problems(short, watermark=4)
