"""Rollups and retention in the store (hub/state/rollups.py, apply's PRUNE) over
real LMDB: rollups equal the raw computation whatever order readings commit
in, retention deletes the same records on every replica within its budget,
and the hourly energy of pruned days stays what it was."""

from __future__ import annotations

import itertools
import random
import struct
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import lmdb
import pytest

from hub.core.config import ConfigError, HubConfig, RetentionConfig, StoreConfig, load
from hub.link.ingest import Ingest, Status
from hub.state import entries as e
from hub.state.apply import Outcome
from hub.state.records import HOUR_MS
from hub.state.retention import Housekeeper
from hub.state.rollups import DAY_MS, ROLLUP_BYTES, Rollup, pack_rollup, unpack_rollup
from hub.state.store import ENERGY_WH_SENSOR, Store
from protocol import messages as m
from tests.unit import test_ingest as ti
from tools.bench.store import store

pytestmark = pytest.mark.unit

MAP = 64 << 20
DAY0 = date(2025, 11, 20)
START = int(datetime(2025, 11, 20, tzinfo=UTC).timestamp() * 1000)
DEVICE = "plug-1"
STEP_MS = 61_000  # a sample every 61 s: pairs straddle hour bounds


def _register(device_id: str = DEVICE) -> bytes:
    cap = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
    return e.encode(e.RegisterDevice(e.Device(device_id, b"k" * 32, (cap,), None, ""), 1))


def _samples(days: int, seed: int) -> list[tuple[int, float, float, float]]:
    """(ts, power W, energy counter Wh, voltage): a plug over ``days`` days
    whose counter resets once (a reboot)."""
    rnd = random.Random(seed)
    out, wh = [], 0.0
    for ts in range(START, START + days * DAY_MS, STEP_MS):
        watts = rnd.choice((0.0, 5.0, 600.0, 1850.5))
        wh = 0.0 if len(out) == 900 else wh + watts * STEP_MS / HOUR_MS
        out.append((ts, watts, wh, 229.0 + rnd.random() * 3))
    return out


