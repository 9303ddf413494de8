"""The hub's replicated state in LMDB, and the one function that changes it.

``Store.apply`` takes ``(raft index, entry bytes)`` pairs (``hub/state/entries.py``)
and applies them in one LMDB write transaction. Raft is not in here: the thin
replicated class, journal replay, snapshot install and the tests all call the
same ``apply``. hub/state/DESIGN.md describes the tables, the rules and the
power-loss window.

Apply is deterministic: it reads nothing but the store and the entry (no
clock, no randomness, no configuration), so every replica that applies the
same log holds the same content (ARCHITECTURE.md invariant 4). It is
idempotent: entries at or below the recorded applied index are skipped, and a
reading already stored is never overwritten (invariant 2).

Errors (the hierarchy, all defined here except EntryError)::

    StoreError                 the store cannot do what was asked
    ├── Rejected(reason)       an entry invalid at apply time; apply never raises
    │                          it, it is carried by ApplyResult (reason, detail)
    ├── StoreFull              the LMDB map is full; the node must stop, because
    │                          skipping an entry others applied would diverge
    ├── SnapshotError(reason)  a snapshot stream that is truncated, corrupt or
    │                          foreign; the store is left as it was
    └── IncompatibleStore      LMDB written by another store format
    hub.entries.EntryError     entry bytes that do not decode; apply reports
                               them as rejected with the EntryError's reason

Threads: one thread applies (pysyncobj's); any thread may read. Each read
method uses its own short read transaction.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import math
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any, BinaryIO, Final

import lmdb

from hub.core.fsutil import fsync_path
from hub.state import entries as e
from protocol import messages as m

STORE_FORMAT: Final = 1
DEFAULT_MAP_SIZE: Final = (8 << 30) if sys.maxsize > 2**32 else (1 << 30)
DATA_FILE: Final = "store.mdb"
INSTALL_FILE: Final = "store.mdb.install"

# Sensor id of the energy counter (Wh); edge/sensors.py ENERGY_WH.
ENERGY_WH_SENSOR: Final = 1
HOUR_MS: Final = 3_600_000

TABLES: Final = (
    "alert_acks",
    "decisions",
    "decisions_by_device",
    "devices",
    "hours",
    "ledger",
    "ledger_ids",
    "meta",
    "model_versions",
    "models",
    "nodes",
    "presence",
    "readings",
    "users",
    "watermarks",
)
_META_FORMAT: Final = b"format"
_META_APPLIED: Final = b"applied_index"
# Meta keys that are a node's position in the log, not replicated content.
NODE_LOCAL_META: Final = frozenset({_META_APPLIED})

APPLY_REASONS: Final = (
    "unknown_device",  # batch, presence, command or removal for an unregistered device
    "device_exists",  # registration of an id already registered with other fields
    "unknown_action",  # command action not in the device's capabilities
    "command_exists",  # command id already in the ledger with other fields
    "unknown_command",  # result or mark for a command id not in the ledger
    "wrong_device",  # result whose device differs from the command's
    "wrong_seq",  # result whose seq differs from the command's
    "deadline_not_passed",  # EXPIRED mark before the command's deadline
    "decision_exists",  # decision id already recorded with other content
    "unknown_decision",  # an alert acknowledgement for a decision not recorded
    "unknown_model_version",  # activation of a model version not registered (or other bytes)
    "model_version_exists",  # a version registered again with other content
)
REASONS: Final = APPLY_REASONS + e.REASONS

SNAPSHOT_MAGIC: Final = b"AIOTSNAP"
SNAPSHOT_VERSION: Final = 1
# The same view as a compacted LMDB file (Snapshot.write_image): what a Raft
# dump holds. Its header starts as the stream's does (magic, version, index).
IMAGE_MAGIC: Final = b"AIOTLMDB"
IMAGE_VERSION: Final = 1
_IMAGE_HEADER: Final = struct.Struct(">8sHQQ")  # magic, version, applied index, image bytes
_CHUNK: Final = 1 << 20
_INSTALL_COMMIT_EVERY: Final = 65536
_RECORD_VERSION: Final = 1
# Ledger records carry a detail with each state change since version 2;
# version 1 records (no details) still read.
_LEDGER_VERSION: Final = 2
# A command's history keeps at most this many progress entries (SENT with a
# detail): a device cannot grow a ledger record without bound.
MAX_PROGRESS: Final = 16


# -- errors -------------------------------------------------------------------------


class StoreError(Exception):
    """The store cannot do what was asked."""


class Rejected(StoreError):
    """An entry that is invalid at apply time. It changes no state."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise AssertionError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StoreFull(StoreError):
    """The LMDB map is full. Nothing of the failed apply call was written."""


class SnapshotError(StoreError):
    """A snapshot stream that cannot be installed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class IncompatibleStore(StoreError):
    """An LMDB file written by another store format."""


# -- records ------------------------------------------------------------------------


class Outcome(enum.Enum):
    APPLIED = "applied"  # state changed
    UNCHANGED = "unchanged"  # valid, nothing new (duplicates, re-proposals, stale presence)
    REJECTED = "rejected"  # invalid at apply time; no state changed
    SKIPPED = "skipped"  # at or below the applied index; not looked at


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one entry (or one part of a GROUP entry) did."""

    index: int
    part: int  # 1-based position inside a GROUP entry; 0 otherwise
    type: e.EntryType | None  # None when the header is unreadable
    outcome: Outcome
    device_id: str = ""
    # batches: the node that received it (it sends the commit-ack); presence,
    # command results and marks: the entry's node; NODE_PUT/REMOVE: the record's
    node_id: str = ""
    stored: int = 0  # new readings stored
    duplicates: int = 0  # readings of the batch already stored
    watermark: int = 0  # the device's watermark after the entry (batches)
    command_id: str = ""
    command_seq: int = 0  # the ledger's per-device sequence number (commands)
    reason: str = ""  # machine-readable, one of REASONS, when REJECTED
    detail: str = ""
    decision_id: str = ""  # decisions and alert acknowledgements

    @property
    def error(self) -> Rejected | None:
        return Rejected(self.reason, self.detail) if self.reason else None


@dataclass(frozen=True, slots=True)
class StoredReading:
    seq: int
    ts_ms: int
    sensor: int
    value: float


@dataclass(frozen=True, slots=True)
class HourlyEnergy:
    start_ms: int  # start of the hour, ms since the epoch
    wh: float


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    device_id: str
    node_id: str
    state: m.LinkState
    at_ms: int


@dataclass(frozen=True, slots=True)
class StateChange:
    state: e.LedgerState
    at_ms: int
    node_id: str
    detail: str = ""  # the device's news of work that goes on (an ACCEPTED answer)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    command: m.Command
    state: e.LedgerState
    history: tuple[StateChange, ...]
    result: m.CommandResult | None  # the device's answer, once it came


ModelRecord = e.PutModel
NodeRecord = e.NodeInfo


# -- keys and values ----------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TS_SENSOR = struct.Struct(">QH")
_READING_VALUE = struct.Struct(">QHf")  # ts_ms, sensor, value: 14 bytes
_HOUR_VALUE = struct.Struct(">QQI")  # min seq, max seq, count
_PROGRESS_VALUE = struct.Struct(">QQ")  # watermark, lost_before


def _u64(v: int) -> bytes:
    return _U64.pack(v)


