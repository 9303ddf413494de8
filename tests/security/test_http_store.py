"""The store behind the API, against what a viewer can make it do: a
readings query stops scanning once it has its ``limit`` (never the whole
range), the content hash reads a pinned view (consistent, no lock, cancelled
by a snapshot install), and the LMDB file is 0600 whatever the umask."""

from __future__ import annotations

import io
import os
import random
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.state import entries as e
from hub.state import records
from hub.state.records import HOUR_MS
from hub.state.store import DATA_FILE, Store, ViewClosed
from protocol import messages as m

pytestmark = pytest.mark.unit

BASE_TS = 1_763_700_000_000 // HOUR_MS * HOUR_MS  # on an hour
MAP = 256 << 20
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))


def register(device_id: str) -> bytes:
    return e.encode(e.RegisterDevice(e.Device(device_id, b"k" * 32, (RELAY,), None, ""), 1))


def batch(device_id: str, first: int, offsets: list[int], base: int) -> bytes:
    """Readings first.. at base + offset ms (an offset may go back: a clock slew)."""
    readings = tuple(m.Reading(i % 3, off, float(i)) for i, off in enumerate(offsets))
    msg = m.TelemetryBatch(device_id, 1, first, base, readings, 0)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def filled(path: Path, hours: int, per_hour: int, seed: int = 0) -> Store:
    """A store with ``per_hour`` readings in each of ``hours`` hours, some of
    them out of time order."""
    rng = random.Random(seed)
    store = Store(path, MAP)
    entries = [register("plug-1")]
    seq = 1
    step = HOUR_MS // per_hour
    size = max(1, 50_000 // step)  # readings per batch: offsets fit in 16 bits
    for h in range(hours):
        for start in range(0, per_hour, size):
            n = min(size, per_hour - start)
            times = [
                BASE_TS + h * HOUR_MS + (start + i) * step + rng.randint(-5000, 200)
                for i in range(n)
            ]
            base = min(times)
            entries.append(batch("plug-1", seq, [t - base for t in times], base))
            seq += n
    store.apply(list(enumerate(entries, 1)))
    return store


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records the store's scans yield (one counter per call)."""
    counts: list[int] = []
    real = records.scan

    def counting(*a: Any, **kw: Any) -> Iterator[tuple[bytes, bytes]]:
        counts.append(0)
        i = len(counts) - 1
        for kv in real(*a, **kw):
            counts[i] += 1
            yield kv

    monkeypatch.setattr(records, "scan", counting)
    return counts


def test_a_limited_readings_query_stops_scanning(tmp_path: Path, scanned: list[int]) -> None:
    hours, per_hour = 40, 500
    with filled(tmp_path / "s", hours, per_hour) as store:
        scanned.clear()
        everything = store.readings_between("plug-1", 0, 2**62)
        assert len(everything) == hours * per_hour
        whole = sum(scanned)
        scanned.clear()
        first = store.readings_between("plug-1", 0, 2**62, limit=10)
        assert first == everything[:10]
        # The hours table (one row per hour) and the readings of the first hour.
        print(f"unlimited: {whole} records scanned; limit 10: {sum(scanned)}")
        assert sum(scanned) <= hours + 2 * per_hour
        assert whole >= hours * per_hour


@pytest.mark.parametrize("seed", range(6))
def test_a_limited_query_is_the_start_of_the_whole_one(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with filled(tmp_path / "s", 5, 300, seed) as store:
        for _ in range(30):
            lo = BASE_TS + rng.randint(-HOUR_MS, 5 * HOUR_MS)
            hi = lo + rng.randint(1, 3 * HOUR_MS)
            sensor = rng.choice([None, 0, 1, 2])
            limit = rng.randint(1, 700)
            whole = store.readings_between("plug-1", lo, hi, sensor)
            assert store.readings_between("plug-1", lo, hi, sensor, limit) == whole[:limit]


def test_the_hash_reads_a_pinned_view(tmp_path: Path) -> None:
    with filled(tmp_path / "s", 2, 200) as store:
        before = store.content_hash()
        with store.pin() as view:
            next_index = store.applied_index() + 1
            store.apply([(next_index, batch("plug-1", 401, [1, 2, 3], BASE_TS + 5 * HOUR_MS))])
            assert store.content_hash() != before
            # The view is the store as it was when pinned, read without any lock.
            assert view.content_hash() == before


def test_a_snapshot_install_cancels_a_pinned_hash_and_waits(tmp_path: Path) -> None:
    with filled(tmp_path / "a", 3, 500) as source:
        image = io.BytesIO()
        source.snapshot_to(image)
        want = source.content_hash()
    with filled(tmp_path / "b", 1, 100, seed=1) as store:
        view = store.pin()
        restored = threading.Event()

        def restore() -> None:
            image.seek(0)
            store.restore(image)
            restored.set()

        t = threading.Thread(target=restore)
        t.start()
        # The install waits for the open view...
        assert not restored.wait(0.5)
        # ...whose reads now stop, and a new pin waits for the next store.
        with pytest.raises(ViewClosed):
            view.content_hash()
        view.close()
        t.join(30)
        assert restored.is_set()
        with store.pin() as fresh:
            assert fresh.content_hash() == want == store.content_hash()


def test_the_store_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with Store(tmp_path / "store", MAP) as store:
            store.apply([(1, register("plug-1"))])
        mode = stat.S_IMODE((tmp_path / "store" / DATA_FILE).stat().st_mode)
        assert mode == 0o600, oct(mode)
    finally:
        os.umask(old)
