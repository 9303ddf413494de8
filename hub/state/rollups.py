"""Hourly and daily rollups per sensor, kept in apply as readings commit, and
the retention step that deletes raw readings and old rollups (PRUNE).

Nothing here opens LMDB: ``apply.py`` calls these with its write transaction
and the store's tables. hub/state/DESIGN.md ("Retention and rollups") gives the
tables and why each figure is exact and independent of the order in which
readings commit:

- count, min and max are order-independent as they are;
- the sum behind the mean is an integer of micro-units (each value rounded
  once), so any order of additions gives the same bits;
- the energy of an hour is an integer of nano-Wh: the sum over the pairs of
  consecutive energy-counter readings (in (ts, seq) order) of each pair's
  share of that hour, each share rounded once. A reading that commits
  between two others takes their pair's shares out and adds its two pairs'.
  The result is a function of the set of readings stored, as the raw
  computation (``energy_shares``) over the same readings is.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from hub.state import records as r

DAY_MS: Final = 86_400_000
ENERGY_WH_SENSOR: Final = 1  # the energy counter (Wh); edge/sensors.py ENERGY_WH
# A pair of counter readings further apart than this is a gap, not energy
# that can be placed in hours: it counts nowhere (raw and rollups alike).
MAX_PAIR_SPAN_MS: Final = 7 * DAY_MS
# A pair whose increase reaches this is a counter fault (or a hostile value),
# not energy: it counts nowhere either. It bounds every share, so a rollup's
# sum of nano-Wh fits its 128 bits whatever the readings hold.
MAX_PAIR_WH: Final = 1e9
NANO: Final = 1e9  # energy unit of the rollups: nano-Wh
MICRO: Final = 1e6  # sum unit of the rollups: micro-units of the sensor
# Values whose magnitude reaches this stay out of the sum (not out of the count).
MAX_SUMMED: Final = 1e15

_HEAD: Final = struct.Struct(">IIff")  # count, summed, min, max
_I128: Final = 16  # the sum of micro-units, then the energy in nano-Wh, each i128
ROLLUP_BYTES: Final = _HEAD.size + 2 * _I128
_OLD_TAIL: Final = struct.Struct(">q")  # rows written before the energy was i128
RETENTION_VALUE: Final = struct.Struct(">QQ")  # raw_before_ms, rollup_before_ms
_F32: Final = struct.Struct(">f")
_HOURS_PER_STEP: Final = 256  # hours of one device a PRUNE step looks at, at most


@dataclass(slots=True)
class Rollup:
    """One sensor's figures over one hour (or day)."""

    count: int = 0
    summed: int = 0  # readings in ``sum_micro`` (finite, below MAX_SUMMED)
    min: float = math.inf
    max: float = -math.inf
    sum_micro: int = 0
    energy_nwh: int = 0  # energy-counter rows only

    @property
    def mean(self) -> float | None:
        return self.sum_micro / MICRO / self.summed if self.summed else None

    @property
    def wh(self) -> float:
        return self.energy_nwh / NANO

    def add(self, value: float) -> None:
        self.count += 1
        if math.isfinite(value):
            self.min, self.max = min(self.min, value), max(self.max, value)
            if abs(value) < MAX_SUMMED:
                self.summed += 1
                self.sum_micro += round(value * MICRO)

    def merge(self, o: Rollup) -> None:
        self.count += o.count
        self.summed += o.summed
        self.min, self.max = min(self.min, o.min), max(self.max, o.max)
        self.sum_micro += o.sum_micro
        self.energy_nwh += o.energy_nwh


def pack_rollup(x: Rollup) -> bytes:
    head = _HEAD.pack(x.count, x.summed, x.min, x.max)
    return (
        head
        + x.sum_micro.to_bytes(_I128, "big", signed=True)
        + x.energy_nwh.to_bytes(_I128, "big", signed=True)
    )