def _dev_prefix(device_id: str) -> bytes:
    # Device ids never contain NUL (protocol/topics.py), so "id NUL" groups a
    # device's keys together in id order.
    return device_id.encode() + b"\0"


def _seq_of(key: bytes) -> int:
    seq: int = _U64.unpack_from(key, len(key) - 8)[0]
    return seq


def _progress_of(raw: bytes) -> tuple[int, int]:
    mark, lost = _PROGRESS_VALUE.unpack(raw)
    return int(mark), int(lost)


def _pack_device_record(device: e.Device, at_ms: int) -> bytes:
    p = e.Packer().u8(_RECORD_VERSION)
    e.pack_device(p, device)
    return bytes(p.u64(at_ms))


def _device_fields(device: e.Device) -> bytes:
    p = e.Packer()
    e.pack_device(p, device)
    return bytes(p)


def _command_fields(c: e.PutCommand) -> bytes:
    p = e.Packer()
    e.pack_put_command(p, c)
    return bytes(p)


@functools.lru_cache(maxsize=4096)
def _unpack_device_record(value: bytes) -> e.Device:
    # Memoized on the record's bytes (a Device is immutable): ingest reads the
    # device of every uplink message and the decision engine every device it
    # looks at, and decoding the record was most of each read.
    u = e.Unpacker(bytes(value), 1)
    return e.unpack_device(u)


def _pack_presence(p: PresenceRecord) -> bytes:
    return bytes(e.Packer().u8(_RECORD_VERSION).str8(p.node_id).u8(int(p.state)).u64(p.at_ms))


def _unpack_presence(device_id: str, value: bytes) -> PresenceRecord:
    u = e.Unpacker(bytes(value), 1)
    return PresenceRecord(device_id, u.str8(), m.LinkState(u.u8()), u.u64())


def _pack_ledger(rec: LedgerRecord) -> bytes:
    c = rec.command
    p = e.Packer().u8(_LEDGER_VERSION)
    e.pack_put_command(
        p,
        e.PutCommand(
            c.command_id,
            c.device_id,
            c.term,
            c.action,
            c.params,
            c.issued_at_ms,
            c.deadline_ms,
        ),
    )
    p.u64(c.seq).u8(int(rec.state)).u8(len(rec.history))
    for h in rec.history:
        p.u8(int(h.state)).u64(h.at_ms).str8(h.node_id).str16(h.detail)
    r = rec.result
    if r is None:
        p.u8(0)
    else:
        p.u8(1).u8(int(r.status)).u8(int(r.reason)).str16(r.detail).u64(r.executed_at_ms)
    return bytes(p)


def _unpack_ledger(value: bytes) -> LedgerRecord:
    value = bytes(value)
    u = e.Unpacker(value, 1)
    put = e.unpack_put_command(u)
    command = put.with_seq(u.u64())
    state = e.LedgerState(u.u8())
    if value[0] == 1:
        history = tuple(
            StateChange(e.LedgerState(u.u8()), u.u64(), u.str8()) for _ in range(u.u8())
        )
    else:
        history = tuple(
            StateChange(e.LedgerState(u.u8()), u.u64(), u.str8(), u.str16()) for _ in range(u.u8())
        )
    result = None
    if u.u8():
        status, reason = m.CommandStatus(u.u8()), m.Reason(u.u8())
        detail, executed = u.str16(), u.u64()
        result = m.CommandResult(
            command.command_id, command.device_id, command.seq, status, reason, detail, executed
        )
    return LedgerRecord(command, state, history, result)


def _pack_model(rec: e.PutModel) -> bytes:
    p = e.Packer().u8(_RECORD_VERSION).str8(rec.version).blob8(rec.sha256).u64(rec.size)
    return bytes(p.str16(rec.source).u64(rec.at_ms))


def _unpack_model(name: str, value: bytes) -> e.PutModel:
    u = e.Unpacker(bytes(value), 1)
    return e.PutModel(name, u.str8(), u.blob8(), u.u64(), u.str16(), u.u64())


def _pack_model_version(mv: e.ModelVersion) -> bytes:
    p = e.Packer().u8(_RECORD_VERSION)
    p.str8(mv.name).str8(mv.version).str8(mv.kind).blob8(mv.sha256).u64(mv.size)
    p.u32(len(mv.manifest)).raw(mv.manifest).blob8(mv.signature).str8(mv.key_id)
    return bytes(p.u64(mv.at_ms))


def _unpack_model_version(value: bytes) -> e.ModelVersion:
    u = e.Unpacker(bytes(value), 1)
    name, version, kind, sha, size = u.str8(), u.str8(), u.str8(), u.blob8(), u.u64()
    manifest = u.raw(u.u32())
    return e.ModelVersion(name, version, kind, sha, size, manifest, u.blob8(), u.str8(), u.u64())


def _node_fields(n: e.NodeInfo) -> bytes:
    p = e.Packer()
    e.pack_node_addresses(p, n)
    return bytes(p)


def _pack_node(n: e.NodeInfo) -> bytes:
    p = e.Packer().u8(_RECORD_VERSION)
    e.pack_node_addresses(p, n)
    return bytes(p.u64(n.at_ms))


def _unpack_node(node_id: str, value: bytes) -> e.NodeInfo:
    u = e.Unpacker(bytes(value), 1)
    raft, broker, http = e.unpack_node_addresses(u)
    return e.NodeInfo(node_id, raft, broker, http, u.u64())


# -- apply ----------------------------------------------------------------------------

_FINAL_FROM_STATUS: Final = {
    m.CommandStatus.DONE: e.LedgerState.DONE,
    m.CommandStatus.FAILED: e.LedgerState.FAILED,
    m.CommandStatus.REJECTED: e.LedgerState.REJECTED,
    m.CommandStatus.EXPIRED: e.LedgerState.EXPIRED,
}


def _is_progress(rec: LedgerRecord, detail: str) -> bool:
    """Whether an ACCEPTED answer with ``detail`` adds to the command's history:
    the first one does (PENDING becomes SENT), then each detail not seen yet,
    up to MAX_PROGRESS of them."""
    if rec.state is e.LedgerState.PENDING:
        return True
    if not detail:
        return False
    seen = [h.detail for h in rec.history if h.detail]
    return detail not in seen and len(seen) < MAX_PROGRESS


