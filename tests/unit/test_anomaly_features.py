"""Window features (hub/decide/anomaly.py) and the per-device rolling windows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import sensors
from hub.decide import anomaly as an
from hub.state.records import StoredReading
from tools.ml import anomaly_train as at

pytestmark = pytest.mark.unit

F = {name: i for i, name in enumerate(an.FEATURES)}


def plug_rows(seed: int = 3, minutes: float = 4.0, event_every_s: int = 60) -> Any:
    spec = at.PlugSpec(seed, event_every_s, 1000, 2000.0, 0.0)
    return at.simulate(spec, minutes / 60.0)


def power_window(values: list[float], step_ms: int = 1000) -> list[tuple[int, int, float]]:
    return [(1000 + i * step_ms, an.POWER_W, v) for i, v in enumerate(values)]


def test_sensor_ids_match_the_edge() -> None:
    assert an.POWER_W == sensors.POWER_W
    assert an.ENERGY_WH == sensors.ENERGY_WH


def test_feature_vector_shape_and_names() -> None:
    x = an.window_features(at.readings(plug_rows()[:60]))
    assert x.dtype == np.float32
    assert x.shape == (an.N_FEATURES,) == (len(an.FEATURES),)
    assert np.all(np.isfinite(x))


def test_empty_window_is_refused() -> None:
    with pytest.raises(an.FeatureError) as err:
        an.window_features([])
    assert err.value.reason == "too_few_readings"


def test_too_few_power_readings_are_refused() -> None:
    readings = power_window([100.0] * (an.MIN_POWER_READINGS - 1))
    readings += [(5000 + i, an.ENERGY_WH, float(i)) for i in range(20)]
    with pytest.raises(an.FeatureError) as err:
        an.window_features(readings)
    assert err.value.reason == "too_few_readings"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    readings = power_window([100.0, 101.0, bad, 99.0, 100.0, 98.0])
    with pytest.raises(an.FeatureError) as err:
        an.window_features(readings)
    assert err.value.reason == "non_finite"
    assert "ts_ms 3000" in str(err.value)


def test_non_finite_energy_is_refused_too() -> None:
    readings = [*power_window([100.0] * 6), (1000, an.ENERGY_WH, math.nan)]
    with pytest.raises(an.FeatureError, match="non_finite"):
        an.window_features(readings)


def test_non_finite_reading_of_an_unused_sensor_is_ignored() -> None:
    readings = [*power_window([100.0, 101.0, 99.0, 100.0, 102.0]), (1000, 2, math.nan)]
    assert np.all(np.isfinite(an.window_features(readings)))


def test_all_readings_at_one_instant_are_refused() -> None:
    readings = [(5000, an.POWER_W, 100.0 + i) for i in range(10)]
    with pytest.raises(an.FeatureError) as err:
        an.window_features(readings)
    assert err.value.reason == "no_time_span"


@pytest.mark.parametrize("limit", [0.0, -5.0, math.nan, math.inf])
def test_bad_limit_is_refused(limit: float) -> None:
    with pytest.raises(an.FeatureError) as err:
        an.window_features(power_window([100.0] * 10), limit)
    assert err.value.reason == "bad_limit"


def test_constant_live_power_is_a_full_flat_run() -> None:
    x = an.window_features(power_window([173.4] * 60))
    assert x[F["power_std_kw"]] == 0.0
    assert x[F["linear_r2"]] == 0.0
    assert x[F["slope_kw_per_min"]] == 0.0
    assert x[F["flat_run_frac"]] == 1.0
    assert x[F["spike_kw"]] == 0.0


def test_constant_zero_power_is_not_a_flat_run() -> None:
    # A plug switched off reads 0 W unchanging: that is not a stuck sensor.
    x = an.window_features(power_window([0.0] * 60))
    assert x[F["flat_run_frac"]] == 0.0
    assert x[F["power_mean_kw"]] == 0.0


def test_spike_is_measured_against_the_local_median() -> None:
    values = [100.0] * 60
    values[30] = 4100.0
    x = an.window_features(power_window(values))
    assert x[F["spike_kw"]] == pytest.approx(4.0)
    # A step (an appliance switching on) is not a spike, not even at the
    # window's edge, and neither is a dip between two appliances.
    step = [100.0] * 30 + [2100.0] * 30
    assert an.window_features(power_window(step))[F["spike_kw"]] == 0.0
    edge = [100.0] + [2100.0] * 59
    assert an.window_features(power_window(edge))[F["spike_kw"]] == 0.0
    dip = [2000.0] * 30 + [40.0] + [1800.0] * 29
    assert an.window_features(power_window(dip))[F["spike_kw"]] == 0.0
    two = [100.0] * 60
    two[10:12] = [3100.0, 3100.0]
    assert an.window_features(power_window(two))[F["spike_kw"]] == pytest.approx(3.0)


def test_gap_ratio_sees_missing_readings() -> None:
    readings = power_window([100.0 + (i % 3) for i in range(60)])
    assert an.window_features(readings)[F["log2_gap_ratio"]] == 0.0
    with_gap = readings[:30] + [(ts + 15_000, s, v) for ts, s, v in readings[30:]]
    assert an.window_features(with_gap)[F["log2_gap_ratio"]] == pytest.approx(math.log2(16))


def test_slope_and_fit_of_a_ramp() -> None:
    ramp = [100.0 + 20.0 * i for i in range(61)]  # 20 W per second
    x = an.window_features(power_window(ramp))
    assert x[F["slope_kw_per_min"]] == pytest.approx(1.2, rel=1e-4)
    assert x[F["linear_r2"]] == pytest.approx(1.0)


def test_over_limit_fraction_uses_the_given_limit() -> None:
    values = [100.0] * 45 + [2500.0] * 15
    assert an.window_features(power_window(values))[F["over_limit_frac"]] == pytest.approx(0.25)
    assert an.window_features(power_window(values), 3000.0)[F["over_limit_frac"]] == 0.0
    assert an.window_features(power_window(values), 50.0)[F["over_limit_frac"]] == 1.0


def test_energy_counter_agrees_with_power_on_simulated_plugs() -> None:
    rows = plug_rows(seed=11, minutes=10)
    for k in range(0, len(rows) - 60, 60):
        x = an.window_features(at.readings(rows[k : k + 60]))
        assert abs(float(x[F["energy_gap_kw"]])) < 0.005


def test_energy_gap_sees_a_power_reading_the_counter_did_not_count() -> None:
    rows = plug_rows(seed=11).copy()[:60]
    rows[20:22, 1] += 3000.0
    x = an.window_features(at.readings(rows))
    assert float(x[F["energy_gap_kw"]]) == pytest.approx(-0.1, abs=0.01)  # 6 kWs over 59 s


def test_without_energy_readings_the_energy_gap_is_zero() -> None:
    readings = [r for r in at.readings(plug_rows()[:60]) if r[1] == an.POWER_W]
    assert an.window_features(readings)[F["energy_gap_kw"]] == 0.0


def test_stored_readings_and_tuples_give_the_same_features() -> None:
    readings = at.readings(plug_rows()[:60])
    stored = [StoredReading(i, ts, s, v) for i, (ts, s, v) in enumerate(readings)]
    assert np.array_equal(an.window_features(stored), an.window_features(readings))


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=0.0, max_value=5000.0, allow_nan=False), min_size=5, max_size=80
    ),
    energy=st.lists(
        st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=0, max_size=80
    ),
    steps=st.lists(st.integers(min_value=1, max_value=60_000), min_size=80, max_size=80),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_features_are_finite_and_ignore_reading_order(
    values: list[float], energy: list[float], steps: list[int], seed: int
) -> None:
    ts = np.cumsum(steps).tolist()
    readings = [(int(ts[i]), an.POWER_W, v) for i, v in enumerate(values)]
    readings += [(int(ts[i]), an.ENERGY_WH, e) for i, e in enumerate(energy)]
    x = an.window_features(readings)
    assert x.shape == (an.N_FEATURES,)
    assert np.all(np.isfinite(x))
    shuffled = list(readings)
    np.random.default_rng(seed).shuffle(shuffled)
    assert np.array_equal(an.window_features(shuffled), x)


# -- rolling windows ----------------------------------------------------------------


@dataclass
class FlatScorer:
    """A stand-in model: the score is the window's flat-run fraction."""

    name: str = "fake"
    version: str = "1"
    sha256: str = "0" * 64
    threshold: float = 0.5
    calls: int = 0

    def score(self, features: npt.ArrayLike) -> float:
        self.calls += 1
        return float(np.asarray(features)[F["flat_run_frac"]])


