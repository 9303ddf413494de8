"""The store's telemetry reads: raw readings by seq and by time, the rollups,
the hourly energy, and a device's retention cut-offs.

``TelemetryReads`` is a part of ``Store`` (hub/state/store.py), kept apart to
keep each class small; it reads through the store's ``_read`` transactions.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from hub.state import records as r
from hub.state import rollups
from hub.state.records import StoredReading
from hub.state.rollups import ENERGY_WH_SENSOR as ENERGY_WH_SENSOR


@dataclass(frozen=True, slots=True)
class HourlyEnergy:
    start_ms: int  # start of the hour, ms since the epoch
    wh: float


class TelemetryReads:
    """Readings, rollups and energy of ``Store``."""

    _dbs: dict[str, Any]

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def readings(
        self, device_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[StoredReading]:
        """Stored readings with from_seq <= seq <= to_seq, in seq order."""
        prefix = r.dev_prefix(device_id)
        out: list[StoredReading] = []
        with self._read() as txn:
            for k, v in r.scan(txn, self._dbs["readings"], prefix, r.dev_key(prefix, from_seq)):
                seq = r.seq_of(k)
                if (to_seq is not None and seq > to_seq) or (
                    limit is not None and len(out) >= limit
                ):
                    break
                out.append(StoredReading(seq, *r.READING_VALUE.unpack(v)))
        return out

    def readings_between(
        self,
        device_id: str,
        from_ms: int,
        to_ms: int,
        sensor: int | None = None,
        limit: int | None = None,
    ) -> list[StoredReading]:
        """Stored readings with from_ms <= ts_ms < to_ms, in (ts, seq) order:
        the first ``limit`` of them (all when None).

        The hours table gives, per hour, the lowest and highest seq stored
        with a timestamp in that hour; only those seq ranges are scanned.
        Without a limit the ranges are merged and scanned once; with one the
        hours are scanned in order, keeping at most ``limit`` readings, and
        the scan stops at the end of the first hour that fills them (the
        readings of later hours come after all of its own).
        """
        if to_ms <= from_ms or (limit is not None and limit <= 0):
            return []
        prefix = r.dev_prefix(device_id)
        with self._read() as txn:
            hours: list[tuple[int, int, int]] = []  # (hour, lo, hi)
            last_hour = (to_ms - 1) // r.HOUR_MS
            start = r.dev_key(prefix, max(from_ms, 0) // r.HOUR_MS)
            for k, v in r.scan(txn, self._dbs["hours"], prefix, start):
                hour = r.seq_of(k)
                if hour > last_hour:
                    break
                lo, hi, _ = r.HOUR_VALUE.unpack(v)
                hours.append((hour, lo, hi))
            if limit is None:
                out = [
                    x
                    for lo, hi in _merge_ranges([(lo, hi) for _, lo, hi in hours])
                    for x in self._scan(txn, prefix, lo, hi)
                    if from_ms <= x.ts_ms < to_ms and sensor in (None, x.sensor)
                ]
                out.sort(key=lambda rd: (rd.ts_ms, rd.seq))
                return out
            out = []
            for hour, lo, hi in hours:
                first = max(from_ms, hour * r.HOUR_MS)
                end = min(to_ms, (hour + 1) * r.HOUR_MS)
                found = (
                    x
                    for x in self._scan(txn, prefix, lo, hi)
                    if first <= x.ts_ms < end and sensor in (None, x.sensor)
                )
                out += heapq.nsmallest(limit - len(out), found, key=lambda rd: (rd.ts_ms, rd.seq))
                if len(out) >= limit:
                    break
            return out

    def _scan(self, txn: Any, prefix: bytes, lo: int, hi: int) -> Iterator[StoredReading]:
        """The device's stored readings with lo <= seq <= hi, in seq order."""
        for k, v in r.scan(txn, self._dbs["readings"], prefix, r.dev_key(prefix, lo)):
            seq = r.seq_of(k)
            if seq > hi:
                return
            yield StoredReading(seq, *r.READING_VALUE.unpack(v))

    def hourly_energy(
        self, device_id: str, day: date, tz: tzinfo = UTC
    ) -> tuple[HourlyEnergy, ...]:
        """Energy (Wh) per hour of ``day`` in ``tz``, from the hourly rollups
        (kept as readings commit, and long after the raw readings are gone).

        The energy counter (sensor 1, Wh): the increase between each pair of
        consecutive readings (a decrease is a counter reset at boot, so it
        counts the new value), spread linearly over the time between them
        and split at hour bounds (rollups.energy_shares). A DST day has 23 or
        25 hours. A zone whose hours do not start on UTC hours (a half-hour
        offset) is computed from the raw readings (``raw_hourly_energy``).
        """
        bounds = _day_bounds(day, tz)
        if bounds[0] % r.HOUR_MS:
            return self.raw_hourly_energy(device_id, day, tz)
        rows = {
            h: x.wh
            for h, _, x in self.rollups(
                device_id, bounds[0], bounds[-1], ENERGY_WH_SENSOR, period="hour"
            )
        }
        return tuple(HourlyEnergy(b, rows.get(b // r.HOUR_MS, 0.0)) for b in bounds[:-1])

    def raw_hourly_energy(
        self, device_id: str, day: date, tz: tzinfo = UTC
    ) -> tuple[HourlyEnergy, ...]:
        """``hourly_energy`` computed from the raw readings still stored: the
        counter readings of the day, and the one before and after it."""
        bounds = _day_bounds(day, tz)
        start, end = bounds[0], bounds[-1]
        wh = [0.0] * (len(bounds) - 1)
        rs = [
            (x.ts_ms, x.value)
            for x in self.readings_between(device_id, start, end, ENERGY_WH_SENSOR)
        ]
        rs = self._energy_neighbours(device_id, start, end, rs)
        for (a_ts, a_v), (b_ts, b_v) in itertools.pairwise(rs):
            # rollups.energy_shares, split at this day's bounds
            delta = rollups.pair_increase(a_ts, a_v, b_ts, b_v)
            if delta is None:
                continue
            if b_ts == a_ts:
                i = _bucket(bounds, b_ts)
                if i is not None:
                    wh[i] += delta
                continue
            for i in range(len(wh)):
                lo, hi = max(a_ts, bounds[i]), min(b_ts, bounds[i + 1])
                if hi > lo:
                    wh[i] += delta * (hi - lo) / (b_ts - a_ts)
        return tuple(HourlyEnergy(bounds[i], wh[i]) for i in range(len(wh)))

    def _energy_neighbours(
        self, device_id: str, start: int, end: int, rs: list[tuple[int, float]]
    ) -> list[tuple[int, float]]:
        """``rs`` with the counter reading just before ``start`` and the one
        at or after ``end`` (from the energy index)."""
        prefix = r.dev_prefix(device_id)
        with self._read() as txn:
            cur = txn.cursor(db=self._dbs["energy_index"])
            before = after = None
            if cur.set_range(rollups.energy_key(prefix, start, 0)):
                found = cur.prev()
            else:
                found = cur.last()
            if found and cur.key().startswith(prefix):
                before = rollups.unpack_energy(cur.key(), cur.value())
            if cur.set_range(rollups.energy_key(prefix, end, 0)) and cur.key().startswith(prefix):
                after = rollups.unpack_energy(cur.key(), cur.value())
        return [*([before] if before else []), *rs, *([after] if after else [])]

    def rollups(
        self,
        device_id: str,
        from_ms: int,
        to_ms: int,
        sensor: int | None = None,
        period: str = "hour",
    ) -> list[tuple[int, int, rollups.Rollup]]:
        """The device's rollup rows (period number, sensor, figures) of the
        hours (or UTC days) that start in [from_ms, to_ms), of one sensor or
        all, in (period, sensor) order."""
        unit = r.HOUR_MS if period == "hour" else rollups.DAY_MS
        table = "rollup_hours" if period == "hour" else "rollup_days"
        prefix = r.dev_prefix(device_id)
        first, last = -(-max(from_ms, 0) // unit), (to_ms - 1) // unit
        out: list[tuple[int, int, rollups.Rollup]] = []
        if to_ms <= from_ms:
            return out
        with self._read() as txn:
            start = rollups.rollup_key(prefix, first, 0)
            for k, v in r.scan(txn, self._dbs[table], prefix, start):
                n, s = rollups.rollup_of_key(k)
                if n > last:
                    break
                if sensor is None or s == sensor:
                    out.append((n, s, rollups.unpack_rollup(v)))
        return out

    def retention(self, device_id: str) -> tuple[int, int]:
        """The device's retention cut-offs so far: (raw_before_ms, rollup_before_ms)."""
        with self._read() as txn:
            return rollups.cutoffs(txn, self._dbs, device_id)


# -- hourly energy ------------------------------------------------------------------


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _epoch_ms(dt: datetime) -> int:
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _day_bounds(day: date, tz: tzinfo) -> list[int]:
    start = _epoch_ms(datetime.combine(day, time(), tzinfo=tz))
    end = _epoch_ms(datetime.combine(day + timedelta(days=1), time(), tzinfo=tz))
    return [*range(start, end, r.HOUR_MS), end]


def _bucket(bounds: list[int], ts: int) -> int | None:
    for i in range(len(bounds) - 1):
        if bounds[i] <= ts < bounds[i + 1]:
            return i
    return None