def unpack_rollup(raw: bytes) -> Rollup:
    count, summed, lo, hi = _HEAD.unpack_from(raw)
    at = _HEAD.size + _I128
    s = int.from_bytes(raw[_HEAD.size : at], "big", signed=True)
    if len(raw) == at + _OLD_TAIL.size:
        energy = _OLD_TAIL.unpack_from(raw, at)[0]
    else:
        energy = int.from_bytes(raw[at : at + _I128], "big", signed=True)
    return Rollup(count, summed, lo, hi, s, energy)


def rollup_key(prefix: bytes, period: int, sensor: int) -> bytes:
    """dev 0x00 u64 hour (or day) u16 sensor."""
    return prefix + r.U64.pack(period) + sensor.to_bytes(2, "big")


def rollup_of_key(key: bytes) -> tuple[int, int]:
    """(period, sensor) of a rollup key."""
    return r.U64.unpack_from(key, len(key) - 10)[0], int.from_bytes(key[-2:], "big")


def energy_key(prefix: bytes, ts: int, seq: int) -> bytes:
    """The energy index: dev 0x00 u64 ts u64 seq (the raw computation's order)."""
    return prefix + r.U64.pack(ts) + r.U64.pack(seq)


# -- energy shares ------------------------------------------------------------------


def pair_increase(a_ts: int, a_v: float, b_ts: int, b_v: float) -> float | None:
    """The energy (Wh) between two consecutive counter readings, or None when
    the pair counts nowhere: the increase (a decrease is a reset at boot, so
    the new value counts); none, not finite, ``MAX_PAIR_WH`` or more, or the
    two further apart than ``MAX_PAIR_SPAN_MS``."""
    delta = b_v - a_v if b_v >= a_v else b_v
    if not 0 < delta < MAX_PAIR_WH or b_ts - a_ts > MAX_PAIR_SPAN_MS:
        return None
    return delta


