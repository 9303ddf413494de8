"""The home overview over a real store with a fixed clock: the local day of
the tariff's time zone (23 hours on the spring change), time-of-use costs
across midnight, power now from fresh readings only, open alerts, and a
viewer's figures from their own devices alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.core import tariff as t
from hub.http.principal import Principal
from hub.http.routes import overview as ov
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT, DAY = 0.10, 0.30
TARIFF = t.Tariff(
    "EUR", BERLIN, (t.Period(44, 12, NIGHT), t.Period(12, 44, DAY))
)  # 22:00-06:00, 06:00-22:00
WH_PER_HOUR = {"plug-1": 100.0, "plug-2": 40.0, "plug-9": 1000.0}
# Now: 00:30 on 31 March in Berlin, still 30 March in UTC.
NOW = int(datetime(2025, 3, 31, 0, 30, tzinfo=BERLIN).timestamp() * 1000)
ADMIN = Principal("admin", e.Role.ADMIN, None, cluster=True)
VIEWER = Principal("vic", e.Role.VIEWER, frozenset({"plug-1", "plug-2"}))


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def batch(device: str, seq: int, ts_ms: int, sensor: int, value: float) -> bytes:
    msg = m.TelemetryBatch(device, 1, seq, ts_ms, (m.Reading(sensor, 0, value),), 0)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def alert(did: str, device: str, at_ms: int) -> bytes:
    body = json.dumps({"alert": True, "facts": ["power over the limit"]}).encode()
    return e.encode(e.Decision(did, device, e.Tier.RULES, at_ms, "", body))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Three plugs whose counters rise evenly, on the hour, from 28 to 31
    March (UTC hours are Berlin's hours), and a power reading each: plug-1's
    30 s before now, plug-2's 10 minutes before (stale)."""
    with Store(tmp_path_factory.mktemp("overview") / "s") as s:
        entries = [
            e.encode(e.RegisterDevice(e.Device(d, b"k" * 32, (), None, "ann"), 1))
            for d in WH_PER_HOUR
        ]
        first = ms(datetime(2025, 3, 28, tzinfo=UTC))
        hours = range(3 * 24 + 1)  # to 02:00 on 31 March in Berlin
        for device, per_hour in WH_PER_HOUR.items():
            for h in hours:
                entries.append(batch(device, h + 1, first + h * t.HOUR_MS, 1, per_hour * h))
        power = {"plug-1": (NOW - 30_000, 512.5), "plug-2": (NOW - 600_000, 20.0)}
        for device, (at, watts) in power.items():
            entries.append(batch(device, len(hours) + 1, at, 0, watts))
        entries.append(alert("d-open", "plug-1", NOW - 5_000))
        entries.append(alert("d-acked", "plug-2", NOW - 4_000))
        entries.append(alert("d-other", "plug-9", NOW - 3_000))
        entries.append(e.encode(e.AckAlert("d-acked", "ann", NOW - 1_000)))
        s.apply(list(enumerate(entries, 1)))
        yield s


def on(store: Store) -> Callable[[Callable[[Store], Any]], Any]:
    return lambda fn: fn(store)


def test_today_is_the_local_day_and_yesterday_had_23_hours(store: Store) -> None:
    today = TARIFF.day_of(NOW)
    assert today == date(2025, 3, 31)
    out = ov.overview(on(store), VIEWER, TARIFF, today, NOW)
    assert (out["day"], out["today"], out["hours"], out["timezone"]) == (
        "2025-03-31",
        True,
        24,
        "Europe/Berlin",
    )
    # 31 March has readings until 02:00 local (00:00 UTC, the last reading):
    # the hours 00:00 and 01:00.
    assert [d["device_id"] for d in out["devices"]] == ["plug-1", "plug-2"]
    one, two = out["devices"]
    assert one["wh"] == pytest.approx(2 * 100.0) and two["wh"] == pytest.approx(2 * 40.0)
    assert one["cost"] == pytest.approx(2 * 0.1 * NIGHT)
    # 30 March: 23 hours, 7 of them night (00, 01, 03, 04, 05, 22, 23).
    assert one["yesterday_wh"] == pytest.approx(23 * 100.0)
    y_cost = 0.1 * (7 * NIGHT + 16 * DAY)
    assert one["yesterday_cost"] == pytest.approx(y_cost)
    assert two["yesterday_cost"] == pytest.approx(0.4 * y_cost)
    assert out["today_wh"] == pytest.approx(280.0)
    assert out["yesterday_wh"] == pytest.approx(23 * 140.0)
    assert out["yesterday_cost"] == pytest.approx(1.4 * y_cost)
    assert out["top"] == ["plug-1", "plug-2"]
    assert one["share"] == pytest.approx(100 / 140, abs=1e-4)


def test_power_now_counts_fresh_readings_only(store: Store) -> None:
    out = ov.overview(on(store), VIEWER, TARIFF, date(2025, 3, 31), NOW)
    assert out["power_w_now"] == 512.5
    assert out["stale"] == ["plug-2"]
    two = out["devices"][1]
    assert (two["power_w"], two["power_fresh"]) == (20.0, False)
    later = ov.overview(on(store), VIEWER, TARIFF, date(2025, 3, 31), NOW + ov.FRESH_MS)
    assert later["power_w_now"] is None and later["stale"] == ["plug-1", "plug-2"]


def test_open_alerts_are_the_askers_unacknowledged_ones(store: Store) -> None:
    out = ov.overview(on(store), VIEWER, TARIFF, date(2025, 3, 31), NOW)
    assert out["open_alerts"] == 1
    assert [a["decision_id"] for a in out["alerts"]] == ["d-open"]
    every = ov.overview(on(store), ADMIN, TARIFF, date(2025, 3, 31), NOW)
    assert [a["decision_id"] for a in every["alerts"]] == ["d-other", "d-open"]
    assert every["top"] == ["plug-9", "plug-1", "plug-2"]


def test_the_autumn_day_has_25_hours_and_a_day_without_a_tariff_is_utc(store: Store) -> None:
    # The store holds no October readings: 25 empty hours, zero cost.
    out = ov.overview(on(store), VIEWER, TARIFF, date(2025, 10, 26), NOW)
    assert (out["hours"], out["today_wh"], out["today_cost"], out["today"]) == (25, 0, 0, False)
    plain = ov.overview(on(store), VIEWER, t.NONE, date(2025, 3, 30), NOW)
    assert plain["currency"] is None and plain["tariff"] is None
    assert plain["today_cost"] is None and plain["devices"][0]["cost"] is None
    assert plain["hours"] == 24 and plain["today_wh"] == pytest.approx(24 * 140.0)


def test_the_week_sums_local_days(store: Store) -> None:
    out = ov.week(on(store), "plug-1", TARIFF, date(2025, 3, 31))
    days = {d["day"]: d for d in out["days"]}
    assert list(days) == [f"2025-03-{n}" for n in range(25, 32)]
    assert days["2025-03-30"]["hours"] == 23
    assert days["2025-03-29"]["wh"] == pytest.approx(2400.0)
    assert days["2025-03-29"]["cost"] == pytest.approx(0.1 * (8 * NIGHT + 16 * DAY))
    assert days["2025-03-25"]["wh"] == 0
    assert out["wh"] == pytest.approx(sum(d["wh"] for d in out["days"]))