class _Apply:
    """The rules for each entry type, over one (child) write transaction.

    Every handler checks before it writes, and runs in a nested transaction
    that is aborted when it raises Rejected, so a rejected entry leaves no
    trace.
    """

    def __init__(self, txn: Any, dbs: dict[str, Any]) -> None:
        self.txn = txn
        self.dbs = dbs

    def _device(self, device_id: str) -> bytes:
        raw: bytes | None = self.txn.get(device_id.encode(), db=self.dbs["devices"])
        if raw is None:
            raise Rejected("unknown_device", device_id)
        return raw

    def _result(
        self, index: int, part: int, kind: e.EntryType, outcome: Outcome, **kw: Any
    ) -> ApplyResult:
        return ApplyResult(index, part, kind, outcome, **kw)

    def run(self, index: int, part: int, entry: e.Entry) -> ApplyResult:
        if isinstance(entry, e.Batch):
            return self.batch(index, part, entry)
        if isinstance(entry, e.RegisterDevice):
            return self.register(index, part, entry)
        if isinstance(entry, e.RemoveDevice):
            return self.remove(index, part, entry)
        if isinstance(entry, e.Presence):
            return self.presence(index, part, entry)
        if isinstance(entry, e.PutCommand):
            return self.command(index, part, entry)
        if isinstance(entry, e.RecordResult):
            return self.command_result(index, part, entry)
        if isinstance(entry, e.MarkCommand):
            return self.mark(index, part, entry)
        if isinstance(entry, e.PutModel):
            return self.model(index, part, entry)
        if isinstance(entry, e.NodeInfo):
            return self.node_put(index, part, entry)
        if isinstance(entry, e.RemoveNode):
            return self.node_remove(index, part, entry)
        if isinstance(entry, e.Decision):
            return self.decision(index, part, entry)
        if isinstance(entry, e.ModelVersion):
            return self.model_version(index, part, entry)
        if isinstance(entry, e.AckAlert):
            return self.ack_alert(index, part, entry)
        if isinstance(entry, e.User):
            return self.user_put(index, part, entry)
        if isinstance(entry, e.RemoveUser):
            return self.user_remove(index, part, entry)
        raise Rejected("nested_group")

    # telemetry

    def batch(self, index: int, part: int, b: e.Batch) -> ApplyResult:
        self._device(b.device_id)
        txn, readings = self.txn, self.dbs["readings"]
        prefix = _dev_prefix(b.device_id)
        packed, base, seq = b.packed, b.base_ts_ms, b.first_seq
        hours: dict[int, list[int]] = {}
        stored = 0
        for i in range(0, len(packed), 8):
            sensor, offset = struct.unpack_from(">HH", packed, i)
            ts = base + offset
            value = _TS_SENSOR.pack(ts, sensor) + packed[i + 4 : i + 8]
            if txn.put(prefix + _U64.pack(seq), value, overwrite=False, db=readings):
                stored += 1
                h = hours.get(ts // HOUR_MS)
                if h is None:
                    hours[ts // HOUR_MS] = [seq, seq, 1]
                else:
                    h[1] = seq
                    h[2] += 1
            seq += 1
        for hour, (lo, hi, n) in hours.items():
            self._merge_hour(prefix + _U64.pack(hour), lo, hi, n)
        changed = self._advance_watermark(b, prefix, stored > 0)
        return self._result(
            index,
            part,
            e.EntryType.BATCH,
            Outcome.APPLIED if stored or changed else Outcome.UNCHANGED,
            device_id=b.device_id,
            node_id=b.node_id,
            stored=stored,
            duplicates=b.count - stored,
            watermark=self._progress(b.device_id)[0],
        )

    def _merge_hour(self, key: bytes, lo: int, hi: int, n: int) -> None:
        # min, max and count are order-independent: the index depends only on
        # the set of stored readings, never on which batch brought them.
        db = self.dbs["hours"]
        old = self.txn.get(key, db=db)
        if old is not None:
            olo, ohi, on = _HOUR_VALUE.unpack(old)
            lo, hi, n = min(lo, olo), max(hi, ohi), n + on
        self.txn.put(key, _HOUR_VALUE.pack(lo, hi, n), db=db)

    def _progress(self, device_id: str) -> tuple[int, int]:
        raw = self.txn.get(device_id.encode(), db=self.dbs["watermarks"])
        return (0, 0) if raw is None else _progress_of(raw)

    def _advance_watermark(self, b: e.Batch, prefix: bytes, stored: bool) -> bool:
        # watermark: highest seq w such that every seq in (floor, w] is
        # stored, floor = lost_before - 1 (0 when nothing was declared lost).
        # lost_before is the highest declaration, clamped to the batch's
        # first_seq: a device cannot declare lost what it has yet to send.
        # Both are maxima over the stored set, so they do not depend on the
        # order in which batches arrive.
        old_mark, old_lost = self._progress(b.device_id)
        lost = max(old_lost, min(b.lost_before, b.first_seq))
        mark = max(old_mark, lost - 1)
        if stored or mark != old_mark:
            cur = self.txn.cursor(db=self.dbs["readings"])
            if cur.set_key(prefix + _U64.pack(mark + 1)):
                mark += 1
                while cur.next() and cur.key() == prefix + _U64.pack(mark + 1):
                    mark += 1
        if (mark, lost) == (old_mark, old_lost):
            return False
        self.txn.put(
            b.device_id.encode(), _PROGRESS_VALUE.pack(mark, lost), db=self.dbs["watermarks"]
        )
        return True

    # registry

    def register(self, index: int, part: int, r: e.RegisterDevice) -> ApplyResult:
        d = r.device
        key, db = d.device_id.encode(), self.dbs["devices"]
        fields = _device_fields(d)
        old = self.txn.get(key, db=db)
        kind = e.EntryType.REGISTER_DEVICE
        if old is not None:
            # Same fields (byte for byte; the time may differ): a re-proposal.
            if old[1 : 1 + len(fields)] == fields and len(old) == len(fields) + 9:
                return self._result(index, part, kind, Outcome.UNCHANGED, device_id=d.device_id)
            raise Rejected("device_exists", d.device_id)
        self.txn.put(key, _pack_device_record(d, r.at_ms), db=db)
        return self._result(index, part, kind, Outcome.APPLIED, device_id=d.device_id)

    def remove(self, index: int, part: int, r: e.RemoveDevice) -> ApplyResult:
        # The device's readings, hours, watermark and presence go with it, so
        # the id can be provisioned again from seq 1. The ledger stays: it is
        # the history of what was decided, and its per-device command sequence
        # must keep increasing for a device that comes back with its old flash.
        self._device(r.device_id)
        key, prefix, txn = r.device_id.encode(), _dev_prefix(r.device_id), self.txn
        for table in ("devices", "watermarks", "presence"):
            txn.delete(key, db=self.dbs[table])
        for table in ("readings", "hours"):
            cur = txn.cursor(db=self.dbs[table])
            if cur.set_range(prefix):
                while cur.key().startswith(prefix) and cur.delete():
                    pass
        return self._result(
            index, part, e.EntryType.REMOVE_DEVICE, Outcome.APPLIED, device_id=r.device_id
        )

    def presence(self, index: int, part: int, p: e.Presence) -> ApplyResult:
        # ONLINE: the node now holds the session (log order decides between
        # nodes), unless it is older than what that same node said before.
        # OFFLINE: only the holder can clear its own claim, so a late "lost
        # it" from the old hub never hides the device's move to a new one.
        self._device(p.device_id)
        key, db = p.device_id.encode(), self.dbs["presence"]
        raw = self.txn.get(key, db=db)
        cur = None if raw is None else _unpack_presence(p.device_id, raw)
        kind = e.EntryType.PRESENCE
        if p.state is m.LinkState.ONLINE:
            stale = cur is not None and cur.node_id == p.node_id and p.at_ms < cur.at_ms
        else:
            stale = cur is None or cur.node_id != p.node_id or p.at_ms < cur.at_ms
        new = PresenceRecord(p.device_id, p.node_id, p.state, p.at_ms)
        if stale or cur == new:
            return self._result(
                index, part, kind, Outcome.UNCHANGED, device_id=p.device_id, node_id=p.node_id
            )
        self.txn.put(key, _pack_presence(new), db=db)
        return self._result(
            index, part, kind, Outcome.APPLIED, device_id=p.device_id, node_id=p.node_id
        )

    # command ledger

    def _next_command_seq(self, prefix: bytes) -> int:
        cur = self.txn.cursor(db=self.dbs["ledger"])
        # "id \x01" sorts after every "id \0 seq" key and before other ids.
        found = cur.prev() if cur.set_range(prefix[:-1] + b"\x01") else cur.last()
        if found and cur.key().startswith(prefix):
            return _seq_of(cur.key()) + 1
        return 1

    def _ledger_get(self, command_id: str) -> tuple[bytes, LedgerRecord]:
        lkey = self.txn.get(command_id.encode(), db=self.dbs["ledger_ids"])
        if lkey is None:
            raise Rejected("unknown_command", command_id)
        return lkey, _unpack_ledger(self.txn.get(lkey, db=self.dbs["ledger"]))

    def command(self, index: int, part: int, c: e.PutCommand) -> ApplyResult:
        kind = e.EntryType.COMMAND
        ids = self.dbs["ledger_ids"]
        lkey = self.txn.get(c.command_id.encode(), db=ids)
        if lkey is not None:
            old = _unpack_ledger(self.txn.get(lkey, db=self.dbs["ledger"])).command
            same = e.PutCommand(
                old.command_id,
                old.device_id,
                old.term,
                old.action,
                old.params,
                old.issued_at_ms,
                old.deadline_ms,
            )
            if _command_fields(same) != _command_fields(c):
                raise Rejected("command_exists", c.command_id)
            return self._result(
                index,
                part,
                kind,
                Outcome.UNCHANGED,
                device_id=c.device_id,
                command_id=c.command_id,
                command_seq=old.seq,
            )
        device = _unpack_device_record(self._device(c.device_id))
        if all(cap.action != c.action for cap in device.capabilities):
            raise Rejected("unknown_action", f"{c.device_id}: {c.action}")
        prefix = _dev_prefix(c.device_id)
        seq = self._next_command_seq(prefix)
        rec = LedgerRecord(
            c.with_seq(seq),
            e.LedgerState.PENDING,
            (StateChange(e.LedgerState.PENDING, c.issued_at_ms, ""),),
            None,
        )
        lkey = prefix + _U64.pack(seq)
        self.txn.put(lkey, _pack_ledger(rec), db=self.dbs["ledger"])
        self.txn.put(c.command_id.encode(), lkey, db=ids)
        return self._result(
            index,
            part,
            kind,
            Outcome.APPLIED,
            device_id=c.device_id,
            command_id=c.command_id,
            command_seq=seq,
        )

    def _ledger_put(self, lkey: bytes, rec: LedgerRecord) -> None:
        self.txn.put(lkey, _pack_ledger(rec), db=self.dbs["ledger"])

    def command_result(self, index: int, part: int, r: e.RecordResult) -> ApplyResult:
        # The device's word is final: its first final result stands, and it
        # replaces a hub-side EXPIRED (a guess that no answer would come).
        res = r.result
        lkey, rec = self._ledger_get(res.command_id)
        c = rec.command
        if res.device_id != c.device_id:
            raise Rejected("wrong_device", f"{res.device_id} != {c.device_id}")
        if res.seq != c.seq:
            raise Rejected("wrong_seq", f"{res.seq} != {c.seq}")
        fields: dict[str, Any] = {
            "device_id": c.device_id,
            "node_id": r.node_id,
            "command_id": c.command_id,
            "command_seq": c.seq,
        }
        kind = e.EntryType.COMMAND_RESULT
        if res.status is m.CommandStatus.ACCEPTED:
            # The device took the command and its work goes on; each new
            # detail is progress in the history (a redelivered one is not).
            if rec.state.final or not _is_progress(rec, res.detail):
                return self._result(index, part, kind, Outcome.UNCHANGED, **fields)
            new_state = e.LedgerState.SENT
            result = None
            change = StateChange(new_state, r.at_ms, r.node_id, res.detail)
            self._ledger_put(lkey, LedgerRecord(c, new_state, (*rec.history, change), result))
            return self._result(index, part, kind, Outcome.APPLIED, **fields)
        else:
            if rec.result is not None:
                return self._result(index, part, kind, Outcome.UNCHANGED, **fields)
            new_state = _FINAL_FROM_STATUS[res.status]
            result = res
        change = StateChange(new_state, r.at_ms, r.node_id)
        self._ledger_put(lkey, LedgerRecord(c, new_state, (*rec.history, change), result))
        return self._result(index, part, kind, Outcome.APPLIED, **fields)

    def mark(self, index: int, part: int, mk: e.MarkCommand) -> ApplyResult:
        lkey, rec = self._ledger_get(mk.command_id)
        c = rec.command
        fields: dict[str, Any] = {
            "device_id": c.device_id,
            "node_id": mk.node_id,
            "command_id": c.command_id,
            "command_seq": c.seq,
        }
        kind = e.EntryType.COMMAND_STATE
        if mk.state is e.LedgerState.SENT:
            changes = rec.state is e.LedgerState.PENDING
        else:
            if rec.state.final:
                changes = False
            elif not c.deadline_ms or mk.at_ms < c.deadline_ms:
                raise Rejected("deadline_not_passed", f"{c.command_id} at {mk.at_ms}")
            else:
                changes = True
        if not changes:
            return self._result(index, part, kind, Outcome.UNCHANGED, **fields)
        change = StateChange(mk.state, mk.at_ms, mk.node_id)
        self._ledger_put(lkey, LedgerRecord(c, mk.state, (*rec.history, change), rec.result))
        return self._result(index, part, kind, Outcome.APPLIED, **fields)

    # model registry

    def model_version(self, index: int, part: int, mv: e.ModelVersion) -> ApplyResult:
        kind = e.EntryType.MODEL_VERSION
        key = mv.name.encode() + b"\0" + mv.version.encode()
        value = _pack_model_version(mv)
        old = self.txn.get(key, db=self.dbs["model_versions"])
        if old is not None:
            if old[:-8] == value[:-8]:  # the same but for at_ms
                return self._result(index, part, kind, Outcome.UNCHANGED)
            raise Rejected("model_version_exists", f"{mv.name}@{mv.version}")
        self.txn.put(key, value, db=self.dbs["model_versions"])
        return self._result(index, part, kind, Outcome.APPLIED)

    def model(self, index: int, part: int, pm: e.PutModel) -> ApplyResult:
        # The activation of a registered version (MODEL_PUT): the version and
        # its sha256 must match a MODEL_VERSION record.
        raw = self.txn.get(
            pm.name.encode() + b"\0" + pm.version.encode(), db=self.dbs["model_versions"]
        )
        if raw is None or _unpack_model_version(raw).sha256 != pm.sha256:
            raise Rejected("unknown_model_version", f"{pm.name}@{pm.version}")
        key, db = pm.name.encode(), self.dbs["models"]
        value = _pack_model(pm)
        kind = e.EntryType.MODEL_PUT
        if self.txn.get(key, db=db) == value:
            return self._result(index, part, kind, Outcome.UNCHANGED)
        self.txn.put(key, value, db=db)
        return self._result(index, part, kind, Outcome.APPLIED)

    # hub nodes

    def node_put(self, index: int, part: int, n: e.NodeInfo) -> ApplyResult:
        # Log order decides, not at_ms: a node's clock at boot (a Raspberry Pi
        # has no RTC) can be behind what it said last time. The same addresses
        # again (a restart, a retried proposal) change nothing, not even at_ms,
        # so restarts do not churn the content hash.
        key, db = n.node_id.encode(), self.dbs["nodes"]
        kind = e.EntryType.NODE_PUT
        old = self.txn.get(key, db=db)
        fields = _node_fields(n)
        if old is not None and old[1:-8] == fields:
            return self._result(index, part, kind, Outcome.UNCHANGED, node_id=n.node_id)
        self.txn.put(key, _pack_node(n), db=db)
        return self._result(index, part, kind, Outcome.APPLIED, node_id=n.node_id)

    def node_remove(self, index: int, part: int, r: e.RemoveNode) -> ApplyResult:
        # Idempotent: removing a node that is not there is not an error.
        kind = e.EntryType.NODE_REMOVE
        if self.txn.delete(r.node_id.encode(), db=self.dbs["nodes"]):
            return self._result(index, part, kind, Outcome.APPLIED, node_id=r.node_id)
        return self._result(index, part, kind, Outcome.UNCHANGED, node_id=r.node_id)

    # API users

    def user_put(self, index: int, part: int, user: e.User) -> ApplyResult:
        kind = e.EntryType.USER_PUT
        key, value = user.name.encode(), _pack_user(user)
        old = self.txn.get(key, db=self.dbs["users"])
        if old is not None and old[:-8] == value[:-8]:  # the same but for at_ms
            return self._result(index, part, kind, Outcome.UNCHANGED)
        self.txn.put(key, value, db=self.dbs["users"])
        return self._result(index, part, kind, Outcome.APPLIED)

    def user_remove(self, index: int, part: int, r: e.RemoveUser) -> ApplyResult:
        kind = e.EntryType.USER_REMOVE
        if self.txn.delete(r.name.encode(), db=self.dbs["users"]):
            return self._result(index, part, kind, Outcome.APPLIED)
        return self._result(index, part, kind, Outcome.UNCHANGED)

    # decisions (provenance)

    def ack_alert(self, index: int, part: int, a: e.AckAlert) -> ApplyResult:
        # The first acknowledgement stands; later ones change nothing.
        kind = e.EntryType.ALERT_ACK
        key = a.decision_id.encode()
        if self.txn.get(key, db=self.dbs["decisions"]) is None:
            raise Rejected("unknown_decision", a.decision_id)
        if self.txn.get(key, db=self.dbs["alert_acks"]) is not None:
            return self._result(index, part, kind, Outcome.UNCHANGED, decision_id=a.decision_id)
        user = a.user.encode()
        self.txn.put(key, bytes([len(user)]) + user + _U64.pack(a.at_ms), db=self.dbs["alert_acks"])
        return self._result(index, part, kind, Outcome.APPLIED, decision_id=a.decision_id)

    def decision(self, index: int, part: int, d: e.Decision) -> ApplyResult:
        # Kept when the device is removed, like the ledger: the history of
        # what was decided. A re-proposal with the same bytes changes nothing.
        self._device(d.device_id)
        kind = e.EntryType.DECISION
        key, value = d.decision_id.encode(), _pack_decision(d)
        old = self.txn.get(key, db=self.dbs["decisions"])
        fields: dict[str, Any] = {
            "device_id": d.device_id,
            "command_id": d.command_id,
            "decision_id": d.decision_id,
        }
        if old is not None:
            if old == value:
                return self._result(index, part, kind, Outcome.UNCHANGED, **fields)
            raise Rejected("decision_exists", d.decision_id)
        self.txn.put(key, value, db=self.dbs["decisions"])
        by_device = _dev_prefix(d.device_id) + _U64.pack(d.at_ms) + key
        self.txn.put(by_device, b"", db=self.dbs["decisions_by_device"])
        return self._result(index, part, kind, Outcome.APPLIED, **fields)


# -- hashing and snapshots -------------------------------------------------------------


def _pack_user(user: e.User) -> bytes:
    p = e.Packer()
    p.u8(_RECORD_VERSION)
    e.pack_user(p, user)
    return bytes(p)


def _unpack_user(value: bytes) -> e.User:
    return e.unpack_user(e.Unpacker(value[1:]))


_DECISION_HEAD: Final = struct.Struct(">BBQ")  # record version, tier, at_ms


def _pack_decision(d: e.Decision) -> bytes:
    dev, cmd = d.device_id.encode(), d.command_id.encode()
    head = _DECISION_HEAD.pack(_RECORD_VERSION, int(d.tier), d.at_ms)
    return head + bytes([len(dev)]) + dev + bytes([len(cmd)]) + cmd + d.record


def _unpack_decision(decision_id: str, value: bytes) -> e.Decision:
    _, tier, at_ms = _DECISION_HEAD.unpack_from(value)
    i = _DECISION_HEAD.size
    dev = value[i + 1 : i + 1 + value[i]].decode()
    i += 1 + value[i]
    cmd = value[i + 1 : i + 1 + value[i]].decode()
    i += 1 + value[i]
    return e.Decision(decision_id, dev, e.Tier(tier), at_ms, cmd, bytes(value[i:]))


# Tables outside the content hash: the node table is the cluster's topology
# (where each hub listens), not content, so a cluster restored on other
# machines (aiot restore) holds the same content hash as its source.
UNHASHED_TABLES: Final = frozenset({"nodes"})


def _content_hash(txn: Any, dbs: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in TABLES:  # sorted
        if name in UNHASHED_TABLES:
            continue
        h.update(b"T" + bytes([len(name)]) + name.encode())
        for k, v in txn.cursor(db=dbs[name]):
            if name == "meta" and k in NODE_LOCAL_META:
                continue
            h.update(_U32.pack(len(k)) + k + _U32.pack(len(v)) + v)
    return h.hexdigest()


def _applied_index(txn: Any, dbs: dict[str, Any]) -> int:
    raw = txn.get(_META_APPLIED, db=dbs["meta"])
    return 0 if raw is None else _seq_of(raw)


class Snapshot:
    """A pinned, consistent read view of the store (an LMDB read transaction).

    Take it where nothing is applying (in pysyncobj's serializer), so its
    ``applied_index`` matches the Raft state; then ``write_to`` may run in a
    background thread while apply goes on. Close it promptly: LMDB cannot
    reuse pages freed after the view was taken while it is open.
    """

    def __init__(self, env: Any, dbs: dict[str, Any]) -> None:
        self._env = env
        self._txn = env.begin(write=False)
        self._dbs = dbs
        self.applied_index = _applied_index(self._txn, dbs)

    def content_hash(self) -> str:
        return _content_hash(self._txn, self._dbs)

    def write_to(self, out: BinaryIO) -> int:
        """Stream the view (format in hub/state/DESIGN.md); returns the bytes written."""
        h = hashlib.sha256()
        buf = bytearray()
        total = 0

        def emit(b: bytes) -> None:
            buf.extend(b)
            if len(buf) >= 1 << 20:
                flush()

        def flush() -> None:
            nonlocal total
            h.update(buf)
            out.write(bytes(buf))
            total += len(buf)
            buf.clear()

        emit(SNAPSHOT_MAGIC + struct.pack(">HQ", SNAPSHOT_VERSION, self.applied_index))
        for name in TABLES:
            emit(b"T" + bytes([len(name)]) + name.encode())
            for k, v in self._txn.cursor(db=self._dbs[name]):
                emit(b"K" + _U32.pack(len(k)) + k + _U32.pack(len(v)) + v)
        emit(b"E")
        flush()
        digest = h.digest()
        out.write(digest)
        return total + len(digest)

    def write_image(self, out: BinaryIO) -> int:
        """Write the view as a compacted LMDB file: a header (IMAGE_MAGIC,
        version, applied index, image length), the image, its SHA-256.

        LMDB copies it (mdb_env_copyfd2 with MDB_CP_COMPACT, on this read
        transaction) in C with the GIL released, about fifty times faster
        than ``write_to`` walks the records in Python; the digest is read
        back from the file in 1 MiB chunks. ``out`` must be a regular file
        opened for reading and writing ("w+b"). Returns the bytes written.
        Raises lmdb.Error when LMDB cannot copy (the file is then cut back to
        where it started; ``write_to`` still works)."""
        out.flush()
        fd = out.fileno()
        start = out.tell()
        out.write(_IMAGE_HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, self.applied_index, 0))
        out.flush()
        body = out.tell()
        try:
            self._env.copyfd(fd, compact=True, txn=self._txn)
        except lmdb.Error:
            out.seek(start)
            out.truncate()
            raise
        end = os.lseek(fd, 0, os.SEEK_END)
        h = hashlib.sha256()
        pos = body
        while pos < end:
            chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
            if not chunk:
                raise OSError(f"snapshot image: short read at {pos} of {end}")
            h.update(chunk)
            pos += len(chunk)
        out.seek(start)
        out.write(_IMAGE_HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, self.applied_index, end - body))
        out.seek(end)
        out.write(h.digest())
        out.flush()
        return end + len(h.digest()) - start

    def close(self) -> None:
        self._txn.abort()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _HashingReader:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.h = hashlib.sha256()

    def read(self, n: int, hashed: bool = True) -> bytes:
        b = self._f.read(n)
        if len(b) != n:
            raise SnapshotError("truncated", f"wanted {n} bytes, got {len(b)}")
        if hashed:
            self.h.update(b)
        return b


def _restore_image(f: BinaryIO, tmp: Path) -> int:
    """An image (Snapshot.write_image) from ``f``, after its magic, into the
    new file ``tmp``: copied, digest checked, synced; then its meta is
    checked. Returns its applied index."""
    head = f.read(_IMAGE_HEADER.size - len(IMAGE_MAGIC))
    if len(head) != _IMAGE_HEADER.size - len(IMAGE_MAGIC):
        raise SnapshotError("truncated", "snapshot image header")
    _, version, applied, length = _IMAGE_HEADER.unpack(IMAGE_MAGIC + head)
    if version != IMAGE_VERSION:
        raise SnapshotError("bad_version", f"snapshot image version {version}")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise SnapshotError("truncated", f"image: {length - left} of {length} bytes")
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if f.read(32) != h.digest():
        raise SnapshotError("bad_digest", "snapshot image digest does not match")
    try:
        env = lmdb.open(str(tmp), subdir=False, readonly=True, lock=False, max_dbs=len(TABLES))
    except lmdb.Error as exc:
        raise SnapshotError(
            "bad_image",
            f"LMDB cannot open the snapshot image ({exc}); an image made on a machine "
            "with another word size or byte order needs raft.snapshot_format = "
            '"stream" on every node',
        ) from None
    try:
        with env.begin() as txn:
            meta_db = env.open_db(b"meta", txn=txn, create=False)
            fmt = txn.get(_META_FORMAT, db=meta_db)
            got = txn.get(_META_APPLIED, db=meta_db)
    except lmdb.Error as exc:
        raise SnapshotError("bad_image", str(exc)) from None
    finally:
        env.close()
    if fmt != _U32.pack(STORE_FORMAT):
        raise SnapshotError("bad_format", f"store format {fmt!r}")
    if (got or _U64.pack(0)) != _U64.pack(applied):
        raise SnapshotError("bad_index", "header and meta disagree on the applied index")
    return int(applied)


def _restore_stream(env: Any, f: BinaryIO, magic: bytes) -> int:
    """A snapshot stream (Snapshot.write_to) from ``f``, after its magic."""
    r = _HashingReader(f)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("bad_magic", "not a store snapshot")
    r.h.update(magic)
    version, applied = struct.unpack(">HQ", r.read(10))
    if version != SNAPSHOT_VERSION:
        raise SnapshotError("bad_version", f"snapshot version {version}")
    dbs: dict[str, Any] = {}
    with env.begin(write=True) as txn:
        for name in TABLES:
            dbs[name] = env.open_db(name.encode(), txn=txn)
    txn = env.begin(write=True)
    try:
        tag = r.read(1)
        last_table = ""
        pending = 0
        meta: dict[bytes, bytes] = {}
        while tag == b"T":
            name = r.read(r.read(1)[0]).decode("ascii", "replace")
            if name not in dbs or name <= last_table:
                raise SnapshotError("bad_table", repr(name))
            last_table, db, last_key = name, dbs[name], b""
            tag = r.read(1)
            while tag == b"K":
                k = r.read(_U32.unpack(r.read(4))[0])
                v = r.read(_U32.unpack(r.read(4))[0])
                if k <= last_key:
                    raise SnapshotError("bad_order", f"{name}: keys out of order")
                last_key = k
                if name == "meta":
                    meta[k] = v
                txn.put(k, v, db=db, append=True)
                pending += 1
                if pending >= _INSTALL_COMMIT_EVERY:
                    txn.commit()
                    txn, pending = env.begin(write=True), 0
                tag = r.read(1)
        if tag != b"E":
            raise SnapshotError("bad_tag", repr(tag))
        if r.read(32, hashed=False) != r.h.digest():
            raise SnapshotError("bad_digest", "snapshot digest does not match")
        if meta.get(_META_FORMAT) != _U32.pack(STORE_FORMAT):
            raise SnapshotError("bad_format", f"store format {meta.get(_META_FORMAT)!r}")
        if meta.get(_META_APPLIED, _U64.pack(0)) != _U64.pack(applied):
            raise SnapshotError("bad_index", "header and meta disagree on the applied index")
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    return int(applied)


def _unlink(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _lock_of(data: Path) -> Path:
    return data.with_name(data.name + "-lock")


def _open_env(path: Path, map_size: int, durable: bool = True) -> Any:
    return lmdb.open(
        str(path),
        subdir=False,
        map_size=map_size,
        max_dbs=len(TABLES),
        sync=durable,
        metasync=durable,
    )


# -- the store ----------------------------------------------------------------------


class Store:
    """LMDB at ``path/store.mdb`` (a directory the store owns)."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = Path(path)
        self.map_size = map_size
        self._open()

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / INSTALL_FILE
        _unlink(tmp, _lock_of(tmp))  # an install that did not finish
        self._env = _open_env(self.path / DATA_FILE, self.map_size)
        try:
            with self._env.begin(write=True) as txn:
                self._dbs = {n: self._env.open_db(n.encode(), txn=txn) for n in TABLES}
                fmt = txn.get(_META_FORMAT, db=self._dbs["meta"])
                if fmt is None:
                    txn.put(_META_FORMAT, _U32.pack(STORE_FORMAT), db=self._dbs["meta"])
                elif fmt != _U32.pack(STORE_FORMAT):
                    raise IncompatibleStore(f"{self.path}: store format {fmt!r}")
        except BaseException:
            self._env.close()
            raise

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- apply --

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply ``(raft index, entry)`` pairs in one write transaction.

        Entries at or below the applied index are skipped; the new applied
        index is stored in the same transaction. A rejected entry changes
        nothing and the others still apply. Raises StoreFull (nothing
        written) when the map is full.
        """
        if not entries:
            return []
        results: list[ApplyResult] = []
        try:
            with self._env.begin(write=True) as txn:
                applied = start = _applied_index(txn, self._dbs)
                for index, data in entries:
                    if index < 1:
                        raise ValueError(f"raft index {index} < 1")
                    if index <= applied:
                        results.append(ApplyResult(index, 0, e.peek_type(data), Outcome.SKIPPED))
                        continue
                    results.extend(self._apply_entry(txn, index, bytes(data)))
                    applied = index
                if applied != start:
                    txn.put(_META_APPLIED, _U64.pack(applied), db=self._dbs["meta"])
        except lmdb.MapFullError as exc:
            raise StoreFull(f"{self.path}: LMDB map of {self.map_size} bytes is full") from exc
        return results

    def _apply_entry(self, txn: Any, index: int, data: bytes) -> list[ApplyResult]:
        if e.peek_type(data) is not e.EntryType.GROUP:
            return [self._apply_part(txn, index, 0, data)]
        try:
            grp = e.decode(data)
        except e.EntryError as exc:
            return [self._rejected(index, 0, data, exc.reason, exc.detail)]
        assert isinstance(grp, e.Group)
        return [self._apply_part(txn, index, i, p) for i, p in enumerate(grp.parts, 1)]

    @staticmethod
    def _rejected(index: int, part: int, data: bytes, reason: str, detail: str) -> ApplyResult:
        return ApplyResult(
            index, part, e.peek_type(data), Outcome.REJECTED, reason=reason, detail=detail
        )

    def _apply_part(self, txn: Any, index: int, part: int, data: bytes) -> ApplyResult:
        try:
            entry = e.decode(data)
        except e.EntryError as exc:
            return self._rejected(index, part, data, exc.reason, exc.detail)
        child = self._env.begin(write=True, parent=txn)
        try:
            result = _Apply(child, self._dbs).run(index, part, entry)
        except Rejected as exc:
            child.abort()
            return self._rejected(index, part, data, exc.reason, exc.detail)
        except BaseException:
            child.abort()
            raise
        child.commit()
        return result

    # -- reads --

    def _read(self) -> Any:
        return self._env.begin(write=False)

    def applied_index(self) -> int:
        with self._read() as txn:
            return _applied_index(txn, self._dbs)

    def device(self, device_id: str) -> e.Device | None:
        with self._read() as txn:
            raw = txn.get(device_id.encode(), db=self._dbs["devices"])
            return None if raw is None else _unpack_device_record(raw)

    def devices(self) -> list[e.Device]:
        with self._read() as txn:
            return [_unpack_device_record(v) for _, v in txn.cursor(db=self._dbs["devices"])]

    def watermark(self, device_id: str) -> int:
        """Highest seq up to which every reading is stored or declared lost."""
        return self.progress(device_id)[0]

    def progress(self, device_id: str) -> tuple[int, int]:
        """(watermark, lost_before): the device's declared gap is every seq
        below lost_before that is not stored (``readings`` shows which)."""
        with self._read() as txn:
            raw = txn.get(device_id.encode(), db=self._dbs["watermarks"])
            return (0, 0) if raw is None else _progress_of(raw)

    def presence(self, device_id: str) -> PresenceRecord | None:
        with self._read() as txn:
            raw = txn.get(device_id.encode(), db=self._dbs["presence"])
            return None if raw is None else _unpack_presence(device_id, raw)

    def command(self, command_id: str) -> LedgerRecord | None:
        with self._read() as txn:
            lkey = txn.get(command_id.encode(), db=self._dbs["ledger_ids"])
            if lkey is None:
                return None
            return _unpack_ledger(txn.get(lkey, db=self._dbs["ledger"]))

    def commands(self, device_id: str) -> list[LedgerRecord]:
        """The device's commands in sequence order."""
        prefix = _dev_prefix(device_id)
        with self._read() as txn:
            return [_unpack_ledger(v) for _, v in _scan(txn, self._dbs["ledger"], prefix)]

    def model_versions(self, name: str | None = None) -> list[e.ModelVersion]:
        """Registered versions (of one model, or all), in key order."""
        prefix = b"" if name is None else name.encode() + b"\0"
        with self._read() as txn:
            cur = txn.cursor(db=self._dbs["model_versions"])
            rows = _scan(txn, self._dbs["model_versions"], prefix) if prefix else iter(cur)
            return [_unpack_model_version(v) for _, v in rows]

    def models(self) -> list[ModelRecord]:
        """The activated version of each model."""
        with self._read() as txn:
            return [_unpack_model(k.decode(), v) for k, v in txn.cursor(db=self._dbs["models"])]

    def model(self, name: str) -> ModelRecord | None:
        with self._read() as txn:
            raw = txn.get(name.encode(), db=self._dbs["models"])
            return None if raw is None else _unpack_model(name, raw)

    def nodes(self) -> list[NodeRecord]:
        """Every hub node's record, by node_id (ASCII, so key order)."""
        with self._read() as txn:
            return [_unpack_node(k.decode(), v) for k, v in txn.cursor(db=self._dbs["nodes"])]

    def node(self, node_id: str) -> NodeRecord | None:
        with self._read() as txn:
            raw = txn.get(node_id.encode(), db=self._dbs["nodes"])
            return None if raw is None else _unpack_node(node_id, raw)

    def user(self, name: str) -> e.User | None:
        with self._read() as txn:
            raw = txn.get(name.encode(), db=self._dbs["users"])
            return None if raw is None else _unpack_user(raw)

    def users(self) -> list[e.User]:
        with self._read() as txn:
            return [_unpack_user(v) for _, v in txn.cursor(db=self._dbs["users"])]

    def decision(self, decision_id: str) -> e.Decision | None:
        with self._read() as txn:
            raw = txn.get(decision_id.encode(), db=self._dbs["decisions"])
            return None if raw is None else _unpack_decision(decision_id, raw)

    def alert_ack(self, decision_id: str) -> tuple[str, int] | None:
        """Who acknowledged the decision's alert, and when (ms)."""
        with self._read() as txn:
            raw = txn.get(decision_id.encode(), db=self._dbs["alert_acks"])
        if raw is None:
            return None
        n = raw[0]
        return raw[1 : 1 + n].decode(), _U64.unpack_from(raw, 1 + n)[0]

    def decisions(self, device_id: str | None = None, limit: int = 100) -> list[e.Decision]:
        """Newest first: one device's decisions, or everyone's."""
        out: list[e.Decision] = []
        with self._read() as txn:
            if device_id is None:
                rows = [
                    _unpack_decision(k.decode(), v)
                    for k, v in txn.cursor(db=self._dbs["decisions"])
                ]
                rows.sort(key=lambda d: (d.at_ms, d.decision_id), reverse=True)
                return rows[:limit]
            prefix = _dev_prefix(device_id)
            cur = txn.cursor(db=self._dbs["decisions_by_device"])
            # Walk back from the end of this device's keys.
            found = cur.set_range(prefix[:-1] + b"\x01")
            found = cur.prev() if found else cur.last()
            db = self._dbs["decisions"]
            while found and cur.key().startswith(prefix) and len(out) < limit:
                did = cur.key()[len(prefix) + 8 :]
                raw = txn.get(did, db=db)
                if raw is not None:
                    out.append(_unpack_decision(did.decode(), raw))
                found = cur.prev()
        return out

    def readings(
        self, device_id: str, from_seq: int = 1, to_seq: int | None = None, limit: int | None = None
    ) -> list[StoredReading]:
        """Stored readings with from_seq <= seq <= to_seq, in seq order."""
        prefix = _dev_prefix(device_id)
        out: list[StoredReading] = []
        with self._read() as txn:
            for k, v in _scan(txn, self._dbs["readings"], prefix, prefix + _U64.pack(from_seq)):
                seq = _seq_of(k)
                if (to_seq is not None and seq > to_seq) or (
                    limit is not None and len(out) >= limit
                ):
                    break
                out.append(StoredReading(seq, *_READING_VALUE.unpack(v)))
        return out

    def readings_between(
        self, device_id: str, from_ms: int, to_ms: int, sensor: int | None = None
    ) -> list[StoredReading]:
        """Stored readings with from_ms <= ts_ms < to_ms, in (ts, seq) order.

        The hours table gives, per hour, the lowest and highest seq stored
        with a timestamp in that hour; only those seq ranges are scanned.
        """
        if to_ms <= from_ms:
            return []
        prefix = _dev_prefix(device_id)
        ranges: list[tuple[int, int]] = []
        with self._read() as txn:
            last_hour = (to_ms - 1) // HOUR_MS
            start = prefix + _U64.pack(max(from_ms, 0) // HOUR_MS)
            for k, v in _scan(txn, self._dbs["hours"], prefix, start):
                if _seq_of(k) > last_hour:
                    break
                lo, hi, _ = _HOUR_VALUE.unpack(v)
                ranges.append((lo, hi))
            out: list[StoredReading] = []
            readings_db = self._dbs["readings"]
            for lo, hi in _merge_ranges(ranges):
                for k, v in _scan(txn, readings_db, prefix, prefix + _U64.pack(lo)):
                    seq = _seq_of(k)
                    if seq > hi:
                        break
                    ts, s, value = _READING_VALUE.unpack(v)
                    if from_ms <= ts < to_ms and (sensor is None or s == sensor):
                        out.append(StoredReading(seq, ts, s, value))
        out.sort(key=lambda r: (r.ts_ms, r.seq))
        return out

    def hourly_energy(
        self, device_id: str, day: date, tz: tzinfo = UTC
    ) -> tuple[HourlyEnergy, ...]:
        """Energy (Wh) per hour of ``day`` in ``tz``, from the energy counter.

        From sensor 1 (energy_wh, a counter): the increase between each pair
        of consecutive readings (a decrease is a counter reset at boot, so it
        counts the new value), spread linearly over the time between them
        and split at hour boundaries. Readings up to an hour outside the day
        interpolate its first and last hour. A DST day has 23 or 25 hours.
        """
        start = _epoch_ms(datetime.combine(day, time(), tzinfo=tz))
        end = _epoch_ms(datetime.combine(day + timedelta(days=1), time(), tzinfo=tz))
        bounds = [*range(start, end, HOUR_MS), end]
        wh = [0.0] * (len(bounds) - 1)
        rs = self.readings_between(device_id, start - HOUR_MS, end + HOUR_MS, ENERGY_WH_SENSOR)
        for a, b in itertools.pairwise(rs):
            delta = b.value - a.value if b.value >= a.value else b.value
            if delta <= 0 or not math.isfinite(delta):
                continue
            if b.ts_ms == a.ts_ms:
                i = _bucket(bounds, b.ts_ms)
                if i is not None:
                    wh[i] += delta
                continue
            span = b.ts_ms - a.ts_ms
            for i in range(len(wh)):
                lo, hi = max(a.ts_ms, bounds[i]), min(b.ts_ms, bounds[i + 1])
                if hi > lo:
                    wh[i] += delta * (hi - lo) / span
        return tuple(HourlyEnergy(bounds[i], wh[i]) for i in range(len(wh)))

    # -- convergence and snapshots --

    def content_hash(self) -> str:
        """SHA-256 (hex) over every table's keys and values in key order,
        except the node-local meta keys (NODE_LOCAL_META)."""
        with self._read() as txn:
            return _content_hash(txn, self._dbs)

    def snapshot(self) -> Snapshot:
        return Snapshot(self._env, self._dbs)

    def snapshot_to(self, out: BinaryIO) -> int:
        """Write a consistent snapshot; returns its applied index."""
        with self.snapshot() as snap:
            snap.write_to(out)
            return snap.applied_index

    @classmethod
    def install(
        cls, path: str | os.PathLike[str], snapshot: BinaryIO, map_size: int = DEFAULT_MAP_SIZE
    ) -> int:
        """Replace the store at ``path`` with a snapshot, atomically: a stream
        (``Snapshot.write_to``) or an image (``Snapshot.write_image``), told
        apart by their magic.

        A stream is verified (digest, order, format) while it is written to
        a new LMDB next to the old one; an image is copied there, its digest
        checked, and its meta (format, applied index) read back. Only then is
        the new file synced and renamed over the old. The store must not be open (in any process).
        Returns the snapshot's applied index. On SnapshotError the old store
        is untouched.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        tmp, data = root / INSTALL_FILE, root / DATA_FILE
        _unlink(tmp, _lock_of(tmp))
        magic = snapshot.read(len(SNAPSHOT_MAGIC))
        if magic == IMAGE_MAGIC:
            try:
                applied = _restore_image(snapshot, tmp)
            except BaseException:
                _unlink(tmp, _lock_of(tmp))
                raise
        else:
            env = _open_env(tmp, map_size, durable=False)
            try:
                applied = _restore_stream(env, snapshot, magic)
                env.sync(True)
            except BaseException:
                env.close()
                _unlink(tmp, _lock_of(tmp))
                raise
            env.close()
        fsync_path(tmp)
        # A lock file outlives its data file; the new file starts with a new one.
        _unlink(_lock_of(data))
        os.replace(tmp, data)
        _unlink(_lock_of(tmp))
        fsync_path(root, directory=True)
        return applied

    def restore(self, snapshot: BinaryIO) -> int:
        """Close, install the snapshot over this store, reopen. Read
        transactions of other threads must be finished."""
        self.close()
        try:
            return Store.install(self.path, snapshot, self.map_size)
        finally:
            self._open()


def _scan(
    txn: Any, db: Any, prefix: bytes, start: bytes | None = None
) -> Iterator[tuple[bytes, bytes]]:
    cur = txn.cursor(db=db)
    if not cur.set_range(start if start is not None else prefix):
        return
    for k, v in cur:
        if not k.startswith(prefix):
            return
        yield k, v


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


def _bucket(bounds: list[int], ts: int) -> int | None:
    for i in range(len(bounds) - 1):
        if bounds[i] <= ts < bounds[i + 1]:
            return i
    return None
