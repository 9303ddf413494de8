"""Two of the store's guarantees (hub/state/store.py), each checked by
enumeration against a model written here:

- watermarks do not depend on the order entries are applied in: for every
  order of a small set of batches (overlaps, a gap, a filled gap, a declared
  loss), after every prefix, the device's (watermark, lost_before) is the
  model's for the set applied so far, and the content hash is one per set;
- the content hash covers every reading: changing one field of any one
  reading, removing any one reading, or adding one, changes it.
"""

from __future__ import annotations

import itertools
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit

BASE_TS = 1_763_700_000_000
MAP = 64 << 20
Spec = tuple[int, int, int]  # first seq, count, lost_before


def register(device_id: str = "plug-1") -> bytes:
    return e.encode(e.RegisterDevice(e.Device(device_id, b"k" * 32), 1))


def readings_of(first: int, n: int) -> list[m.Reading]:
    # The same reading whichever batch carries it, as on a real device.
    return [m.Reading(s % 3, (s - first) * 250, 100.0 + s * 1.25) for s in range(first, first + n)]


def batch(first: int, readings: Sequence[m.Reading], lost_before: int = 0) -> bytes:
    msg = m.TelemetryBatch("plug-1", 1, first, BASE_TS + first * 250, tuple(readings), lost_before)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def model_progress(specs: Iterable[Spec]) -> tuple[int, int]:
    """(watermark, lost_before) from the set of batches alone: lost_before
    is the highest declaration, each clamped to its batch's first seq; the
    watermark is the end of the run of stored seqs above lost_before - 1."""
    stored: set[int] = set()
    lost = 0
    for first, n, lost_before in specs:
        stored.update(range(first, first + n))
        lost = max(lost, min(lost_before, first))
    mark = max(0, lost - 1)
    while mark + 1 in stored:
        mark += 1
    return mark, lost


# 1..4, 3..6 (overlap), 9..11 (above a gap), 7..8 (fills it), 14..15
# declaring everything below 20 lost (clamped to its first seq: 12 and 13).
SPECS: tuple[Spec, ...] = ((1, 4, 0), (3, 4, 0), (9, 3, 0), (7, 2, 0), (14, 2, 20))


def test_model_progress_is_what_the_design_says() -> None:
    assert model_progress(SPECS[:1]) == (4, 0)
    assert model_progress(SPECS[:3]) == (6, 0)  # 7 and 8 missing
    assert model_progress(SPECS[:4]) == (11, 0)
    assert model_progress(SPECS) == (15, 14)
    assert model_progress(SPECS[2:3]) == (0, 0)
    assert model_progress(SPECS[4:]) == (15, 14)
    assert model_progress([SPECS[0], SPECS[4]]) == (15, 14)


def test_every_order_of_the_same_batches_gives_the_same_watermarks_and_hash() -> None:
    entries = {s: batch(s[0], readings_of(s[0], s[1]), s[2]) for s in SPECS}
    hash_of_set: dict[frozenset[Spec], str] = {}
    orders = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, order in enumerate(itertools.permutations(SPECS)):
            orders += 1
            with Store(Path(tmp) / str(k), map_size=MAP) as s:
                s.apply([(1, register())])
                for i, spec in enumerate(order, 1):
                    # Each batch in its own transaction, twice (a proposal
                    # made again at a new index changes nothing).
                    s.apply([(2 * i, entries[spec]), (2 * i + 1, entries[spec])])
                    applied = frozenset(order[:i])
                    assert s.progress("plug-1") == model_progress(applied), (order[:i], applied)
                    h = hash_of_set.setdefault(applied, s.content_hash())
                    assert s.content_hash() == h, f"{order[:i]}: another hash for the same set"
    assert orders == 120
    assert len(hash_of_set) == 2 ** len(SPECS) - 1  # every non-empty subset was a prefix


def _next_f32(v: float) -> float:
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    (out,) = struct.unpack("<f", struct.pack("<I", bits + 1))
    return float(out)


def _hash(tmp: Path, name: str, entries: list[bytes]) -> str:
    with Store(tmp / name, map_size=MAP) as s:
        results = s.apply(list(enumerate([register(), *entries], 1)))
        assert all(r.reason == "" for r in results), results
        return s.content_hash()


def test_one_reading_changed_removed_or_added_changes_the_hash() -> None:
    n = 6
    base = readings_of(1, n)
    variants: dict[str, list[bytes]] = {"base": [batch(1, base)]}
    for i, r in enumerate(base):
        seq = 1 + i

        def one(changed: m.Reading, i: int = i) -> list[bytes]:
            return [batch(1, [*base[:i], changed, *base[i + 1 :]])]

        variants[f"seq {seq}: value one float32 step up"] = one(
            m.Reading(r.sensor, r.offset_ms, _next_f32(r.value))
        )
        variants[f"seq {seq}: value negated"] = one(m.Reading(r.sensor, r.offset_ms, -r.value))
        variants[f"seq {seq}: 1 ms later"] = one(m.Reading(r.sensor, r.offset_ms + 1, r.value))
        variants[f"seq {seq}: another sensor"] = one(m.Reading(r.sensor + 7, r.offset_ms, r.value))
        # Removed: the readings around it, as two batches.
        around = [batch(1, base[:i])] if i else []
        if i + 1 < n:
            around.append(batch(seq + 1, base[i + 1 :]))
        variants[f"seq {seq}: removed"] = around
    variants["one more reading"] = [batch(1, readings_of(1, n + 1))]
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {name: _hash(Path(tmp), str(k), v) for k, (name, v) in enumerate(variants.items())}
    same = {(a, b) for a, b in itertools.combinations(hashes, 2) if hashes[a] == hashes[b]}
    assert not same, f"equal content hashes for different readings: {sorted(same)[:5]}"
    assert len(hashes) == 1 + 5 * n + 1