def test_windows_complete_every_window_power_readings_with_the_same_features() -> None:
    rows = plug_rows(seed=5, minutes=4)
    windows = an.DeviceWindows(FlatScorer())
    got = windows.add_many("plug-1", at.readings(rows))
    # 240 samples: windows 1..3 are closed by the next sample; the 4th waits.
    assert [w.start_ms for w in got] == [int(rows[k, 0]) for k in (0, 60, 120)]
    assert [w.end_ms for w in got] == [int(rows[k + 59, 0]) for k in (0, 60, 120)]
    for w, k in zip(got, (0, 60, 120), strict=True):
        want = an.window_features(at.readings(rows[k : k + 60]))
        assert np.array_equal(np.array(w.features, dtype=np.float32), want)
        assert w.device_id == "plug-1"
        assert w.model == "fake@1"
    assert windows.pending("plug-1") == 60


def test_a_window_closes_only_when_a_later_reading_arrives() -> None:
    rows = plug_rows(seed=5, minutes=2)
    windows = an.DeviceWindows(FlatScorer())
    readings = at.readings(rows[:60])
    assert windows.add_many("p", readings) == []
    # The next sample's first reading closes it, with the energy reading of
    # the 60th sample inside.
    ts, sensor, value = at.readings(rows[60:61])[0]
    closed = windows.add("p", ts, sensor, value)
    assert closed is not None
    assert np.array_equal(np.array(closed.features, dtype=np.float32), an.window_features(readings))


