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

Besides readings, the outbox keeps the site's events (``events_of``): a
device registered or removed (``devices``), a command put into the ledger
or moved on by a result or a mark (``commands``: the ledger record after
the change), a decision with its provenance (``decisions``; one that
alerts also gives an ``alerts`` message, ``op`` "raised") and an alert's
acknowledgement (``alerts``, ``op`` "ack"). Each is a JSON object built at
apply from the entry and the tables, with sorted keys, so every replica
keeps the same bytes. Only entries that changed something (APPLIED) give
events: a re-proposal adds nothing, as a resent batch adds no readings.

A record (a value in the table)::

    u8 kind (1: readings) | str8 device id | u32 n |
    n x (u64 seq | u64 ts_ms | u16 sensor | f32 value, big-endian)

    u8 kind (2: events) | str8 device id | u8 n |
    n x (u8 event kind, its place in protocol/cloud.py KINDS | u32 length | JSON)
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, Final

from hub.state import entries as e
from hub.state import records as r
from protocol import cloud
from protocol import messages as m

META_EXPORT: Final = b"export_cursor"
READINGS: Final = 1
EVENTS: Final = 2
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


Event = tuple[str, dict[str, Any]]  # (kind, e.g. "commands"; the JSON body)


def events_record(device_id: str, events: Sequence[Event]) -> bytes:
    dev = device_id.encode()
    out = [_HEAD.pack(EVENTS), bytes([len(dev)]), dev, bytes([len(events)])]
    for kind, body in events:
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
        out += [bytes([cloud.KINDS.index(kind)]), _COUNT.pack(len(raw)), raw]
    return b"".join(out)


def kind_of(value: bytes) -> int:
    return int(value[0])


def decode_events(value: bytes) -> tuple[str, list[Event]]:
    """(device id, events) of an events record."""
    n_dev = value[1]
    device_id = value[2 : 2 + n_dev].decode()
    count, at = value[2 + n_dev], 3 + n_dev
    out = []
    for _ in range(count):
        kind = cloud.KINDS[value[at]]
        (size,) = _COUNT.unpack_from(value, at + 1)
        start = at + 1 + _COUNT.size
        out.append((kind, json.loads(value[start : start + size])))
        at = start + size
    return device_id, out


# Entries that can give events (``events_of``).
EVENT_ENTRIES: Final = (
    e.RegisterDevice,
    e.RemoveDevice,
    e.PutCommand,
    e.RecordResult,
    e.MarkCommand,
    e.Decision,
    e.AckAlert,
)
_COMMAND_OPS: Final = {e.PutCommand: "put", e.RecordResult: "result", e.MarkCommand: "mark"}


def events_of(
    txn: Any, dbs: dict[str, Any], entry: Any, command_id: str = ""
) -> tuple[str, list[Event]] | None:
    """(device id, events) that an APPLIED entry of EVENT_ENTRIES gives, read
    after it changed the tables (``command_id``: the command it touched)."""
    if isinstance(entry, e.RegisterDevice):
        d = entry.device
        body = {
            "op": "register",
            "at_ms": entry.at_ms,
            "actions": [c.action for c in d.capabilities],
            "limit_w": d.limit_w,
            "owner": d.owner,
        }
        return d.device_id, [("devices", body)]
    if isinstance(entry, e.RemoveDevice):
        return entry.device_id, [("devices", {"op": "remove", "at_ms": entry.at_ms})]
    if isinstance(entry, e.Decision):
        return entry.device_id, _decision_events(entry)
    if isinstance(entry, e.AckAlert):
        raw = txn.get(entry.decision_id.encode(), db=dbs["decisions"])
        device_id = r.unpack_decision(entry.decision_id, raw).device_id
        body = {"op": "ack", "decision_id": entry.decision_id, "user": entry.user}
        return device_id, [("alerts", {**body, "at_ms": entry.at_ms})]
    lkey = txn.get(command_id.encode(), db=dbs["ledger_ids"])
    if lkey is None:
        return None
    rec = r.unpack_ledger(txn.get(lkey, db=dbs["ledger"]))
    return rec.command.device_id, [("commands", _command_body(_COMMAND_OPS[type(entry)], rec))]


def _decision_events(d: e.Decision) -> list[Event]:
    try:
        record: Any = json.loads(d.record)
    except ValueError:  # kept as proposed; apply does not parse it
        record = d.record.decode("utf-8", "replace")
    body = {
        "decision_id": d.decision_id,
        "tier": d.tier.name.lower(),
        "at_ms": d.at_ms,
        "command_id": d.command_id,
        "record": record,
    }
    out: list[Event] = [("decisions", body)]
    if isinstance(record, dict) and record.get("alert"):
        raised = {"op": "raised", "decision_id": d.decision_id, "at_ms": d.at_ms}
        out.append(("alerts", {**raised, "description": str(record.get("description", ""))}))
    return out


def _command_body(op: str, rec: Any) -> dict[str, Any]:
    c, last = rec.command, rec.history[-1]
    return {
        "op": op,
        "command_id": c.command_id,
        "seq": c.seq,
        "action": c.action,
        "params": {p.name: p.value for p in c.params},
        "issued_at_ms": c.issued_at_ms,
        "deadline_ms": c.deadline_ms,
        "state": rec.state.name,
        "at_ms": last.at_ms,
        "node": last.node_id,
        "detail": last.detail,
        "result": None if rec.result is None else m.to_dict(rec.result)["payload"],
    }


def decode(value: bytes) -> tuple[int, str, list[tuple[int, int, int, float]]]:
    """(kind, device id, rows with the value as a float) of a readings record."""
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