def _batches(samples: list[tuple[int, float, float, float]], per: int = 1) -> list[bytes]:
    """One uplink batch per ``per`` samples, three readings each, seq from 1."""
    out = []
    for i in range(0, len(samples), per):
        chunk = samples[i : i + per]
        base = chunk[0][0]
        rs = tuple(
            m.Reading(sensor, ts - base, v)
            for ts, w, wh, volt in chunk
            for sensor, v in ((0, w), (ENERGY_WH_SENSOR, wh), (2, volt))
        )
        msg = m.TelemetryBatch(DEVICE, 1, 1 + 3 * i, base, rs)
        out.append(e.encode(e.Batch.from_message(msg, "hub-1")))
    return out


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _reference(samples: list[tuple[int, float, float, float]]) -> dict[int, float]:
    """Energy per UTC hour from every counter reading, computed here on its
    own: consecutive pairs, a decrease is a reset, linear between them."""
    wh: dict[int, float] = defaultdict(float)
    points = [(ts, _f32(v)) for ts, _, v, _ in samples]
    for (a_ts, a), (b_ts, b) in itertools.pairwise(points):
        delta = b - a if b >= a else b
        for h in range(a_ts // HOUR_MS, (b_ts - 1) // HOUR_MS + 1):
            lo, hi = max(a_ts, h * HOUR_MS), min(b_ts, (h + 1) * HOUR_MS)
            if hi > lo and delta > 0:
                wh[h] += delta * (hi - lo) / (b_ts - a_ts)
    return wh


def _energy(store: Store, days: int) -> list[float]:
    return [
        h.wh for d in range(days) for h in store.hourly_energy(DEVICE, DAY0 + timedelta(days=d))
    ]


def _numbered(entries: list[bytes], start: int = 1) -> list[tuple[int, bytes]]:
    return list(enumerate(entries, start))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    with Store(tmp_path / "a", map_size=MAP) as a, Store(tmp_path / "b", map_size=MAP) as b:
        yield a, b


def test_rollups_equal_the_raw_energy_whatever_the_commit_order(
    stores: tuple[Store, Store],
) -> None:
    samples = _samples(3, seed=1)
    batches = _batches(samples)
    shuffled = batches[:]
    random.Random(7).shuffle(shuffled)  # a backlog and hole fills, in any order
    a, b = stores
    a.apply(_numbered([_register(), *batches]))
    b.apply(_numbered([_register(), *shuffled]))
    ref = _reference(samples)
    want = [ref.get(START // HOUR_MS + i, 0.0) for i in range(72)]
    for s in (a, b):
        assert _energy(s, 3) == pytest.approx(want, abs=1e-5)
        raw = [h.wh for d in range(3) for h in s.raw_hourly_energy(DEVICE, DAY0 + timedelta(d))]
        assert raw == pytest.approx(want, abs=1e-5)
    # Integer rollups: the same bits whatever the order, so the same hash.
    assert a.content_hash() == b.content_hash()
    assert a.watermark(DEVICE) == b.watermark(DEVICE) == 3 * len(samples)


def test_a_counter_jump_of_any_size_counts_nowhere_and_never_fails_apply(
    stores: tuple[Store, Store],
) -> None:
    # The largest f32s, infinities and NaN in the energy counter: pairs that
    # are no plug's energy. Apply stores every reading, the energy of those
    # pairs counts nowhere (rollup and raw alike), the rest still counts.
    hostile = (3.4e38, 5e9, 34359738368.0, float("inf"), float("nan"), 2e9)
    samples = [(START + i * STEP_MS, 5.0, float(i), 230.0) for i in range(60)]
    for k, v in enumerate(hostile):
        samples[10 + 6 * k] = (samples[10 + 6 * k][0], 5.0, v, 230.0)
    a, b = stores
    batches = _batches(samples)
    a.apply(_numbered([_register(), *batches]))
    b.apply(_numbered([_register(), *reversed(batches)]))
    assert a.content_hash() == b.content_hash()
    assert a.watermark(DEVICE) == 3 * len(samples)
    hours = [h.wh for h in a.hourly_energy(DEVICE, DAY0)]
    raw = [h.wh for h in a.raw_hourly_energy(DEVICE, DAY0)]
    assert hours == pytest.approx(raw, abs=1e-6)
    assert 0 < sum(hours) < 1e6


def test_rollup_rows_of_the_older_layout_still_read() -> None:
    row = Rollup(count=3, summed=3, min=1.0, max=2.0, sum_micro=4_500_000, energy_nwh=-7)
    new = pack_rollup(row)
    assert len(new) == ROLLUP_BYTES == 48 and unpack_rollup(new) == row
    old = new[:32] + struct.pack(">q", row.energy_nwh)  # an i64 energy: 40 bytes
    assert unpack_rollup(old) == row
    big = Rollup(1, 1, 0.0, 0.0, 10**30, 10**35)  # past an i64: kept whole
    assert unpack_rollup(pack_rollup(big)) == big


def test_hourly_and_daily_figures_per_sensor(stores: tuple[Store, Store]) -> None:
    samples = _samples(2, seed=2)
    a, _ = stores
    a.apply(_numbered([_register(), *_batches(samples)]))
    hour = START // HOUR_MS + 5
    in_hour = [s for s in samples if s[0] // HOUR_MS == hour]
    (n, _, row), *_ = a.rollups(DEVICE, hour * HOUR_MS, (hour + 1) * HOUR_MS, 0)
    powers = [_f32(s[1]) for s in in_hour]
    assert n == hour and row.count == len(in_hour)
    assert (row.min, row.max) == (min(powers), max(powers))
    assert row.mean == pytest.approx(sum(powers) / len(powers))
    days = a.rollups(DEVICE, START, START + 2 * DAY_MS, ENERGY_WH_SENSOR, period="day")
    ref = _reference(samples)
    assert [d for d, _, _ in days] == [START // DAY_MS, START // DAY_MS + 1]
    for d, _, row in days:
        hours = range(d * 24, d * 24 + 24)
        assert row.wh == pytest.approx(sum(ref.get(h, 0.0) for h in hours), abs=1e-4)
        assert row.count == sum(1 for s in samples if s[0] // DAY_MS == d)


def _prune(raw_before: int, rollup_before: int = 0, most: int = 100_000) -> bytes:
    return e.encode(e.Prune((e.PruneDevice(DEVICE, raw_before, rollup_before),), most, 0))


def test_retention_deletes_the_same_records_on_every_replica_and_keeps_the_energy(
    stores: tuple[Store, Store],
) -> None:
    samples = _samples(3, seed=3)
    batches = _batches(samples)
    a, b = stores
    log = [_register(), *batches]
    for s in (a, b):
        s.apply(_numbered(log))
    before = _energy(a, 3)
    cut = START + 2 * DAY_MS  # the first two days' raw readings go
    steps = [_prune(cut, most=5000) for _ in range(12)]
    results = [a.apply(_numbered([x], len(log) + 1 + i))[0] for i, x in enumerate(steps)]
    b.apply(_numbered(steps, len(log) + 1))
    assert a.content_hash() == b.content_hash()
    removed = [r.removed for r in results]
    # Bounded work: each step stops once it used its budget (at the end of an
    # hour of readings); the steps together delete everything before the cut.
    assert all(x <= 5000 + 3 * 60 for x in removed) and sum(1 for x in removed if x) > 2
    assert results[-1].outcome is Outcome.UNCHANGED
    assert a.readings_between(DEVICE, 0, cut) == []
    assert len(a.readings_between(DEVICE, cut, START + 3 * DAY_MS)) == 3 * sum(
        1 for s in samples if s[0] >= cut
    )
    assert a.retention(DEVICE) == (cut, 0)
    # The energy charts read the rollups: the pruned days are what they were.
    assert _energy(a, 3) == before and _energy(b, 3) == before
    # Readings that commit after the cut keep the energy exact; one stamped
    # before it is stored but leaves the final hours alone.
    more = _samples(4, seed=3)[len(samples) :]
    rest = _batches(samples + more)[len(batches) :]
    next_seq = 3 * len(samples + more) + 1
    late = m.TelemetryBatch(DEVICE, 1, next_seq, START + 1000, (m.Reading(1, 0, 9999.0),))
    rest.append(e.encode(e.Batch.from_message(late, "hub-1")))
    a.apply(_numbered(rest, len(log) + len(steps) + 1))
    ref = _reference(samples + more)
    assert _energy(a, 4)[48:] == pytest.approx(
        [ref.get(START // HOUR_MS + 48 + i, 0.0) for i in range(48)], abs=1e-5
    )
    assert _energy(a, 4)[:48] == before[:48]
    assert [r.seq for r in a.readings_between(DEVICE, 0, cut)] == [next_seq]


def test_rollups_go_after_their_own_cut_and_removal_takes_everything(
    stores: tuple[Store, Store],
) -> None:
    a, _ = stores
    log = [_register(), *_batches(_samples(2, seed=4))]
    a.apply(_numbered(log))
    cut = START + DAY_MS
    a.apply([(len(log) + 1, _prune(cut + DAY_MS, cut))])
    assert a.rollups(DEVICE, 0, cut, period="hour") == []
    assert a.rollups(DEVICE, 0, cut, period="day") == []
    assert len(a.rollups(DEVICE, cut, cut + DAY_MS, 0)) == 24
    assert a.readings(DEVICE) == []
    # Cut-offs never move back.
    a.apply([(len(log) + 2, _prune(START, 0))])
    assert a.retention(DEVICE) == (cut + DAY_MS, cut)
    a.apply([(len(log) + 3, e.encode(e.RemoveDevice(DEVICE, 5)))])
    assert a.rollups(DEVICE, 0, 2**62, period="hour") == []
    assert a.retention(DEVICE) == (0, 0)


def test_readings_above_the_watermark_wait_for_the_gap(stores: tuple[Store, Store]) -> None:
    a, _ = stores
    batches = _batches(_samples(1, seed=5))
    log = [_register(), batches[0], *batches[2:]]  # batch 2 has not come yet
    a.apply(_numbered(log))
    mark = a.watermark(DEVICE)
    a.apply([(len(log) + 1, _prune(START + DAY_MS))])
    assert min(r.seq for r in a.readings(DEVICE)) == mark + 3 + 1
    # The hole is filled: the watermark moves over the readings still there.
    a.apply([(len(log) + 2, batches[1])])
    assert a.watermark(DEVICE) == 3 * len(_samples(1, seed=5))


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        (e.Prune((), 0, 1), "max_records"),
        (e.Prune((e.PruneDevice(DEVICE, 1, 2),), 10, 1), "rollups cut after"),
        (e.Prune((e.PruneDevice("bad id", 1, 0),), 10, 1), "bad id"),
    ],
)
def test_a_bad_retention_step_is_refused(entry: e.Prune, detail: str) -> None:
    with pytest.raises(e.EntryError) as err:
        e.encode(entry)
    assert detail in str(err.value)


def test_a_format_1_store_gets_its_rollups_when_opened(tmp_path: Path) -> None:
    samples = _samples(1, seed=6)
    with Store(tmp_path / "s", map_size=MAP) as s:
        s.apply(_numbered([_register(), *_batches(samples)]))
        want, digest = _energy(s, 1), s.content_hash()
    env = lmdb.open(str(tmp_path / "s" / "store.mdb"), subdir=False, max_dbs=32)
    with env.begin(write=True) as txn:  # as the release before the rollups wrote it
        for name in (b"energy_index", b"rollup_days", b"rollup_hours"):
            txn.drop(env.open_db(name, txn=txn), delete=True)
        txn.put(b"format", struct.pack(">I", 1), db=env.open_db(b"meta", txn=txn))
    env.close()
    with Store(tmp_path / "s", map_size=MAP) as s:
        assert _energy(s, 1) == want and s.content_hash() == digest


def test_a_full_map_grows_into_the_reserve_then_waits_never_skips(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 20) as s:
        s.set_full_policy(growth=0.5, wait=True)
        reasons: list[str] = []

        def on_full(reason: str) -> None:
            reasons.append(reason)
            s.set_full_policy(growth=4.0, wait=True)  # what an operator's larger map does

        s.on_full = on_full
        s.apply(_numbered([_register()]))
        batches = _batches(_samples(10, seed=8))
        index = 2
        for i in range(0, len(batches), 100):  # 100 entries per apply call
            chunk = _numbered(batches[i : i + 100], index)
            assert {r.outcome for r in s.apply(chunk)} == {Outcome.APPLIED}
            index += len(chunk)
        assert s.grown == 2 and s.full_waits == 1 and "is full" in reasons[0]
        assert s.applied_index() == index - 1
        assert s.watermark(DEVICE) == 3 * len(_samples(10, seed=8))
        u = s.usage()
        assert 0 < u.used <= u.high <= u.map_size == 5 << 20


# -- configuration and the benchmark ------------------------------------------------------

CONFIG = """
[node]
id = "hub-1"
data_dir = "data/hub-1"

[raft]
bind = "127.0.0.1:4321"
secret_env = "AIOT_TEST_SECRET"

[broker]
bind = "127.0.0.1:1883"

[http]
bind = "127.0.0.1:8080"

[tls]
plain = true
"""


def _config(tmp_path: Path, extra: str) -> HubConfig:
    path = tmp_path / "hub.toml"
    path.write_text(CONFIG + extra)
    return load(path, {"AIOT_TEST_SECRET": "s" * 32})


def test_store_and_retention_tables_in_the_config(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "")
    assert cfg.store == StoreConfig() and cfg.retention == RetentionConfig()
    cfg = _config(
        tmp_path,
        "[store]\nmap_size_mb = 512\nalert_at = 0.5\nrefuse_at = 0.6\n"
        "[retention]\nraw_days = 7\nclasses = { plug = 14, meter = 0.5 }\nperiod_s = 5\n",
    )
    assert (cfg.store.map_size_mb, cfg.store.alert_at, cfg.store.refuse_at) == (512, 0.5, 0.6)
    r = cfg.retention
    assert (r.raw_days_of("plug-7"), r.raw_days_of("meter-1"), r.raw_days_of("lamp-1")) == (
        14.0,
        0.5,
        7.0,
    )


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("[store]\nalert_at = 0.9\nrefuse_at = 0.8\n", "store.refuse_at: must be at or above"),
        ("[store]\nmap_size_mb = 0\n", "store.map_size_mb"),
        ("[retention]\nclasses = { plug = -1 }\n", "plug: expected a number"),
        ('[retention]\nclasses = { "a b" = 1 }\n', "device class 'a b'"),
        ("[retention]\nraw_dayz = 1\n", "raw_dayz"),
    ],
)
def test_a_bad_store_or_retention_table_is_refused(tmp_path: Path, extra: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, extra)
    assert said in str(err.value)


def test_the_store_benchmark_reports_what_it_measured() -> None:
    out = store(hours=2.0, step_records=5000, say=lambda _: None)
    assert out["readings"] == 2 * 3600 * 3
    assert out["bytes_per_reading"] > 14  # at least the value it stores
    assert out["days_per_gib_per_plug"] == round((1 << 30) / out["bytes_per_plug_day"], 1)
    # The first hour's readings and energy index entries but the newest one.
    assert out["retention_removed"] == 3600 * 3 + 3600 - 1
    assert out["retention_steps"] >= 2 and out["retention_freed_bytes"] > 0


def test_ingest_refuses_a_batch_while_the_store_is_full_then_takes_it(tmp_path: Path) -> None:
    with ti.new_store(tmp_path / "s") as s:
        full = ["store 90% full (refuse_at 85% of a 2 MiB map)"]
        proposer = ti.StoreProposer(s, None)
        ingest = Ingest("hub-1", s, proposer, ti.CONFIG, ti.clock, 0.0, full=lambda: full[0])
        digest = s.content_hash()
        out = ti.run(ingest.handle(ti.UP1, ti.frame(first=11)))
        assert (out.status, out.reason, out.detail) == (Status.REJECTED, "store_full", full[0])
        assert out.publish is None  # no ack: the device keeps the batch and resends it
        assert s.content_hash() == digest and ingest.counters["store_full"] == 1
        full[0] = ""  # retention freed space
        out = ti.run(ingest.handle(ti.UP1, ti.frame(first=11)))
        assert out.status is Status.ACKED and ti.acked_watermark(out) == 20


def test_the_leader_steps_name_each_device_with_its_class_cut_offs() -> None:
    cfg = RetentionConfig(raw_days=0, classes=(("plug", 1.0),), rollup_days=10)
    keeper = Housekeeper("hub-1", None, StoreConfig(), cfg, lambda _: None)  # type: ignore[arg-type]
    now = START + 30 * DAY_MS
    entry = keeper.step_entry(["lamp-1", "plug-1", "plug-2"], now)
    assert entry is not None
    step = e.decode(entry)
    assert isinstance(step, e.Prune) and step.max_records == cfg.step_records
    cut = now - DAY_MS
    assert step.devices == (
        e.PruneDevice("plug-1", cut, now - 10 * DAY_MS),
        e.PruneDevice("plug-2", cut, now - 10 * DAY_MS),
    )
    assert keeper.step_entry(["lamp-1", "meter-1"], now) is None  # kept for ever
    many = [f"plug-{i}" for i in range(e.MAX_PRUNE_DEVICES + 10)]
    first, second = (e.decode(keeper.step_entry(many, now) or b"") for _ in range(2))
    assert isinstance(first, e.Prune) and isinstance(second, e.Prune)
    named = [d.device_id for d in first.devices + second.devices]
    assert set(named) == set(many)  # the second step goes on where the first stopped