def test_devices_have_their_own_windows() -> None:
    rows_a, rows_b = plug_rows(seed=1, minutes=2), plug_rows(seed=2, minutes=1.5)
    windows = an.DeviceWindows(FlatScorer())
    got_a = windows.add_many("a", at.readings(rows_a))
    got_b = windows.add_many("b", at.readings(rows_b))
    assert [w.device_id for w in got_a] == ["a"]
    assert [w.device_id for w in got_b] == ["b"]
    windows.forget("a")
    assert windows.pending("a") == 0
    assert windows.pending("b") == 30


def test_hop_gives_overlapping_windows() -> None:
    rows = plug_rows(seed=5, minutes=3)
    got = an.DeviceWindows(FlatScorer(), hop=20).add_many("p", at.readings(rows))
    assert [w.start_ms for w in got] == [int(rows[k, 0]) for k in range(0, 120, 20)]
    for w in got:
        k = int(np.searchsorted(rows[:, 0], w.start_ms))
        want = an.window_features(at.readings(rows[k : k + 60]))
        assert np.array_equal(np.array(w.features, dtype=np.float32), want)


def test_window_and_hop_are_checked() -> None:
    with pytest.raises(ValueError):
        an.DeviceWindows(FlatScorer(), window=3)
    with pytest.raises(ValueError):
        an.DeviceWindows(FlatScorer(), window=10, hop=11)
    with pytest.raises(ValueError):
        an.DeviceWindows(FlatScorer(), window=10, hop=0)


def test_a_stuck_sensor_window_is_flagged_by_the_scorer() -> None:
    windows = an.DeviceWindows(FlatScorer())
    got = windows.add_many("p", power_window([250.5] * 61))
    assert len(got) == 1
    assert got[0].anomalous
    assert got[0].feature_map()["flat_run_frac"] == 1.0


def test_non_finite_reading_is_refused_and_not_kept() -> None:
    windows = an.DeviceWindows(FlatScorer())
    windows.add_many("p", power_window([100.0] * 10))
    with pytest.raises(an.FeatureError, match="non_finite"):
        windows.add("p", 99_000, an.POWER_W, math.nan)
    assert windows.pending("p") == 10


def test_readings_of_an_already_scored_window_are_ignored() -> None:
    windows = an.DeviceWindows(FlatScorer())
    got = windows.add_many("p", power_window([100.0 + i % 7 for i in range(61)]))
    assert len(got) == 1
    assert windows.add("p", got[0].end_ms, an.ENERGY_WH, 5.0) is None
    assert windows.stale == 1
    assert windows.pending("p") == 1


def test_a_window_that_cannot_be_scored_is_dropped_once() -> None:
    windows = an.DeviceWindows(FlatScorer(), window=10)
    windows.add_many("p", [(5000, an.POWER_W, 100.0 + i) for i in range(10)])
    with pytest.raises(an.FeatureError, match="no_time_span"):
        windows.add("p", 6000, an.POWER_W, 100.0)
    # The bad window is gone; the reading that closed it starts the next one.
    assert windows.pending("p") == 1
    got = windows.add_many("p", [(7000 + i * 1000, an.POWER_W, 100.0 + i) for i in range(9)])
    assert got == []
    assert windows.pending("p") == 10


def test_a_model_assigned_between_windows_scores_the_next_one() -> None:
    first, second = FlatScorer(name="one"), FlatScorer(name="two", version="2")
    windows = an.DeviceWindows(first)
    values = [100.0 + i % 5 for i in range(200)]
    got = windows.add_many("p", power_window(values)[:61])
    windows.model = second
    got += windows.add_many("p", power_window(values)[61:121])
    assert [w.model for w in got] == ["one@1", "two@2"]
    assert (first.calls, second.calls) == (1, 1)


def test_buffer_is_bounded_for_a_device_without_power_readings() -> None:
    windows = an.DeviceWindows(FlatScorer(), window=10)
    for i in range(1000):
        windows.add("meter", 1000 + i, an.ENERGY_WH, float(i))
    assert len(windows._devices["meter"].buf) == windows.max_buffer
