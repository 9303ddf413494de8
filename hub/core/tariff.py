"""What energy costs: the ``[tariff]`` table of the hub config.

    [tariff]
    currency = "EUR"                  # required: three capital letters
    timezone = "Europe/Berlin"        # the local day and the periods' times; default UTC
    price_per_kwh = 0.30              # a flat price, or prices by time of day:
    periods = { "22:00-06:00" = 0.18, "06:00-22:00" = 0.32 }

Exactly one of ``price_per_kwh`` and ``periods``. A period is
``"HH:MM-HH:MM"`` of local time in ``timezone``, its end excluded; one whose
end comes before its start runs across midnight, and ``24:00`` is the end of
the day. Together the periods cover the day once: a gap or an overlap is a
ConfigError naming the file, the key and the times::

    hub.toml: tariff.periods: nothing covers 06:00-07:00 (the periods must cover the day)
    hub.toml: tariff.periods.06:00-23:00: overlaps 22:00-06:00 at 22:00-23:00

Times fall on the hour or the half hour. Energy comes per hour
(``Store.hourly_energy``); an hour whose half hour is a period boundary has
its energy split evenly between its two halves, each priced at its own time
(the energy inside an hour is not known finer than that). Periods on whole
hours price each hour whole.

Prices follow the wall clock of ``timezone``: each half hour is priced at the
local time it starts, so a daylight-saving day of 23 or 25 hours is priced
hour by hour as its clock reads (the repeated hour of an autumn night twice
at its price, the skipped one of spring not at all).

Without the table energy has no price: costs are None and the day is the UTC
day.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final

from hub.core.validate import (
    Invalid,
    Schema,
    Table,
    matching,
    number,
    table_of,
    time_zone,
)

HOUR_MS: Final = 3_600_000
HALF_MS: Final = HOUR_MS // 2
SLOTS: Final = 48  # half hours in a day of the clock
MAX_PRICE: Final = 1_000_000.0  # per kWh, in any currency

_PERIOD: Final = re.compile(r"([01][0-9]|2[0-3]):([03]0)-([01][0-9]|2[0-3]|24):([03]0)")
_ANY_PERIOD: Final = re.compile(r"\d\d:\d\d-\d\d:\d\d")
_CURRENCY: Final = re.compile(r"[A-Z]{3}")


def _hhmm(slot: int) -> str:
    minutes = slot * 30
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@dataclass(frozen=True, slots=True)
class Period:
    """Local times ``start`` to ``end`` (half-hour slots of the day, 0..48;
    ``end`` below ``start``: across midnight) at ``price`` per kWh."""

    start: int
    end: int
    price: float

    @property
    def label(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"

    def slots(self) -> list[int]:
        end = self.end if self.end > self.start else self.end + SLOTS
        return [s % SLOTS for s in range(self.start, end)]


def _zone_name(tz: tzinfo) -> str:
    return str(getattr(tz, "key", None) or tz.tzname(None) or "UTC")


@dataclass(frozen=True, slots=True)
class Tariff:
    """A validated tariff; ``Tariff()`` is none (no price, UTC days)."""

    currency: str | None = None
    timezone: tzinfo = UTC
    periods: tuple[Period, ...] = ()
    _prices: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        prices = [0.0] * SLOTS
        for p in self.periods:
            for s in p.slots():
                prices[s] = p.price
        object.__setattr__(self, "_prices", tuple(prices))

    @property
    def priced(self) -> bool:
        return self.currency is not None

    @property
    def zone(self) -> str:
        """The time zone's IANA name."""
        return _zone_name(self.timezone)

    def local(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, self.timezone)

    def day_of(self, ms: int) -> date:
        """The local day of an instant (ms since the epoch)."""
        return self.local(ms).date()

    def day_bounds(self, day: date) -> tuple[int, int]:
        """The local day's first instant and the next day's (ms since the epoch)."""

        def at(d: date) -> int:
            dt = datetime.combine(d, time(), tzinfo=self.timezone)
            return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)

        return at(day), at(day + timedelta(days=1))

    def price_at(self, ms: int) -> float | None:
        """The price per kWh at an instant: of the period its local time falls in."""
        if not self.priced:
            return None
        t = self.local(ms)
        return self._prices[(t.hour * 60 + t.minute) // 30]

    def period_at(self, ms: int) -> str | None:
        """``"peak"`` when the price at ``ms`` is the day's highest, else
        ``"off-peak"``; None for a flat price or no tariff (no periods to name).
        This is the word the LLM tier states (hub/decide/facts.tariff_fact)."""
        price = self.price_at(ms)
        if price is None or len(set(self._prices)) < 2:
            return None
        return "peak" if price == max(self._prices) else "off-peak"

    def hour_cost(self, start_ms: int, wh: float) -> float | None:
        """The cost of ``wh`` in the hour from ``start_ms``: each half priced
        at its own local time, the energy split evenly when they differ."""
        first, second = self.price_at(start_ms), self.price_at(start_ms + HALF_MS)
        if first is None or second is None:
            return None
        if first == second:
            return wh / 1000 * first
        return wh / 2000 * first + wh / 2000 * second

    def cost(self, hours: Iterable[tuple[int, float]]) -> float | None:
        """The cost of hours given as (start_ms, Wh); None without a price."""
        if not self.priced:
            return None
        total = 0.0
        for start_ms, wh in hours:
            c = self.hour_cost(start_ms, wh)
            assert c is not None
            total += c
        return total

    def json(self) -> dict[str, Any]:
        """What the API shows of it."""
        return {
            "currency": self.currency,
            "timezone": self.zone,
            "periods": [{"hours": p.label, "price_per_kwh": p.price} for p in self.periods],
        }


NONE: Final = Tariff()


# -- reading [tariff] --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    currency: str
    timezone: tzinfo = UTC
    price_per_kwh: float | None = None
    periods: Mapping[str, float] | None = None


_price = number(0, MAX_PRICE)

TABLE: Final = Schema(
    _Table,
    {
        "currency": matching(_CURRENCY, "a currency code of three capital letters like 'EUR'"),
        "timezone": time_zone,
        "price_per_kwh": _price,
        "periods": table_of(_price, 'a table like { "22:00-06:00" = 0.18, ... }'),
    },
)


def read(t: Table, present: bool) -> Tariff:
    """The tariff of the ``[tariff]`` table ``t`` (made by ``TABLE.table``);
    NONE when the file has no such table."""
    if not present:
        return NONE
    raw = TABLE.read(t)
    if (raw.price_per_kwh is None) == (raw.periods is None):
        raise t.error("price_per_kwh", "set exactly one of price_per_kwh and periods")
    if raw.price_per_kwh is not None:
        return Tariff(raw.currency, raw.timezone, (Period(0, SLOTS, raw.price_per_kwh),))
    assert raw.periods is not None
    try:
        periods = _periods(raw.periods)
    except Invalid as exc:
        raise t.error("periods", exc.problem, *exc.path) from None
    return Tariff(raw.currency, raw.timezone, periods)


def _period(label: str, price: float) -> Period:
    m = _PERIOD.fullmatch(label)
    if m is None:
        if _ANY_PERIOD.fullmatch(label):
            problem = "times on the hour or the half hour only (00:00..24:00)"
        else:
            problem = 'expected "HH:MM-HH:MM" like "22:00-06:00"'
        raise Invalid(problem, (label,))
    start = int(m.group(1)) * 2 + int(m.group(2)) // 30
    end = int(m.group(3)) * 2 + int(m.group(4)) // 30
    if end > SLOTS:
        raise Invalid("24:00 is the last time of a day", (label,))
    if start == end:
        raise Invalid("an empty period: start and end are the same time", (label,))
    return Period(start, end, price)


def _periods(raw: Mapping[str, float]) -> tuple[Period, ...]:
    """The periods, checked to cover each half hour of the day exactly once."""
    if not raw:
        raise Invalid("no periods: give at least one, or price_per_kwh for a flat price")
    owner: list[Period | None] = [None] * SLOTS
    periods = []
    for label, price in raw.items():
        p = _period(label, price)
        for s in p.slots():
            if (other := owner[s]) is not None:
                clash = _ranges([x for x in p.slots() if x in set(other.slots())])
                raise Invalid(f"overlaps {other.label} at {clash}", (label,))
            owner[s] = p
        periods.append(p)
    if gaps := [s for s in range(SLOTS) if owner[s] is None]:
        raise Invalid(f"nothing covers {_ranges(gaps)} (the periods must cover the day)")
    return tuple(sorted(periods, key=lambda p: p.start))


def _ranges(slots: list[int]) -> str:
    """Half-hour slots as time ranges: [12, 13, 14, 40] -> '06:00-07:30, 20:00-20:30'."""
    out: list[list[int]] = []
    for s in sorted(slots):
        if out and s == out[-1][1]:
            out[-1][1] = s + 1
        else:
            out.append([s, s + 1])
    return ", ".join(f"{_hhmm(a)}-{_hhmm(b)}" for a, b in out)
