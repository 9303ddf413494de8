"""The hub store (hub/state/store.py) over real LMDB: idempotent apply, watermarks,
rejections, convergence hashes, snapshots, reads."""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import sensors
from hub.state import entries as e
from hub.state.apply import MAX_PROGRESS, Outcome
from hub.state.errors import IncompatibleStore, SnapshotError, StoreFull
from hub.state.records import HOUR_MS, TABLES, LedgerRecord, StateChange, pack_ledger, unpack_ledger
from hub.state.snapshot import IMAGE_MAGIC, SNAPSHOT_MAGIC, Snapshot
from hub.state.store import ENERGY_WH_SENSOR, HourlyEnergy, Store
from protocol import messages as m

pytestmark = pytest.mark.unit

BASE_TS = 1_763_700_000_000  # 2025-11-21 04:40 UTC
MAP = 64 << 20
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))


def value_of(device_id: str, seq: int) -> float:
    # The same reading whichever batch carries it, as on a real device.
    return float((seq * 7 + len(device_id)) % 1000) / 4


def ts_of(seq: int) -> int:
    return BASE_TS + seq * 1000


def batch(
    device_id: str,
    first: int,
    n: int,
    *,
    node: str = "hub-1",
    lost_before: int = 0,
    value: float | None = None,
) -> bytes:
    readings = tuple(
        m.Reading(
            seq % 3, (seq - first) * 1000, value_of(device_id, seq) if value is None else value
        )
        for seq in range(first, first + n)
    )
    msg = m.TelemetryBatch(device_id, 1, first, ts_of(first), readings, lost_before)
    return e.encode(e.Batch.from_message(msg, node))


def register(
    device_id: str = "plug-1",
    key: bytes = b"k" * 32,
    limit_w: float | None = None,
    owner: str = "",
) -> bytes:
    return e.encode(e.RegisterDevice(e.Device(device_id, key, (RELAY,), limit_w, owner), 1))


def node(
    node_id: str = "hub-1",
    at_ms: int = 1,
    *,
    raft: str = "10.0.0.1:4321",
    broker: str = "10.0.0.1:1883",
    http: str = "10.0.0.1:8080",
) -> e.NodeInfo:
    return e.NodeInfo(node_id, raft, broker, http, at_ms)


def numbered(entries: Iterable[bytes], start: int = 1) -> list[tuple[int, bytes]]:
    return list(enumerate(entries, start))


def seqs(store: Store, device_id: str) -> list[int]:
    return [r.seq for r in store.readings(device_id)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store", map_size=MAP)
    yield s
    s.close()


def open_store(path: Path) -> Store:
    return Store(path, map_size=MAP)


LOG = [register("plug-1"), batch("plug-1", 1, 10), batch("plug-1", 5, 10), batch("plug-1", 20, 5)]


# -- idempotence ----------------------------------------------------------------------


def test_the_same_entries_twice_change_nothing(store: Store) -> None:
    first = store.apply(numbered(LOG))
    assert [r.outcome for r in first] == [Outcome.APPLIED] * 4
    digest, readings = store.content_hash(), store.readings("plug-1")
    again = store.apply(numbered(LOG))
    assert [r.outcome for r in again] == [Outcome.SKIPPED] * 4
    assert [r.type for r in again] == [e.EntryType.REGISTER_DEVICE] + [e.EntryType.BATCH] * 3
    assert store.content_hash() == digest and store.readings("plug-1") == readings
    assert store.applied_index() == 4


def test_journal_replay_from_the_start_over_an_existing_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with open_store(path) as s:
        s.apply(numbered(LOG[:3]))
        digest = s.content_hash()
    with open_store(path) as s:  # restart: the journal replays everything
        assert s.applied_index() == 3 and s.content_hash() == digest
        results = s.apply(numbered(LOG))
        assert [r.outcome for r in results] == [Outcome.SKIPPED] * 3 + [Outcome.APPLIED]
        assert seqs(s, "plug-1") == list(range(1, 15)) + list(range(20, 25))


def test_a_batch_proposed_twice_stores_once(store: Store) -> None:
    store.apply(numbered(LOG[:2]))
    digest = store.content_hash()
    (r,) = store.apply([(3, LOG[1])])  # the same batch at a new index
    assert (r.outcome, r.stored, r.duplicates, r.watermark) == (Outcome.UNCHANGED, 0, 10, 10)
    assert store.content_hash() == digest
    assert store.applied_index() == 3


def test_overlapping_batches_keep_the_first_copy_of_each_reading(store: Store) -> None:
    store.apply(numbered([register(), batch("plug-1", 1, 10)]))
    (r,) = store.apply([(3, batch("plug-1", 5, 10, value=-1.0))])
    assert (r.stored, r.duplicates, r.watermark, r.node_id) == (4, 6, 14, "hub-1")
    got = store.readings("plug-1")
    assert [x.seq for x in got] == list(range(1, 15))
    assert [x.value for x in got[:10]] == [value_of("plug-1", s) for s in range(1, 11)]
    assert [x.value for x in got[10:]] == [-1.0] * 4
    assert [x.ts_ms for x in got] == [ts_of(s) for s in range(1, 15)]
    assert [x.sensor for x in got[:3]] == [1, 2, 0]


def test_indices_at_or_below_the_applied_one_are_skipped_within_a_call(store: Store) -> None:
    results = store.apply([(5, register()), (3, batch("plug-1", 1, 3)), (6, batch("plug-1", 1, 3))])
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.SKIPPED, Outcome.APPLIED]
    assert store.applied_index() == 6


def test_an_index_below_one_is_a_caller_error(store: Store) -> None:
    with pytest.raises(ValueError):
        store.apply([(0, register())])
    assert store.device("plug-1") is None and store.applied_index() == 0


# -- watermarks -------------------------------------------------------------------------


