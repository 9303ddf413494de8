"""When the engine consults the LLM tier without a rule firing: the device's
stated facts changed (hub/decide/factwatch.py)."""

from __future__ import annotations

import math

import pytest

from hub.decide.factwatch import FactWatch, State, power_state

pytestmark = pytest.mark.unit

UNDER = State("under", False, "off-peak", False)


def test_power_against_the_limit() -> None:
    assert power_state(2100.0, 2000.0) == "over"
    assert power_state(2000.0, 2000.0) == "near" and power_state(1800.0, 2000.0) == "near"
    assert power_state(1799.0, 2000.0) == "under"
    assert power_state(500.0, None) is None and power_state(math.nan, 2000.0) is None


def test_the_first_state_is_a_baseline_and_a_change_asks_once() -> None:
    w = FactWatch(min_interval_ms=10_000)
    assert not w.observe("plug-1", UNDER, 0)  # baseline
    assert not w.observe("plug-1", UNDER, 1_000)
    peak = State("under", False, "peak", False)
    assert w.observe("plug-1", peak, 2_000)  # the tariff period changed
    assert not w.observe("plug-1", peak, 3_000)  # nothing new
    assert w.changes == 1


def test_changes_within_the_interval_wait_and_a_flap_asks_nothing() -> None:
    w = FactWatch(min_interval_ms=10_000)
    w.observe("plug-1", UNDER, 0)
    near = State("near", False, "off-peak", False)
    over = State("over", False, "off-peak", False)
    assert w.observe("plug-1", near, 1_000)
    assert not w.observe("plug-1", over, 2_000)  # too soon after the last
    assert not w.observe("plug-1", near, 5_000)  # back to what was asked about
    assert not w.observe("plug-1", near, 12_000)  # so nothing to ask
    assert not w.observe("plug-1", over, 10_500)  # too soon again (9.5 s)
    assert w.observe("plug-1", over, 11_000)  # still over once the interval is over
    assert w.changes == 2


def test_devices_are_bounded_and_forgotten() -> None:
    w = FactWatch(max_devices=2)
    for d in ("a", "b", "c"):
        w.observe(d, UNDER, 0)
    assert not w.observe("c", State("over", None, None, False), 20_000)  # never remembered
    assert w.observe("a", State("over", None, None, False), 20_000)
    w.forget("a")
    assert not w.observe("a", UNDER, 40_000)  # a baseline again
    w.forget()
    assert not w.observe("b", State("near", None, None, True), 60_000)
