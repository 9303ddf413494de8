"""The export outbox in apply (hub/state/outbox.py): off until switched on,
the readings each batch stored and nothing else, dropped up to the cursor,
the same on every replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state import outbox
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit

DEVICE = "plug-1"
T0 = 1_764_806_400_000


def _register() -> bytes:
    return e.encode(e.RegisterDevice(e.Device(DEVICE, b"k" * 32, (), None, ""), 1))


def _batch(first: int, n: int) -> bytes:
    rs = tuple(m.Reading(k % 3, 1000 * k, 10.0 + k) for k in range(n))
    msg = m.TelemetryBatch(DEVICE, 1, first, T0 + 1000 * first, rs)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def _export(on: bool, cursor: int = 0) -> bytes:
    return e.encode(e.Export(on, cursor, 1))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    with Store(tmp_path / "a", map_size=1 << 26) as a, Store(tmp_path / "b", map_size=1 << 26) as b:
        yield a, b


def _apply(stores: tuple[Store, ...], entries: list[tuple[int, bytes]]) -> None:
    for s in stores:
        s.apply(entries)


def test_nothing_is_kept_until_the_export_is_on(pair: tuple[Store, Store]) -> None:
    _apply(pair, [(1, _register()), (2, _batch(1, 6))])
    a, b = pair
    assert a.export_cursor() is None and a.outbox(0, 10) == []
    _apply(pair, [(3, _export(True)), (4, _batch(7, 6)), (5, _batch(10, 6))])
    assert a.export_cursor() == 3  # on from the entry after the switch
    records = a.outbox(0, 10)
    assert [(i, p) for i, p, _ in records] == [(4, 0), (5, 0)]
    kind, device, rows = outbox.decode(records[0][2])
    assert (kind, device, [r[0] for r in rows]) == (outbox.READINGS, DEVICE, list(range(7, 13)))
    assert rows[0][1:] == (T0 + 7000, 0, 10.0)
    # Batch 5 overlaps what was stored: only seq 13..15 are new, and only they go out.
    assert [r[0] for r in outbox.decode(records[1][2])[2]] == [13, 14, 15]
    _apply(pair, [(6, _batch(1, 12))])  # all of it stored already: nothing to export
    assert [i for i, _, _ in a.outbox(0, 10)] == [4, 5]
    assert a.content_hash() == b.content_hash()


def test_the_cursor_drops_what_was_exported_and_never_goes_back(pair: tuple[Store, Store]) -> None:
    entries = [(1, _register()), (2, _export(True))]
    entries += [(3 + k, _batch(1 + 5 * k, 5)) for k in range(6)]  # indexes 3..8
    _apply(pair, entries)
    a, b = pair
    assert [i for i, _, _ in a.outbox(2, 3)] == [3, 4, 5]  # three indexes at most
    _apply(pair, [(9, _export(True, 5))])
    assert a.export_cursor() == 5 and [i for i, _, _ in a.outbox(0, 10)] == [6, 7, 8]
    _apply(pair, [(10, _export(True, 4))])  # a stale commit: nothing moves
    assert a.export_cursor() == 5 and a.outbox_size() == 3
    _apply(pair, [(11, _export(False))])
    assert a.export_cursor() is None and a.outbox_size() == 0
    _apply(pair, [(12, _batch(40, 5))])
    assert a.outbox_size() == 0  # off again: nothing kept
    assert a.content_hash() == b.content_hash()


def test_a_group_keeps_one_record_per_part(pair: tuple[Store, Store]) -> None:
    group = e.group([_batch(1, 3), _batch(4, 3)])
    _apply(pair, [(1, _register()), (2, _export(True)), (3, group)])
    a, _ = pair
    assert [(i, p) for i, p, _ in a.outbox(0, 10)] == [(3, 1), (3, 2)]


def test_a_bad_export_entry_is_refused() -> None:
    data = bytearray(_export(True, 3))
    data[-17] = 2  # the on/off flag
    with pytest.raises(e.EntryError):
        e.decode(bytes(data))
