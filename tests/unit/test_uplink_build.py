"""edge/uplink.py batch building over a real slot store (CPython, host directory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.clock import Clock
from edge.codec import Hmac
from edge.meta import Meta
from edge.slots import SlotStore
from edge.uplink import Uplink
from protocol import messages as m
from protocol import wire

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
T0 = 1_763_700_000_000


class NoClient:
    """Batch building never touches the client."""


@pytest.fixture
def opened() -> Iterator[list[SlotStore]]:
    stores: list[SlotStore] = []
    yield stores
    for store in stores:
        store.close()


def make(tmp_path: Path, opened: list[SlotStore], **store_kw: Any) -> Uplink:
    meta = Meta(str(tmp_path))
    store = SlotStore(str(tmp_path), meta, record_bytes=256, **store_kw)
    opened.append(store)
    return Uplink("plug-1", Hmac(KEY), store, NoClient(), Clock(), meta, max_readings=32)


def decode(frame: bytes) -> m.TelemetryBatch:
    msg = wire.decode_frame(frame, KEY, expect=m.TelemetryBatch)
    assert isinstance(msg, m.TelemetryBatch)
    return msg


def test_batches_carry_stored_readings_in_order(tmp_path: Path, opened: list[SlotStore]) -> None:
    up = make(tmp_path, opened)
    for i in range(50):
        up.store.add(i % 3, T0 + 1000 * (i // 3), float(i))
    up.store.flush()
    first, last, frame = up.build(1) or (0, 0, b"")
    batch = decode(frame)
    assert (first, last, batch.first_seq, len(batch.readings)) == (1, 32, 1, 32)
    assert batch.base_ts_ms == T0 and batch.lost_before == 0
    assert [r.value for r in batch.readings] == [float(i) for i in range(32)]
    assert batch.readings[5].offset_ms == 1000
    first, last, frame = up.build(33) or (0, 0, b"")
    assert (first, last) == (33, 50)
    assert up.build(51) is None


def test_a_batch_ends_where_offsets_would_overflow(tmp_path: Path, opened: list[SlotStore]) -> None:
    up = make(tmp_path, opened)
    for i, dt in enumerate((0, 30_000, 65_535, 65_536, 70_000)):
        up.store.add(0, T0 + dt, float(i))
    up.store.flush()
    assert up.build(1)[:2] == (1, 3)  # type: ignore[index]
    assert up.build(4)[:2] == (4, 5)  # type: ignore[index]


def test_readings_lost_to_overflow_are_declared(tmp_path: Path, opened: list[SlotStore]) -> None:
    up = make(tmp_path, opened, capacity=1024)
    for i in range(1500):  # no acks: the oldest slot is dropped, repeatedly
        up.store.add(i % 3, T0 + 1000 * (i // 3), 230.0 + (i % 7))
        if i % 20 == 19:
            up.store.flush()
    up.store.flush()
    floor = up.store.ack_floor()
    assert floor > 0 and up.meta.dropped == floor and up.meta.watermark == 0
    first, _last, frame = up.build(floor + 1) or (0, 0, b"")
    batch = decode(frame)
    assert first == floor + 1 and batch.lost_before == floor + 1
    # Once the hub has caught up, nothing more is declared.
    up.store.ack(first + 5)
    _, _, frame = up.build(first + 6) or (0, 0, b"")
    assert decode(frame).lost_before == 0
