"""The export outbox: what this site exports to the cloud, kept as it commits.

Nothing is kept until the export is on. The leader of a site whose config
has a ``[cloud]`` table proposes ``Export(on=True)``; from the entry after
it, apply keeps in the ``outbox`` table, under ``(raft index, part)``, what
each entry committed that the cloud must have: for a telemetry batch, the
readings it stored (a resent batch's duplicates are not stored, so they are
not exported either). The meta key ``export_cursor`` is both the switch
(present: on) and the cursor: the last index whose messages JetStream has
acknowledged. The exporter (hub/link/export.py) reads after the cursor, and
the leader moves it with ``Export(on=True, cursor=N)``, which drops the
outbox up to N. ``Export(on=False)`` stops keeping and drops the outbox, at
most ``MAX_DROP`` records per entry (the leader proposes it again while
records are left).

Everything here is a function of the log, so every replica holds the same
outbox and cursor, and a new leader resumes where the old one stopped.

A record (a value in the table)::

    u8 kind (1: readings) | str8 device id | u32 n |
    n x (u64 seq | u64 ts_ms | u16 sensor | f32 value, big-endian)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

from hub.state import entries as e
from hub.state import records as r

META_EXPORT: Final = b"export_cursor"
READINGS: Final = 1
MAX_DROP: Final = 100_000
_KEY: Final = struct.Struct(">QH")
_ROW: Final = struct.Struct(">QQH4s")
_HEAD: Final = struct.Struct(">B")
_COUNT: Final = struct.Struct(">I")

Row = tuple[int, int, int, bytes]  # seq, ts_ms, sensor, f32 value (big-endian bytes)


def key(index: int, part: int) -> bytes:
    return _KEY.pack(index, part)


def key_of(raw: bytes) -> tuple[int, int]:
    index, part = _KEY.unpack(raw)
    return int(index), int(part)


def cursor(txn: Any, dbs: dict[str, Any]) -> int | None:
    """The export cursor; None while the export is off."""
    raw = txn.get(META_EXPORT, db=dbs["meta"])
    return None if raw is None else r.seq_of(raw)


def readings_record(device_id: str, rows: Sequence[Row]) -> bytes:
    dev = device_id.encode()
    head = _HEAD.pack(READINGS) + bytes([len(dev)]) + dev + _COUNT.pack(len(rows))
    return head + b"".join(_ROW.pack(*row) for row in rows)


def decode(value: bytes) -> tuple[int, str, list[tuple[int, int, int, float]]]:
    """(kind, device id, rows with the value as a float)."""
    (kind,) = _HEAD.unpack_from(value, 0)
    n_dev = value[1]
    device_id = value[2 : 2 + n_dev].decode()
    at = 2 + n_dev
    (count,) = _COUNT.unpack_from(value, at)
    at += _COUNT.size
    rows = []
    for i in range(count):
        seq, ts, sensor, raw = _ROW.unpack_from(value, at + i * _ROW.size)
        rows.append((int(seq), int(ts), int(sensor), struct.unpack(">f", raw)[0]))
    return int(kind), device_id, rows


def apply_export(txn: Any, dbs: dict[str, Any], index: int, ex: e.Export) -> tuple[bool, int]:
    """Apply an EXPORT entry at ``index``: (changed, outbox records left to drop)."""
    meta, box = dbs["meta"], dbs["outbox"]
    now = cursor(txn, dbs)
    if not ex.on:
        dropped = _drop(txn, box, None)
        if now is not None:
            txn.delete(META_EXPORT, db=meta)
        return (now is not None or dropped > 0), _left(txn, box)
    if now is None:  # switched on: keep what commits after this entry
        txn.put(META_EXPORT, r.U64.pack(index), db=meta)
        return True, 0
    if ex.cursor <= now:
        return False, 0
    _drop(txn, box, ex.cursor)
    txn.put(META_EXPORT, r.U64.pack(ex.cursor), db=meta)
    return True, _left(txn, box)


def _drop(txn: Any, box: Any, upto: int | None) -> int:
    """Delete outbox records with index <= upto (all: None), MAX_DROP at most."""
    cur = txn.cursor(db=box)
    n = 0
    if not cur.first():
        return 0
    while n < MAX_DROP:
        index, _ = key_of(cur.key())
        if upto is not None and index > upto:
            break
        if not cur.delete():
            break
        n += 1
        if not cur.key():  # past the last record
            break
    return n


def _left(txn: Any, box: Any) -> int:
    return int(txn.stat(box)["entries"])


def pending(txn: Any, dbs: dict[str, Any], after: int, limit: int) -> list[tuple[int, int, bytes]]:
    """Up to ``limit`` raft indexes' records after ``after``: (index, part, record)."""
    out: list[tuple[int, int, bytes]] = []
    cur = txn.cursor(db=dbs["outbox"])
    if not cur.set_range(key(after + 1, 0)):
        return out
    seen = 0
    last = -1
    for k, v in cur:
        index, part = key_of(k)
        if index != last:
            seen += 1
            if seen > limit:
                break
            last = index
        out.append((index, part, bytes(v)))
    return out