def test_watermark_stops_at_a_gap_and_moves_when_it_fills(store: Store) -> None:
    store.apply(numbered([register(), batch("plug-1", 1, 5), batch("plug-1", 11, 5)]))
    assert store.watermark("plug-1") == 5
    (r,) = store.apply([(4, batch("plug-1", 8, 2))])  # 8, 9: still missing 6, 7 and 10
    assert r.watermark == 5
    (r,) = store.apply([(5, batch("plug-1", 6, 2))])
    assert r.watermark == 9
    (r,) = store.apply([(6, batch("plug-1", 10, 1))])
    assert r.watermark == 15 and store.watermark("plug-1") == 15


def test_a_batch_that_does_not_start_at_one_leaves_the_watermark_at_zero(store: Store) -> None:
    (_, r) = store.apply(numbered([register(), batch("plug-1", 2, 5)]))
    assert (r.outcome, r.stored, r.watermark) == (Outcome.APPLIED, 5, 0)


def test_declared_loss_moves_the_watermark_past_the_gap(store: Store) -> None:
    store.apply(numbered([register(), batch("plug-1", 1, 5)]))
    (r,) = store.apply([(3, batch("plug-1", 11, 5, lost_before=11))])
    assert r.watermark == 15 and store.progress("plug-1") == (15, 11)
    # Readings of the gap that turn up after all are stored; nothing moves back.
    (r,) = store.apply([(4, batch("plug-1", 6, 3))])
    assert (r.stored, r.watermark) == (3, 15)
    assert seqs(store, "plug-1") == [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15]


def test_a_device_cannot_declare_lost_what_it_has_not_sent(store: Store) -> None:
    store.apply(numbered([register()]))
    (r,) = store.apply([(2, batch("plug-1", 11, 2, lost_before=1000))])
    assert r.watermark == 12 and store.progress("plug-1") == (12, 11)


# -- rejections -------------------------------------------------------------------------


def test_a_batch_for_an_unknown_device_is_rejected_without_a_trace(store: Store) -> None:
    store.apply(numbered([register()]))
    digest = store.content_hash()
    (r,) = store.apply([(2, batch("plug-9", 1, 5))])
    assert (r.outcome, r.reason, r.detail) == (Outcome.REJECTED, "unknown_device", "plug-9")
    assert r.error is not None and r.error.reason == "unknown_device"
    assert store.content_hash() == digest
    assert store.readings("plug-9") == [] and store.watermark("plug-9") == 0
    assert store.applied_index() == 2  # consumed: replay will not look at it again


def test_one_bad_entry_among_good_ones(tmp_path: Path) -> None:
    good = [register(), batch("plug-1", 1, 5), batch("plug-1", 6, 5)]
    mixed = [
        good[0],
        good[1],
        b"\x01\x01garbage",
        batch("plug-9", 1, 5),
        b"\x07\x01",
        e.encode(e.PutCommand("c-1", "plug-1", 1, "explode")),
        good[2],
    ]
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        results = a.apply(numbered(mixed))
        b.apply(numbered(good))
        assert [(r.outcome, r.reason) for r in results] == [
            (Outcome.APPLIED, ""),
            (Outcome.APPLIED, ""),
            (Outcome.REJECTED, "truncated"),
            (Outcome.REJECTED, "unknown_device"),
            (Outcome.REJECTED, "bad_version"),
            (Outcome.REJECTED, "unknown_action"),
            (Outcome.APPLIED, ""),
        ]
        assert results[-1].watermark == 10
        assert a.content_hash() == b.content_hash()
        assert a.commands("plug-1") == []


def test_a_group_applies_its_parts_one_by_one(store: Store) -> None:
    grp = e.group([register(), batch("plug-1", 1, 4), b"\x01\xee", batch("plug-1", 5, 4)])
    results = store.apply([(1, grp)])
    assert [(r.index, r.part, r.outcome) for r in results] == [
        (1, 1, Outcome.APPLIED),
        (1, 2, Outcome.APPLIED),
        (1, 3, Outcome.REJECTED),
        (1, 4, Outcome.APPLIED),
    ]
    assert results[2].reason == "unknown_type" and results[3].watermark == 8
    assert [r.outcome for r in store.apply([(1, grp)])] == [Outcome.SKIPPED]


def test_a_broken_group_is_rejected_whole(store: Store) -> None:
    (r,) = store.apply([(1, e.group([register()])[:-3])])
    assert (r.outcome, r.reason, r.type) == (Outcome.REJECTED, "truncated", e.EntryType.GROUP)
    assert store.device("plug-1") is None


# -- content hash --------------------------------------------------------------------------


def test_hash_is_equal_for_any_grouping_into_transactions(tmp_path: Path) -> None:
    log = numbered(
        [register("plug-1"), register("meter-1")]
        + [batch(d, f, 10) for f in (1, 11, 6, 30) for d in ("plug-1", "meter-1")]
        + [e.encode(e.Presence("plug-1", "hub-2", m.LinkState.ONLINE, 5))]
    )
    digests = set()
    for i, chunk in enumerate((len(log), 1, 3, 4)):
        with open_store(tmp_path / str(i)) as s:
            for start in range(0, len(log), chunk):
                s.apply(log[start : start + chunk])
            digests.add(s.content_hash())
    assert len(digests) == 1


def test_hash_differs_for_different_content(tmp_path: Path) -> None:
    base = [register(), batch("plug-1", 1, 10)]
    variants = [
        base,
        [register(), batch("plug-1", 1, 11)],  # one more reading
        [register(), batch("plug-1", 1, 10, value=3.0)],  # other values
        [*base, e.encode(e.Presence("plug-1", "hub-2", m.LinkState.ONLINE, 5))],
        [register(owner="bob"), batch("plug-1", 1, 10)],
        [*base, e.encode(e.PutCommand("c-1", "plug-1", 1, "relay.set"))],
    ]
    digests = set()
    for i, v in enumerate(variants):
        with open_store(tmp_path / str(i)) as s:
            s.apply(numbered(v))
            digests.add(s.content_hash())
    assert len(digests) == len(variants)
    # The node table (where each hub listens) is topology, not content.
    for j, extra in enumerate([node(), node(http="[::1]:8080"), node("hub-2")]):
        with open_store(tmp_path / f"n{j}") as s:
            s.apply(numbered([*base, e.encode(extra)]))
            assert s.content_hash() in digests


