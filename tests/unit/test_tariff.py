"""The [tariff] table: what the config accepts and refuses, and the price of
hours across midnight, on half hours and on the days the clocks change."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub.core import config as c
from hub.core import tariff as t
from tests.unit.test_hub_config import GOOD, SECRET

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT, DAY = 0.10, 0.30
TOU = f"""
[tariff]
currency = "EUR"
timezone = "Europe/Berlin"
periods = {{ "22:00-06:00" = {NIGHT}, "06:00-22:00" = {DAY} }}
"""


def load(tmp_path: Path, body: str) -> c.HubConfig:
    path = tmp_path / "hub.toml"
    path.write_text(body)
    return c.load(path, env={"AIOT_TEST_SECRET": SECRET})


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_a_config_without_a_tariff_has_no_price_and_utc_days(tmp_path: Path) -> None:
    cfg = load(tmp_path, GOOD)
    assert cfg.tariff == t.NONE and not cfg.tariff.priced
    assert cfg.tariff.cost([(0, 1000.0)]) is None
    assert cfg.tariff.zone == "UTC"


def test_a_time_of_use_tariff_is_read(tmp_path: Path) -> None:
    tariff = load(tmp_path, GOOD + TOU).tariff
    assert tariff.currency == "EUR" and tariff.zone == "Europe/Berlin"
    assert tariff.json()["periods"] == [
        {"hours": "06:00-22:00", "price_per_kwh": DAY},
        {"hours": "22:00-06:00", "price_per_kwh": NIGHT},
    ]
    flat = load(tmp_path, GOOD + '[tariff]\ncurrency = "CHF"\nprice_per_kwh = 0.25\n').tariff
    assert flat.zone == "UTC" and flat.price_at(0) == 0.25
    assert flat.json()["periods"] == [{"hours": "00:00-24:00", "price_per_kwh": 0.25}]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'periods = { "22:00-06:00" = 0.1, "07:00-22:00" = 0.3 }',
            "tariff.periods: nothing covers 06:00-07:00 (the periods must cover the day)",
        ),
        (
            'periods = { "22:00-06:00" = 0.1, "06:00-23:00" = 0.3 }',
            "tariff.periods.06:00-23:00: overlaps 22:00-06:00 at 22:00-23:00",
        ),
        (
            'periods = { "23:00-01:00" = 0.1, "00:00-23:00" = 0.3 }',
            "tariff.periods.00:00-23:00: overlaps 23:00-01:00 at 00:00-01:00",
        ),
        (
            'periods = { "22:15-06:00" = 0.1, "06:00-22:15" = 0.3 }',
            "tariff.periods.22:15-06:00: times on the hour or the half hour only",
        ),
        ('periods = { "10-12" = 0.1 }', 'expected "HH:MM-HH:MM" like "22:00-06:00"'),
        ('periods = { "06:00-06:00" = 0.1 }', "an empty period"),
        ("periods = {}", "tariff.periods: no periods"),
        ('periods = { "00:00-24:00" = -0.1 }', "tariff.periods.00:00-24:00: expected a number"),
        ("", "tariff.price_per_kwh: set exactly one of price_per_kwh and periods"),
        (
            'price_per_kwh = 0.2\nperiods = { "00:00-24:00" = 0.1 }',
            "set exactly one of price_per_kwh and periods",
        ),
        ('price_per_kwh = "cheap"', "tariff.price_per_kwh: expected a number"),
        ('price_per_kwh = 0.2\ntimezone = "Mars/Olympus"', "unknown time zone 'Mars/Olympus'"),
        ("price_per_kwh = 0.2\nprice = 1", "tariff.price: unknown key"),
    ],
)
def test_bad_tariffs_are_refused_naming_the_file_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    body = GOOD + f'[tariff]\ncurrency = "EUR"\n{table}\n'
    with pytest.raises(c.ConfigError) as err:
        load(tmp_path, body)
    assert str(err.value).startswith(f"{tmp_path / 'hub.toml'}: tariff")
    assert message in str(err.value)


def test_the_currency_is_required_and_checked(tmp_path: Path) -> None:
    for table, message in (
        ("price_per_kwh = 0.2", "tariff.currency: required key is missing"),
        ('currency = "euro"\nprice_per_kwh = 0.2', "tariff.currency: expected a currency code"),
    ):
        with pytest.raises(c.ConfigError, match=message):
            load(tmp_path, GOOD + f"[tariff]\n{table}\n")


def test_periods_across_midnight_price_by_local_time(tmp_path: Path) -> None:
    tariff = load(tmp_path, GOOD + TOU).tariff
    winter = {
        h: tariff.price_at(ms(datetime(2025, 1, 15, h, 59, tzinfo=BERLIN))) for h in range(24)
    }
    assert winter == {h: NIGHT if h < 6 or h >= 22 else DAY for h in range(24)}
    # 21:30 UTC is 22:30 in Berlin in winter, 23:30 in summer: both night.
    assert tariff.price_at(ms(datetime(2025, 1, 15, 20, 30, tzinfo=UTC))) == DAY
    assert tariff.price_at(ms(datetime(2025, 7, 15, 20, 30, tzinfo=UTC))) == NIGHT
    assert tariff.day_of(ms(datetime(2025, 7, 15, 22, 30, tzinfo=UTC))) == date(2025, 7, 16)


PEAK = 0.50
MORNING_PEAK = f"""
[tariff]
currency = "EUR"
timezone = "Europe/Berlin"
periods = {{ "22:00-06:00" = {NIGHT}, "06:00-07:00" = {PEAK}, "07:00-22:00" = {DAY} }}
"""


def test_the_period_word_the_llm_tier_states(tmp_path: Path) -> None:
    tou = load(tmp_path, GOOD + TOU).tariff
    at = {h: tou.period_at(ms(datetime(2025, 1, 15, h, 10, tzinfo=BERLIN))) for h in (5, 6, 21, 22)}
    assert at == {5: "off-peak", 6: "peak", 21: "peak", 22: "off-peak"}
    three = load(tmp_path, GOOD + MORNING_PEAK).tariff  # only the dearest price is peak
    assert three.period_at(ms(datetime(2025, 1, 15, 6, 30, tzinfo=BERLIN))) == "peak"
    assert three.period_at(ms(datetime(2025, 1, 15, 12, 0, tzinfo=BERLIN))) == "off-peak"
    flat = load(tmp_path, GOOD + '[tariff]\ncurrency = "CHF"\nprice_per_kwh = 0.25\n').tariff
    assert flat.period_at(0) is None and t.NONE.period_at(0) is None


@pytest.mark.parametrize(
    ("day", "clock"),
    [
        (date(2025, 3, 29), list(range(24))),
        (date(2025, 3, 30), [0, 1, *range(3, 24)]),  # 02:00 is skipped
        (date(2025, 10, 26), [0, 1, 2, 2, *range(3, 24)]),  # 02:00 comes twice
    ],
)
def test_a_daylight_saving_day_is_priced_hour_by_hour(
    tmp_path: Path, day: date, clock: list[int]
) -> None:
    tariff = load(tmp_path, GOOD + MORNING_PEAK).tariff
    start, end = tariff.day_bounds(day)
    starts = list(range(start, end, t.HOUR_MS))
    assert [tariff.local(s).hour for s in starts] == clock
    want = [NIGHT if h < 6 or h >= 22 else PEAK if h == 6 else DAY for h in clock]
    assert [tariff.price_at(s) for s in starts] == want
    cost = tariff.cost([(s, 1000.0) for s in starts])
    assert cost == pytest.approx(sum(want))


def test_a_half_hour_boundary_splits_its_hour_evenly(tmp_path: Path) -> None:
    body = (
        GOOD
        + '[tariff]\ncurrency = "GBP"\nperiods = { "00:30-07:30" = 0.1, "07:30-24:30" = 0.3 }\n'
    )
    with pytest.raises(c.ConfigError, match="24:00 is the last time of a day"):
        load(tmp_path, body)
    body = body.replace('"07:30-24:30" = 0.3', '"07:30-24:00" = 0.3, "00:00-00:30" = 0.3')
    tariff = load(tmp_path, body).tariff
    seven = ms(datetime(2025, 1, 15, 7, tzinfo=UTC))
    assert tariff.hour_cost(seven, 1000.0) == pytest.approx(0.5 * 0.1 + 0.5 * 0.3)
    assert tariff.hour_cost(seven - t.HOUR_MS, 1000.0) == pytest.approx(0.1)
    assert tariff.hour_cost(seven + t.HOUR_MS, 1000.0) == pytest.approx(0.3)