def energy_shares(a_ts: int, a_v: float, b_ts: int, b_v: float) -> Iterator[tuple[int, float]]:
    """The pair's energy per hour (hour, Wh): the counter's increase (a
    decrease is a reset at boot, so the new value counts), spread linearly
    over the time between the two and split at hour bounds."""
    delta = pair_increase(a_ts, a_v, b_ts, b_v)
    if delta is None:
        return
    if b_ts == a_ts:
        yield b_ts // r.HOUR_MS, delta
        return
    span = b_ts - a_ts
    for h in range(a_ts // r.HOUR_MS, (b_ts - 1) // r.HOUR_MS + 1):
        lo, hi = max(a_ts, h * r.HOUR_MS), min(b_ts, (h + 1) * r.HOUR_MS)
        if hi > lo:
            yield h, delta * (hi - lo) / span


def _nwh(a_ts: int, a_v: float, b_ts: int, b_v: float) -> Iterator[tuple[int, int]]:
    for h, wh in energy_shares(a_ts, a_v, b_ts, b_v):
        yield h, round(wh * NANO)


# -- what a batch adds --------------------------------------------------------------


class Pending:
    """The rollup changes of one batch, merged into the tables at ``flush``."""

    def __init__(self, txn: Any, dbs: dict[str, Any], prefix: bytes, device_id: str) -> None:
        self._txn, self._dbs, self._prefix = txn, dbs, prefix
        self._hours: dict[tuple[int, int], Rollup] = {}
        raw = txn.get(device_id.encode(), db=dbs["retention"])
        self._final_before = 0 if raw is None else RETENTION_VALUE.unpack(raw)[0]

    def _row(self, hour: int, sensor: int) -> Rollup:
        row = self._hours.get((hour, sensor))
        if row is None:
            row = self._hours[(hour, sensor)] = Rollup()
        return row

    def reading(self, seq: int, ts: int, sensor: int, value_bytes: bytes) -> None:
        """A reading stored now (not one that was there already)."""
        value: float = _F32.unpack(value_bytes)[0]
        self._row(ts // r.HOUR_MS, sensor).add(value)
        if sensor == ENERGY_WH_SENSOR and ts >= self._final_before:
            self._energy(seq, ts, value, value_bytes)

    def _energy(self, seq: int, ts: int, value: float, value_bytes: bytes) -> None:
        # Hours before the retention cut-off are final: a late reading there
        # counts in the figures above, not in the energy (its neighbours
        # are gone).
        db, key = self._dbs["energy_index"], energy_key(self._prefix, ts, seq)
        cur = self._txn.cursor(db=db)
        prev = nxt = None
        if cur.set_range(key):
            if cur.key().startswith(self._prefix):
                nxt = cur.item()
            found = cur.prev()
        else:
            found = cur.last()
        if found and cur.key().startswith(self._prefix):
            prev = cur.item()
        adjust: list[tuple[int, int]] = []
        p, n = _point(prev), _point(nxt)
        if p is not None and n is not None:
            adjust += [(h, -x) for h, x in _nwh(*p, *n)]
        if p is not None:
            adjust += _nwh(*p, ts, value)
        if n is not None:
            adjust += _nwh(ts, value, *n)
        for h, x in adjust:
            self._row(h, ENERGY_WH_SENSOR).energy_nwh += x
        self._txn.put(key, value_bytes, db=db)

    def flush(self) -> None:
        days: dict[tuple[int, int], Rollup] = {}
        for (hour, sensor), add in sorted(self._hours.items()):
            _merge(
                self._txn, self._dbs["rollup_hours"], rollup_key(self._prefix, hour, sensor), add
            )
            day = days.setdefault((hour * r.HOUR_MS // DAY_MS, sensor), Rollup())
            day.merge(add)
        for (day_n, sensor), add in sorted(days.items()):
            _merge(
                self._txn, self._dbs["rollup_days"], rollup_key(self._prefix, day_n, sensor), add
            )


def _point(item: tuple[bytes, bytes] | None) -> tuple[int, float] | None:
    return None if item is None else unpack_energy(*item)


def unpack_energy(key: bytes, value: bytes) -> tuple[int, float]:
    """(ts_ms, value) of an energy index record."""
    return r.U64.unpack_from(key, len(key) - 16)[0], _F32.unpack(value)[0]


def _merge(txn: Any, db: Any, key: bytes, add: Rollup) -> None:
    old = txn.get(key, db=db)
    if old is not None:
        row = unpack_rollup(old)
        row.merge(add)
        add = row
    if add.count == 0 and add.energy_nwh == 0:
        txn.delete(key, db=db)  # a pair's share taken back to nothing
    else:
        txn.put(key, pack_rollup(add), db=db)


# -- retention ----------------------------------------------------------------------


@dataclass(slots=True)
class Budget:
    """Records a PRUNE step may still delete (or look at)."""

    left: int

    def spend(self, n: int = 1) -> None:
        self.left -= n


def cutoffs(txn: Any, dbs: dict[str, Any], device_id: str) -> tuple[int, int]:
    """The device's (raw_before_ms, rollup_before_ms) so far (0, 0: none)."""
    raw = txn.get(device_id.encode(), db=dbs["retention"])
    return (0, 0) if raw is None else RETENTION_VALUE.unpack(raw)


def prune_device(
    txn: Any, dbs: dict[str, Any], device_id: str, raw_before: int, rollup_before: int, b: Budget
) -> int:
    """Delete the device's raw readings stamped before ``raw_before`` and at
    or below its watermark, its energy index entries before it (but the
    newest of those), and its rollup rows of periods that end at or before
    ``rollup_before``; at most about ``b.left`` records. Returns how many
    records it deleted. The cut-offs never move back."""
    old_raw, old_rollup = cutoffs(txn, dbs, device_id)
    raw_before, rollup_before = max(raw_before, old_raw), max(rollup_before, old_rollup)
    if (raw_before, rollup_before) != (old_raw, old_rollup):
        txn.put(
            device_id.encode(), RETENTION_VALUE.pack(raw_before, rollup_before), db=dbs["retention"]
        )
    prefix = r.dev_prefix(device_id)
    mark_raw = txn.get(device_id.encode(), db=dbs["watermarks"])
    mark = 0 if mark_raw is None else r.progress_of(mark_raw)[0]
    removed = _prune_readings(txn, dbs, prefix, raw_before, mark, b)
    removed += _prune_energy_index(txn, dbs["energy_index"], prefix, raw_before, b)
    removed += _prune_rollups(txn, dbs["rollup_hours"], prefix, rollup_before // r.HOUR_MS, b)
    removed += _prune_rollups(txn, dbs["rollup_days"], prefix, rollup_before // DAY_MS, b)
    return removed


def _prune_readings(
    txn: Any, dbs: dict[str, Any], prefix: bytes, before: int, mark: int, b: Budget
) -> int:
    removed = 0
    last_hour = (before - 1) // r.HOUR_MS
    hours, readings = dbs["hours"], dbs["readings"]
    todo = []
    for item in _range(txn, hours, prefix, r.dev_key(prefix, 0), last_hour):
        todo.append(item)
        if len(todo) >= _HOURS_PER_STEP:
            break
    for hkey, hval in todo:
        if b.left <= 0:
            break
        hour = r.seq_of(hkey)
        lo, hi, count = r.HOUR_VALUE.unpack(hval)
        gone = []
        for k, v in r.scan(txn, readings, prefix, r.dev_key(prefix, lo)):
            seq = r.seq_of(k)
            if seq > min(hi, mark):
                break
            b.spend()
            ts = r.U64.unpack_from(v)[0]
            if ts < before and ts // r.HOUR_MS == hour:
                gone.append(k)
        for k in gone:
            txn.delete(k, db=readings)
        removed += len(gone)
        if count <= len(gone):
            txn.delete(hkey, db=hours)
        elif gone:
            txn.put(hkey, r.HOUR_VALUE.pack(lo, hi, count - len(gone)), db=hours)
    return removed


def _range(
    txn: Any, db: Any, prefix: bytes, start: bytes, last: int
) -> Iterator[tuple[bytes, bytes]]:
    """Records of ``db`` under ``prefix`` from ``start`` whose u64 after the
    prefix is at most ``last``."""
    for k, v in r.scan(txn, db, prefix, start):
        if r.U64.unpack_from(k, len(prefix))[0] > last:
            return
        yield k, v


def _prune_energy_index(txn: Any, db: Any, prefix: bytes, before: int, b: Budget) -> int:
    # The newest entry before the cut-off stays: it is the left end of the
    # pair that spans the cut-off, which a later reading may split.
    if before <= 0:
        return 0
    keys: list[bytes] = []
    for k, _ in _range(txn, db, prefix, prefix, before - 1):
        keys.append(k)
        if len(keys) > b.left:
            break
    gone = keys[:-1]  # at most b.left of them
    for k in gone:
        txn.delete(k, db=db)
    b.spend(len(gone))
    return len(gone)


def _prune_rollups(txn: Any, db: Any, prefix: bytes, before_period: int, b: Budget) -> int:
    if before_period <= 0:
        return 0
    gone: list[bytes] = []
    for k, _ in _range(txn, db, prefix, prefix, before_period - 1):
        if len(gone) >= b.left:
            break
        gone.append(k)
    for k in gone:
        txn.delete(k, db=db)
    b.spend(len(gone))
    return len(gone)


# -- a format-1 store ----------------------------------------------------------------


def rebuild(txn: Any, dbs: dict[str, Any]) -> int:
    """Build the rollups and the energy index of every stored reading (a
    store written before they existed). The result is the one apply would
    have kept: a function of the set of readings. Returns the readings seen."""
    n = 0
    pending: Pending | None = None
    device = b""
    for k, v in txn.cursor(db=dbs["readings"]):
        dev = k[: len(k) - 9]
        if pending is None or dev != device:
            if pending is not None:
                pending.flush()
            device = dev
            pending = Pending(txn, dbs, dev + b"\0", dev.decode())
        ts, sensor = r.TS_SENSOR.unpack_from(v)
        pending.reading(r.seq_of(k), ts, sensor, bytes(v[r.TS_SENSOR.size :]))
        n += 1
    if pending is not None:
        pending.flush()
    return n