def test_hash_ignores_the_applied_index(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        a.apply(numbered(LOG))
        b.apply(numbered(LOG, start=100))
        assert a.applied_index() != b.applied_index()
        assert a.content_hash() == b.content_hash()


# -- snapshots ------------------------------------------------------------------------------


def test_snapshot_round_trip(tmp_path: Path) -> None:
    log = numbered(
        [register("plug-1"), register("meter-1")]
        + [batch("plug-1", f, 20) for f in (1, 21, 50)]
        + [e.encode(e.PutCommand("c-1", "plug-1", 2, "relay.set", (m.Param("on", True),)))]
    )
    with open_store(tmp_path / "a") as a:
        a.apply(log)
        buf = io.BytesIO()
        assert a.snapshot_to(buf) == len(log)
        digest = a.content_hash()
        more = numbered([batch("plug-1", 41, 9), batch("meter-1", 1, 3)], start=len(log) + 1)
        a.apply(more)
        final = a.content_hash()
    buf.seek(0)
    assert Store.install(tmp_path / "b", buf, map_size=MAP) == len(log)
    with open_store(tmp_path / "b") as b:
        assert b.content_hash() == digest and b.applied_index() == len(log)
        assert b.command("c-1") is not None and b.watermark("plug-1") == 40
        # The follower goes on from the snapshot with the rest of the log.
        assert [r.outcome for r in b.apply(log + more)][-2:] == [Outcome.APPLIED] * 2
        assert b.content_hash() == final and b.watermark("plug-1") == 69


def test_a_snapshot_is_the_view_when_it_was_taken(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        digest = a.content_hash()
        snap = a.snapshot()
        buf = io.BytesIO()
        writer = threading.Thread(target=snap.write_to, args=(buf,))
        a.apply([(5, batch("plug-1", 100, 30))])  # while the view is pinned
        writer.start()
        a.apply([(6, batch("plug-1", 200, 30))])
        writer.join()
        assert snap.applied_index == 4 and snap.content_hash() == digest
        snap.close()
        assert a.content_hash() != digest
    buf.seek(0)
    Store.install(tmp_path / "b", buf, map_size=MAP)
    with open_store(tmp_path / "b") as b:
        assert b.content_hash() == digest and b.applied_index() == 4


def test_restore_replaces_an_open_store(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        buf = io.BytesIO()
        a.snapshot_to(buf)
        digest = a.content_hash()
    with open_store(tmp_path / "b") as b:
        b.apply(numbered([register("other-1"), batch("other-1", 1, 3)] * 3))
        buf.seek(0)
        assert b.restore(buf) == 4
        assert b.content_hash() == digest and b.device("other-1") is None
        assert [r.outcome for r in b.apply([(5, batch("plug-1", 15, 5))])] == [Outcome.APPLIED]
        assert b.watermark("plug-1") == 24  # 15..19 fill the gap up to 20..24
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["store.mdb", "store.mdb-lock"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty"])
def test_a_damaged_snapshot_leaves_the_old_store(tmp_path: Path, damage: str) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        buf = io.BytesIO()
        a.snapshot_to(buf)
    data = bytearray(buf.getvalue())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-40:]
    elif damage == "magic":
        data[0:8] = b"NOTASNAP"
    else:
        data.clear()
    with open_store(tmp_path / "b") as b:
        b.apply(numbered([register("other-1")]))
        digest = b.content_hash()
        with pytest.raises(SnapshotError) as err:
            b.restore(io.BytesIO(bytes(data)))
        assert err.value.reason in ("bad_digest", "truncated", "bad_magic", "bad_order", "bad_tag")
        assert b.content_hash() == digest and b.device("other-1") is not None
    assert not (tmp_path / "b" / "store.mdb.install").exists()


def _image(snap: Snapshot, path: Path, prefix: bytes = b"") -> bytes:
    with open(path, "w+b") as out:
        out.write(prefix)
        n = snap.write_image(out)
    data = path.read_bytes()
    assert len(data) == len(prefix) + n and data[len(prefix) :].startswith(IMAGE_MAGIC)
    return data[len(prefix) :]


def test_an_image_is_the_view_when_it_was_taken_and_installs(tmp_path: Path) -> None:
    # What a Raft dump holds: LMDB's compacting copy of the pinned view, written
    # from another thread while apply goes on, after the dump's own header.
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        digest = a.content_hash()
        snap = a.snapshot()
        a.apply([(5, batch("plug-1", 100, 30))])
        out: list[bytes] = []
        writer = threading.Thread(
            target=lambda: out.append(_image(snap, tmp_path / "dump", b"raft header"))
        )
        writer.start()
        a.apply([(6, batch("plug-1", 200, 30))])
        writer.join()
        snap.close()
        assert a.content_hash() != digest
    (image,) = out
    assert Store.install(tmp_path / "b", io.BytesIO(image), map_size=MAP) == 4
    with open_store(tmp_path / "b") as b:
        assert b.content_hash() == digest and b.applied_index() == 4
        assert [r.outcome for r in b.apply([(5, batch("plug-1", 100, 30))])] == [Outcome.APPLIED]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["store.mdb", "store.mdb-lock"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "length", "version"])
def test_a_damaged_image_leaves_the_old_store(tmp_path: Path, damage: str) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        with a.snapshot() as snap:
            data = bytearray(_image(snap, tmp_path / "img"))
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-100:]
    elif damage == "length":
        data[18:26] = (len(data) * 2).to_bytes(8, "big")
    else:
        data[8:10] = b"\x00\x09"
    with open_store(tmp_path / "b") as b:
        b.apply(numbered([register("other-1")]))
        digest = b.content_hash()
        with pytest.raises(SnapshotError) as err:
            b.restore(io.BytesIO(bytes(data)))
        assert err.value.reason in ("bad_digest", "truncated", "bad_version"), err.value
        assert b.content_hash() == digest and b.device("other-1") is not None
    assert not (tmp_path / "b" / "store.mdb.install").exists()


def test_an_image_and_a_stream_of_one_view_install_the_same_store(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered([*LOG, batch("plug-1", 20, 40)]))
        with a.snapshot() as snap:
            image = _image(snap, tmp_path / "img")
            stream = io.BytesIO()
            snap.write_to(stream)
    Store.install(tmp_path / "i", io.BytesIO(image), map_size=MAP)
    Store.install(tmp_path / "s", io.BytesIO(stream.getvalue()), map_size=MAP)
    with open_store(tmp_path / "i") as i, open_store(tmp_path / "s") as st:
        assert i.content_hash() == st.content_hash()
        assert i.applied_index() == st.applied_index() == 5


def test_a_leftover_partial_install_is_cleaned_on_open(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.mdb.install").write_bytes(b"half a snapshot")
    with open_store(tmp_path / "s") as s:
        assert s.applied_index() == 0
    assert not (tmp_path / "s" / "store.mdb.install").exists()


# -- reads ------------------------------------------------------------------------------------


def test_readings_by_seq_and_by_time(store: Store) -> None:
    store.apply(numbered([register(), register("plug-10"), batch("plug-1", 1, 50)]))
    store.apply([(4, batch("plug-10", 1, 5))])  # an id that extends "plug-1"
    assert [r.seq for r in store.readings("plug-1", 10, 14)] == [10, 11, 12, 13, 14]
    assert [r.seq for r in store.readings("plug-1", 45, limit=3)] == [45, 46, 47]
    assert seqs(store, "plug-10") == [1, 2, 3, 4, 5]
    got = store.readings_between("plug-1", ts_of(20), ts_of(30))
    assert [r.seq for r in got] == list(range(20, 30))
    power = store.readings_between("plug-1", ts_of(1), ts_of(51), sensor=0)
    assert [r.seq for r in power] == list(range(3, 51, 3))
    assert store.readings_between("plug-1", ts_of(30), ts_of(30)) == []


def test_readings_by_time_across_hours_and_out_of_order_clocks(store: Store) -> None:
    store.apply(numbered([register()]))
    hour = (BASE_TS // HOUR_MS + 1) * HOUR_MS
    # seq 1..3 late in one hour, seq 4..6 stamped an hour *earlier* (clock step back).
    entries = []
    for first, base in ((1, hour + 3_000_000), (4, hour - 600_000), (7, hour + 3_500_000)):
        rs = tuple(m.Reading(0, i * 1000, float(first + i)) for i in range(3))
        entries.append(e.Batch.from_message(m.TelemetryBatch("plug-1", 1, first, base, rs), "h"))
    store.apply(numbered((e.encode(x) for x in entries), start=2))
    got = store.readings_between("plug-1", hour, hour + HOUR_MS)
    assert [r.seq for r in got] == [1, 2, 3, 7, 8, 9]
    earlier = store.readings_between("plug-1", hour - HOUR_MS, hour)
    assert [r.seq for r in earlier] == [4, 5, 6]


def _energy_log(
    device_id: str, start_ms: int, end_ms: int, step_ms: int, reset_at: int | None = None
) -> list[bytes]:
    # One batch per sample: power 600 W, an energy counter, voltage.
    out = []
    counter_zero = start_ms
    seq = 1
    for ts in range(start_ms, end_ms, step_ms):
        if reset_at is not None and ts > reset_at >= ts - step_ms:
            counter_zero = reset_at
        wh = 600.0 * (ts - counter_zero) / HOUR_MS
        rs = (m.Reading(0, 0, 600.0), m.Reading(ENERGY_WH_SENSOR, 0, wh), m.Reading(2, 0, 230.0))
        msg = m.TelemetryBatch(device_id, 1, seq, ts, rs)
        out.append(e.encode(e.Batch.from_message(msg, "hub-1")))
        seq += 3
    return out


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_hourly_energy_from_the_counter(store: Store) -> None:
    day = date(2025, 11, 21)
    start = _ms(datetime(2025, 11, 21, tzinfo=UTC))
    reset = start + 10 * HOUR_MS + 29 * 60_000 + 30_000  # a reboot at 10:29:30
    log = _energy_log("plug-1", start - 1_800_000, start + 86_400_000 + 1_800_000, 60_000, reset)
    store.apply(numbered([register(), *log]))
    hours = store.hourly_energy("plug-1", day)
    assert [h.start_ms for h in hours] == [start + i * HOUR_MS for i in range(24)]
    wh = [h.wh for h in hours]
    # The half minute before the reboot was never reported: 600 - 5 Wh.
    assert wh[10] == pytest.approx(595.0, rel=1e-4)
    assert wh[:10] + wh[11:] == pytest.approx([600.0] * 23, rel=1e-4)
    later = store.hourly_energy("plug-1", day + timedelta(days=3))
    assert later == tuple(HourlyEnergy(h.start_ms + 3 * 86_400_000, 0.0) for h in hours)


def test_hourly_energy_splits_at_hour_boundaries(store: Store) -> None:
    start = _ms(datetime(2025, 11, 21, tzinfo=UTC))
    entries = []
    for seq, minute, counter in ((1, 9 * 60 + 40, 100.0), (2, 10 * 60 + 20, 140.0)):
        rs = (m.Reading(ENERGY_WH_SENSOR, 0, counter),)
        msg = m.TelemetryBatch("plug-1", 1, seq, start + minute * 60_000, rs)
        entries.append(e.encode(e.Batch.from_message(msg, "hub-1")))
    store.apply(numbered([register(), *entries]))
    wh = [h.wh for h in store.hourly_energy("plug-1", date(2025, 11, 21))]
    assert wh[9] == pytest.approx(20.0) and wh[10] == pytest.approx(20.0)
    assert sum(wh) == pytest.approx(40.0)


def test_hourly_energy_on_a_dst_day_has_23_hours(store: Store) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = _ms(datetime(2025, 3, 30, tzinfo=berlin))
    end = _ms(datetime(2025, 3, 31, tzinfo=berlin))
    assert end - start == 23 * HOUR_MS
    store.apply(
        numbered([register(), *_energy_log("plug-1", start - 60_000, end + 180_000, 120_000)])
    )
    hours = store.hourly_energy("plug-1", date(2025, 3, 30), berlin)
    assert len(hours) == 23 and hours[0].start_ms == start
    assert [h.wh for h in hours] == pytest.approx([600.0] * 23, rel=1e-4)


def test_the_energy_sensor_is_the_edge_one() -> None:
    assert ENERGY_WH_SENSOR == sensors.ENERGY_WH == sensors.NAMES.index("energy_wh")


# -- registry, presence, ledger, models ----------------------------------------------------------


def test_registration_is_idempotent_and_does_not_overwrite(store: Store) -> None:
    same_later = e.encode(e.RegisterDevice(e.Device("plug-1", b"k" * 32, (RELAY,)), 99))
    results = store.apply(numbered([register(), same_later, register(key=b"x" * 32)]))
    assert [(r.outcome, r.reason) for r in results] == [
        (Outcome.APPLIED, ""),
        (Outcome.UNCHANGED, ""),
        (Outcome.REJECTED, "device_exists"),
    ]
    assert store.device("plug-1") == e.Device("plug-1", b"k" * 32, (RELAY,))
    store.apply([(4, register("meter-1", limit_w=3680.0, owner="ann"))])
    assert [d.device_id for d in store.devices()] == ["meter-1", "plug-1"]
    assert store.device("meter-1") == e.Device("meter-1", b"k" * 32, (RELAY,), 3680.0, "ann")


def test_removal_forgets_readings_but_keeps_the_command_sequence(store: Store) -> None:
    put = e.encode(e.PutCommand("c-1", "plug-1", 1, "relay.set"))
    store.apply(numbered([register(), batch("plug-1", 1, 10), put]))
    store.apply(numbered([e.encode(e.Presence("plug-1", "hub-1", m.LinkState.ONLINE, 1))], 4))
    (r,) = store.apply([(5, e.encode(e.RemoveDevice("plug-1", 9)))])
    assert r.outcome is Outcome.APPLIED
    assert store.device("plug-1") is None and store.readings("plug-1") == []
    assert store.watermark("plug-1") == 0 and store.presence("plug-1") is None
    assert store.readings_between("plug-1", 0, 2**62) == []
    (r,) = store.apply([(6, e.encode(e.RemoveDevice("plug-1", 9)))])
    assert r.reason == "unknown_device"
    # Provisioned again: readings start over, the command sequence goes on.
    put2 = e.encode(e.PutCommand("c-2", "plug-1", 1, "relay.set"))
    results = store.apply(numbered([register(), batch("plug-1", 1, 3), put2], 7))
    assert results[1].stored == 3 and results[1].watermark == 3
    assert results[2].command_seq == 2


def test_presence_follows_the_session(store: Store) -> None:
    def p(node: str, state: m.LinkState, at: int) -> bytes:
        return e.encode(e.Presence("plug-1", node, state, at))

    on, off = m.LinkState.ONLINE, m.LinkState.OFFLINE
    results = store.apply(
        numbered(
            [
                register(),
                p("hub-1", on, 100),
                p("hub-2", on, 200),  # moved
                p("hub-1", off, 210),  # the old hub's late "lost it": ignored
                p("hub-2", on, 150),  # older news from the holder: ignored
                p("hub-2", off, 300),
                p("hub-9", on, 1),  # any node may claim it next, even with a slow clock
            ]
        )
    )
    assert [r.outcome for r in results[1:]] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.UNCHANGED,
        Outcome.UNCHANGED,
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]
    rec = store.presence("plug-1")
    assert rec is not None and (rec.node_id, rec.state, rec.at_ms) == ("hub-9", on, 1)
    (r,) = store.apply([(8, e.encode(e.Presence("ghost-1", "hub-1", on, 1)))])
    assert r.reason == "unknown_device"


def test_command_ledger(store: Store) -> None:
    L = e.LedgerState

    def put(cid: str, deadline: int = 10_000, on: bool = True) -> bytes:
        return e.encode(
            e.PutCommand(cid, "plug-1", 3, "relay.set", (m.Param("on", on),), 100, deadline)
        )

    def result(cid: str, seq: int, status: m.CommandStatus, dev: str = "plug-1") -> bytes:
        return e.encode(e.RecordResult(m.CommandResult(cid, dev, seq, status), "hub-2", 500))

    def mark(cid: str, state: e.LedgerState, at: int) -> bytes:
        return e.encode(e.MarkCommand(cid, state, "hub-1", at))

    results = store.apply(
        numbered(
            [
                register(),
                put("c-1"),
                put("c-2"),
                put("c-1"),  # re-proposed after a leader change
                put("c-1", on=False),  # another command under a used id
                mark("c-1", L.SENT, 200),
                result("c-1", 1, m.CommandStatus.DONE),
                result("c-1", 1, m.CommandStatus.FAILED),  # redelivered, other answer
                result("c-2", 1, m.CommandStatus.DONE),  # wrong seq
                result("c-2", 2, m.CommandStatus.DONE, dev="plug-2"),
                result("c-9", 1, m.CommandStatus.DONE),
                mark("c-2", L.EXPIRED, 9_999),  # too early
                mark("c-2", L.EXPIRED, 10_000),
                result("c-2", 2, m.CommandStatus.DONE),  # the device did run it
            ]
        )
    )
    assert [(r.outcome, r.reason, r.command_seq) for r in results[1:]] == [
        (Outcome.APPLIED, "", 1),
        (Outcome.APPLIED, "", 2),
        (Outcome.UNCHANGED, "", 1),
        (Outcome.REJECTED, "command_exists", 0),
        (Outcome.APPLIED, "", 1),
        (Outcome.APPLIED, "", 1),
        (Outcome.UNCHANGED, "", 1),
        (Outcome.REJECTED, "wrong_seq", 0),
        (Outcome.REJECTED, "wrong_device", 0),
        (Outcome.REJECTED, "unknown_command", 0),
        (Outcome.REJECTED, "deadline_not_passed", 0),
        (Outcome.APPLIED, "", 2),
        (Outcome.APPLIED, "", 2),
    ]
    c1 = store.command("c-1")
    assert c1 is not None and c1.state is L.DONE and c1.command.seq == 1
    assert c1.command.params == (m.Param("on", True),) and c1.command.term == 3
    assert [(h.state, h.at_ms, h.node_id) for h in c1.history] == [
        (L.PENDING, 100, ""),
        (L.SENT, 200, "hub-1"),
        (L.DONE, 500, "hub-2"),
    ]
    assert c1.result is not None and c1.result.status is m.CommandStatus.DONE
    c2 = store.command("c-2")
    assert c2 is not None and [h.state for h in c2.history] == [L.PENDING, L.EXPIRED, L.DONE]
    assert [c.command.command_id for c in store.commands("plug-1")] == ["c-1", "c-2"]
    assert store.command("c-9") is None


def test_accepted_answers_with_news_are_progress_in_the_history(store: Store) -> None:
    L = e.LedgerState
    accepted = m.CommandStatus.ACCEPTED

    def answer(status: m.CommandStatus, detail: str, at: int) -> bytes:
        res = m.CommandResult("c-1", "plug-1", 1, status, detail=detail)
        return e.encode(e.RecordResult(res, "hub-2", at))

    put = e.PutCommand("c-1", "plug-1", 3, "relay.set", (m.Param("on", True),), 100, 0)
    news = [f"step {i}" for i in range(MAX_PROGRESS + 2)]
    results = store.apply(
        numbered(
            [
                register(),
                e.encode(put),
                answer(accepted, "downloading", 200),  # PENDING -> SENT
                answer(accepted, "downloading", 210),  # redelivered: nothing new
                answer(accepted, "", 220),  # no news
                answer(accepted, "verified; rebooting", 300),
                *(answer(accepted, d, 400 + i) for i, d in enumerate(news)),
                answer(m.CommandStatus.DONE, "running app b", 900),
                answer(accepted, "late news", 950),  # after the outcome: ignored
            ]
        )
    )
    outcomes = [r.outcome for r in results[2:]]
    kept = MAX_PROGRESS - 2  # two details came before the list
    assert outcomes == [
        Outcome.APPLIED,
        Outcome.UNCHANGED,
        Outcome.UNCHANGED,
        Outcome.APPLIED,
        *[Outcome.APPLIED] * kept,
        *[Outcome.UNCHANGED] * (len(news) - kept),
        Outcome.APPLIED,
        Outcome.UNCHANGED,
    ]
    rec = store.command("c-1")
    assert rec is not None and rec.state is L.DONE
    assert [(h.state, h.detail) for h in rec.history] == [
        (L.PENDING, ""),
        (L.SENT, "downloading"),
        (L.SENT, "verified; rebooting"),
        *[(L.SENT, d) for d in news[:kept]],
        (L.DONE, ""),
    ]
    assert rec.result is not None and rec.result.detail == "running app b"
    assert sum(1 for h in rec.history if h.detail) == MAX_PROGRESS


def test_a_version_1_ledger_record_still_reads(store: Store) -> None:
    L = e.LedgerState
    put = e.PutCommand("c-1", "plug-1", 3, "relay.set", (m.Param("on", True),), 100, 0)
    store.apply(numbered([register(), e.encode(put)]))
    rec = store.command("c-1")
    assert rec is not None
    sent = StateChange(L.SENT, 200, "hub-1")
    v2 = pack_ledger(LedgerRecord(rec.command, L.SENT, (*rec.history, sent), None))
    # Version 1 had no detail after each state change's node id.
    p = e.Packer().u8(1)
    e.pack_put_command(p, put)
    p.u64(1).u8(int(L.SENT)).u8(2)
    for h in (*rec.history, sent):
        p.u8(int(h.state)).u64(h.at_ms).str8(h.node_id)
    p.u8(0)
    old = unpack_ledger(bytes(p))
    assert old == unpack_ledger(v2)
    assert [(h.state, h.detail) for h in old.history] == [(L.PENDING, ""), (L.SENT, "")]


def test_a_command_needs_a_known_device_and_action(store: Store) -> None:
    results = store.apply(
        numbered(
            [
                register(),
                e.encode(e.PutCommand("c-1", "ghost-1", 1, "relay.set")),
                e.encode(e.PutCommand("c-2", "plug-1", 1, "self.destruct")),
            ]
        )
    )
    assert [r.reason for r in results[1:]] == ["unknown_device", "unknown_action"]
    assert store.command("c-1") is None and store.command("c-2") is None


def model_version(version: str, sha: bytes) -> e.ModelVersion:
    return e.ModelVersion("anomaly", version, "onnx", sha, 10, b"{}", b"s" * 64, "k1", 1)


def test_model_registry_versions_and_activation(store: Store) -> None:
    mv1, mv2 = model_version("1", b"\x01" * 32), model_version("2", b"\x02" * 32)
    v1 = e.PutModel("anomaly", "1", b"\x01" * 32, 10, "a.onnx", 1)
    v2 = e.PutModel("anomaly", "2", b"\x02" * 32, 20, "b.onnx", 2)
    (early,) = store.apply([(1, e.encode(v1))])  # not registered yet
    assert early.reason == "unknown_model_version"
    results = store.apply(
        numbered([e.encode(mv1), e.encode(mv2), e.encode(v1), e.encode(v1), e.encode(v2)], 2)
    )
    assert [r.outcome for r in results] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.UNCHANGED,
        Outcome.APPLIED,
    ]
    assert store.model("anomaly") == v2 and store.model("llm") is None
    assert [v.version for v in store.model_versions("anomaly")] == ["1", "2"]
    assert store.models() == [v2]
    (clash,) = store.apply([(9, e.encode(model_version("1", b"\x09" * 32)))])
    assert clash.reason == "model_version_exists"
    (wrong,) = store.apply([(10, e.encode(e.PutModel("anomaly", "1", b"\x07" * 32, 1, "", 3)))])
    assert wrong.reason == "unknown_model_version"
    assert e.decode(e.encode(mv1)) == mv1
    with pytest.raises(e.EntryError):
        e.encode(
            e.ModelVersion("anomaly", "1", "pickle", b"\x01" * 32, 1, b"{}", b"s" * 64, "k", 1)
        )


def test_a_model_is_switched_off_and_on_again(store: Store) -> None:
    mv1 = model_version("1", b"\x01" * 32)
    v1 = e.PutModel("anomaly", "1", b"\x01" * 32, 10, "a.onnx", 1)
    off = e.switched_off("anomaly", 5)
    results = store.apply(numbered([e.encode(mv1), e.encode(v1), e.encode(off), e.encode(off)]))
    assert [r.outcome for r in results][2:] == [Outcome.APPLIED, Outcome.UNCHANGED]
    assert store.model("anomaly") == off and off.version == "" and e.decode(e.encode(off)) == off
    before = store.content_hash()
    bad = e.PutModel("anomaly", "", b"\x01" * 32, 0, "", 6)  # no version but a sha256
    (refused,) = store.apply([(5, e.encode(bad))])
    assert refused.reason == "bad_value" and store.content_hash() == before
    (on,) = store.apply([(6, e.encode(v1))])  # activating a version switches it on
    assert on.outcome is Outcome.APPLIED and store.model("anomaly") == v1


# -- hub nodes ------------------------------------------------------------------------------


def test_node_table_put_replace_remove(store: Store) -> None:
    empty = store.content_hash()
    hub1 = node("hub-1", 100)
    (r,) = store.apply([(1, e.encode(hub1))])
    assert (r.outcome, r.type, r.node_id) == (Outcome.APPLIED, e.EntryType.NODE_PUT, "hub-1")
    assert store.node("hub-1") == hub1 and store.nodes() == [hub1]
    digest = store.content_hash()
    assert digest == empty  # the node table is topology, outside the content hash

    # A restart proposes the same addresses at a new time: nothing is written.
    (r,) = store.apply([(2, e.encode(node("hub-1", 200)))])
    assert r.outcome is Outcome.UNCHANGED
    assert store.node("hub-1") == hub1 and store.content_hash() == digest
    assert store.applied_index() == 2

    # New addresses replace the record, whatever its time (log order decides).
    moved = node("hub-1", 50, broker="192.168.1.10:1883")
    (r,) = store.apply([(3, e.encode(moved))])
    assert r.outcome is Outcome.APPLIED and store.node("hub-1") == moved
    assert store.content_hash() == empty

    hub0, hub2 = node("hub-0", 5), node("hub-2", 7, raft="[::1]:4321")
    store.apply(numbered([e.encode(hub2), e.encode(hub0)], 4))
    assert store.nodes() == [hub0, moved, hub2]  # by node_id
    assert store.node("hub-9") is None

    results = store.apply(
        numbered(
            [
                e.encode(e.RemoveNode("hub-1", 9)),
                e.encode(e.RemoveNode("hub-1", 10)),  # again
                e.encode(e.RemoveNode("hub-9", 11)),  # never known
            ],
            6,
        )
    )
    assert [(r.outcome, r.type, r.node_id) for r in results] == [
        (Outcome.APPLIED, e.EntryType.NODE_REMOVE, "hub-1"),
        (Outcome.UNCHANGED, e.EntryType.NODE_REMOVE, "hub-1"),
        (Outcome.UNCHANGED, e.EntryType.NODE_REMOVE, "hub-9"),
    ]
    assert store.nodes() == [hub0, hub2] and store.node("hub-1") is None
    store.apply(
        numbered([e.encode(e.RemoveNode("hub-0", 1)), e.encode(e.RemoveNode("hub-2", 1))], 9)
    )
    assert store.nodes() == [] and store.content_hash() == empty


def test_node_entries_inside_a_group(store: Store) -> None:
    bad = e.encode(node("hub-3"))[:2] + b"\x05hub/3" + e.encode(node("hub-3"))[8:]
    grp = e.group(
        [
            e.encode(node("hub-1", 1)),
            e.encode(node("hub-1", 2)),
            e.encode(e.RemoveNode("hub-2", 3)),
            bad,
            e.encode(node("hub-2", 4)),
            register(),
        ]
    )
    results = store.apply([(1, grp)])
    assert [(r.part, r.outcome) for r in results] == [
        (1, Outcome.APPLIED),
        (2, Outcome.UNCHANGED),
        (3, Outcome.UNCHANGED),
        (4, Outcome.REJECTED),
        (5, Outcome.APPLIED),
        (6, Outcome.APPLIED),
    ]
    assert (results[3].reason, results[3].type) == ("bad_value", e.EntryType.NODE_PUT)
    assert [n.node_id for n in store.nodes()] == ["hub-1", "hub-2"]
    assert store.node("hub-1") == node("hub-1", 1)


def test_node_records_converge_whatever_the_grouping(tmp_path: Path) -> None:
    log = [
        e.encode(node("hub-1", 1)),
        e.encode(node("hub-2", 2)),
        e.encode(node("hub-1", 3)),
        e.encode(node("hub-1", 4, http="h:1")),
        e.encode(e.RemoveNode("hub-2", 5)),
        e.encode(node("hub-3", 6)),
    ]
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        a.apply(numbered(log))
        b.apply([(1, e.group(log[:3])), (2, e.group(log[3:]))])
        assert a.content_hash() == b.content_hash() and a.nodes() == b.nodes()
        assert a.nodes() == [node("hub-1", 4, http="h:1"), node("hub-3", 6)]


def test_snapshot_carries_the_node_table(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered([e.encode(node("hub-1")), e.encode(node("hub-2")), *LOG]))
        buf = io.BytesIO()
        a.snapshot_to(buf)
        digest, nodes = a.content_hash(), a.nodes()
    assert b"T\x05nodes" in buf.getvalue()
    buf.seek(0)
    Store.install(tmp_path / "b", buf, map_size=MAP)
    with open_store(tmp_path / "b") as b:
        assert b.nodes() == nodes and len(nodes) == 2
        assert b.content_hash() == digest


def _drop_table(path: Path, name: str) -> None:
    env = lmdb.open(str(path / "store.mdb"), subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(name.encode(), txn=txn), delete=True)
    with env.begin(write=True) as txn, pytest.raises(lmdb.NotFoundError):
        env.open_db(name.encode(), txn=txn, create=False)
    env.close()


def test_a_store_from_before_the_node_table_opens(tmp_path: Path) -> None:
    # Such a store has every table but "nodes": opening it creates the table,
    # empty, and the content hash is what it was.
    path = tmp_path / "s"
    with open_store(path) as s:
        s.apply(numbered(LOG))
        digest = s.content_hash()
    _drop_table(path, "nodes")
    with open_store(path) as s:
        assert s.applied_index() == 4 and s.nodes() == [] and s.content_hash() == digest
        assert seqs(s, "plug-1") == list(range(1, 15)) + list(range(20, 25))
        (r,) = s.apply([(5, e.encode(node()))])
        assert r.outcome is Outcome.APPLIED and s.nodes() == [node()]
    with open_store(path) as s:
        assert s.nodes() == [node()]


def test_a_snapshot_from_before_the_node_table_installs(tmp_path: Path) -> None:
    with open_store(tmp_path / "a") as a:
        a.apply(numbered(LOG))
        buf = io.BytesIO()
        a.snapshot_to(buf)
        digest = a.content_hash()
    # The stream as a store without the table wrote it: no "nodes" section.
    body = buf.getvalue()[:-32]
    section = b"T\x05nodes"
    assert body.count(section) == 1 and body.startswith(SNAPSHOT_MAGIC)
    old = body.replace(section, b"")
    stream = io.BytesIO(old + hashlib.sha256(old).digest())
    assert Store.install(tmp_path / "b", stream, map_size=MAP) == 4
    with open_store(tmp_path / "b") as b:
        assert b.nodes() == [] and b.content_hash() == digest
        assert b.apply([(5, e.encode(node()))])[0].outcome is Outcome.APPLIED


def test_tables_are_sorted() -> None:
    # The content hash and the snapshot stream walk TABLES in this order, and
    # an install checks that table names increase.
    assert list(TABLES) == sorted(TABLES) and "nodes" in TABLES


# -- failure modes ------------------------------------------------------------------------------


def test_a_full_map_raises_and_writes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "s", map_size=1 << 20) as s:
        s.apply(numbered([register()]))
        index, first = 2, 1
        with pytest.raises(StoreFull):
            for _ in range(1000):
                before = (s.applied_index(), s.watermark("plug-1"))
                s.apply(
                    numbered(
                        [batch("plug-1", f, 60) for f in range(first, first + 3000, 60)], index
                    )
                )
                index, first = index + 50, first + 3000
        assert (s.applied_index(), s.watermark("plug-1")) == before
        assert before[0] > 1


def test_a_store_of_another_format_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "s", map_size=MAP).close()
    env = lmdb.open(str(tmp_path / "s" / "store.mdb"), subdir=False, max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", struct.pack(">I", 99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(IncompatibleStore):
        Store(tmp_path / "s", map_size=MAP)


# -- property: order and duplication do not matter ------------------------------------------------

DEVICES = ("plug-1", "meter-1")
batch_specs = st.tuples(
    st.sampled_from(DEVICES), st.integers(1, 40), st.integers(0, 12), st.booleans()
)


def _spec_bytes(spec: tuple[str, int, int, bool]) -> bytes:
    device_id, first, n, lost = spec
    return batch(device_id, first, n, lost_before=first if lost else 0)


def _state(s: Store) -> tuple[str, list[object]]:
    return s.content_hash(), [(s.readings(d), s.progress(d)) for d in DEVICES]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_interleaving_and_duplication_converges(data: st.DataObject) -> None:
    specs = data.draw(st.lists(batch_specs, min_size=1, max_size=10, unique=True), label="batches")
    extra = data.draw(st.lists(st.integers(0, len(specs) - 1), max_size=8), label="duplicates")
    order = data.draw(st.permutations(list(range(len(specs))) + extra), label="order")
    chunk = data.draw(st.integers(1, 5), label="entries per apply")
    grouped = data.draw(st.booleans(), label="as group entries")
    replay = data.draw(st.integers(0, len(order)), label="replayed prefix")
    setup = [register(d) for d in DEVICES]
    with tempfile.TemporaryDirectory() as tmp:
        with open_store(Path(tmp) / "ref") as ref:
            once = sorted(set(specs), key=lambda s: (s[0], s[1], s[2], s[3]))
            ref.apply(numbered(setup + [_spec_bytes(s) for s in once]))
            expected = _state(ref)
        with open_store(Path(tmp) / "s") as s:
            s.apply(numbered(setup))
            raw = [_spec_bytes(specs[i]) for i in order]
            if grouped:
                raw = [e.group(raw[i : i + chunk]) for i in range(0, len(raw), chunk)]
            log = numbered(raw, start=len(setup) + 1)
            for i in range(0, len(log), chunk):
                s.apply(log[i : i + chunk])
            s.apply(log[:replay])  # journal replay over the store
            assert _state(s) == expected
