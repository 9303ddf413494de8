"""The store's tables, and the bytes of their keys and values.

One LMDB file holds the named databases of ``TABLES``; hub/state/DESIGN.md
("Tables") gives each one's keys and values. Here are their encodings, the
records the reads return, the applied index and the content hash over all of
it. Nothing here opens LMDB or a transaction: callers pass theirs.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from hub.state import entries as e
from protocol import messages as m

# 2: the rollup tables and the energy index (hub/state/DESIGN.md "Retention and
# rollups"). A format-1 store or snapshot is migrated when it is opened: its
# rollups are rebuilt from its readings (rollups.rebuild).
STORE_FORMAT: Final = 2
READABLE_FORMATS: Final = (1, 2)

TABLES: Final = (
    "alert_acks",
    "decisions",
    "decisions_by_device",
    "devices",
    "drains",
    "energy_index",
    "hours",
    "invites",
    "ledger",
    "ledger_ids",
    "meta",
    "model_versions",
    "models",
    "nodes",
    "outbox",
    "policies",  # operators' LLM policies per device class (hub/state/policies.py)
    "presence",
    "readings",
    "retention",
    "revoked_tokens",
    "rollup_days",
    "rollup_hours",
    "thread_expiry",
    "thread_msgs",
    "threads",
    "users",
    "watermarks",
)
META_FORMAT: Final = b"format"
META_APPLIED: Final = b"applied_index"
# Admin tokens issued before this time (u64 ms) are revoked (TOKEN_REVOKE).
META_TOKENS_BEFORE: Final = b"admin_tokens_before"
# Meta keys that are a node's position in the log, not replicated content.
NODE_LOCAL_META: Final = frozenset({META_APPLIED})
# Tables outside the content hash: the node table is the cluster's topology
# (where each hub listens), not content, so a cluster restored on other
# machines (aiot restore) holds the same content hash as its source.
# The drains table (NODE_DRAIN: which nodes are drained for maintenance)
# is topology too.
UNHASHED_TABLES: Final = frozenset({"nodes", "drains"})

# A revoked admin token id is forgotten this long after its revocation (apply
# compares it with a later TOKEN_REVOKE's at_ms): no admin token lives longer
# than 365 days (hub/core/auth.py MAX_ADMIN_TTL_S), and a week more allows
# for clocks that disagree. Part of the replicated format: not read from auth,
# so that apply cannot change with it (a unit test checks it is the longer).
REVOKED_TOKEN_KEEP_MS: Final = (365 + 7) * 86_400_000

HOUR_MS: Final = 3_600_000  # the hours table's unit: key hour = ts_ms // HOUR_MS

RECORD_VERSION: Final = 1
# Ledger records carry a detail with each state change since version 2;
# version 1 records (no details) still read.
LEDGER_VERSION: Final = 2

U32: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
TS_SENSOR: Final = struct.Struct(">QH")  # how a readings value starts: ts_ms, sensor
READING_VALUE: Final = struct.Struct(">QHf")  # ts_ms, sensor, value: 14 bytes
HOUR_VALUE: Final = struct.Struct(">QQI")  # min seq, max seq, count
PROGRESS_VALUE: Final = struct.Struct(">QQ")  # watermark, lost_before
_DECISION_HEAD: Final = struct.Struct(">BBQ")  # record version, tier, at_ms


# -- what the reads return ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredReading:
    seq: int
    ts_ms: int
    sensor: int
    value: float


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


# -- keys ---------------------------------------------------------------------------


def dev_prefix(device_id: str) -> bytes:
    """The start of every key of one device (readings, hours, ledger, ...).
    Device ids never contain NUL (protocol/topics.py), so "id NUL" groups a
    device's keys together in id order."""
    return device_id.encode() + b"\0"


def dev_key(prefix: bytes, n: int) -> bytes:
    """A device's key for ``n`` (a seq, an hour, a command seq) under ``prefix``."""
    return prefix + U64.pack(n)


def seq_of(key: bytes) -> int:
    """The u64 at the end of a key (or the whole of a u64 value)."""
    seq: int = U64.unpack_from(key, len(key) - 8)[0]
    return seq


def scan(
    txn: Any, db: Any, prefix: bytes, start: bytes | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """The records of ``db`` whose key starts with ``prefix``, from ``start``
    (default: the first of them), in key order."""
    cur = txn.cursor(db=db)
    if not cur.set_range(start if start is not None else prefix):
        return
    for k, v in cur:
        if not k.startswith(prefix):
            return
        yield k, v


# -- values -------------------------------------------------------------------------


def progress_of(raw: bytes) -> tuple[int, int]:
    """A watermarks value: (watermark, lost_before)."""
    mark, lost = PROGRESS_VALUE.unpack(raw)
    return int(mark), int(lost)


def pack_device_record(device: e.Device, at_ms: int) -> bytes:
    p = e.Packer().u8(RECORD_VERSION)
    e.pack_device(p, device)
    return bytes(p.u64(at_ms))


def device_fields(device: e.Device) -> bytes:
    """A device record without its version byte and time."""
    p = e.Packer()
    e.pack_device(p, device)
    return bytes(p)


def registered_ms(value: bytes) -> int:
    """The time in a device record: its registering entry's ``at_ms``."""
    u = e.Unpacker(bytes(value), 1)
    e.unpack_device(u)
    return u.u64()


@functools.lru_cache(maxsize=4096)
def unpack_device_record(value: bytes) -> e.Device:
    # Memoized on the record's bytes (a Device is immutable): ingest reads the
    # device of every uplink message and the decision engine every device it
    # looks at, and decoding the record was most of each read.
    u = e.Unpacker(bytes(value), 1)
    return e.unpack_device(u)


def pack_presence(p: PresenceRecord) -> bytes:
    return bytes(e.Packer().u8(RECORD_VERSION).str8(p.node_id).u8(int(p.state)).u64(p.at_ms))


def unpack_presence(device_id: str, value: bytes) -> PresenceRecord:
    u = e.Unpacker(bytes(value), 1)
    return PresenceRecord(device_id, u.str8(), m.LinkState(u.u8()), u.u64())


def put_command_of(c: m.Command) -> e.PutCommand:
    """The COMMAND entry a ledger command came from (its seq left out)."""
    return e.PutCommand(
        c.command_id, c.device_id, c.term, c.action, c.params, c.issued_at_ms, c.deadline_ms
    )


def command_fields(c: e.PutCommand) -> bytes:
    """A COMMAND entry's payload: what a re-proposal must repeat byte for byte."""
    p = e.Packer()
    e.pack_put_command(p, c)
    return bytes(p)


def pack_ledger(rec: LedgerRecord) -> bytes:
    p = e.Packer().u8(LEDGER_VERSION)
    e.pack_put_command(p, put_command_of(rec.command))
    p.u64(rec.command.seq).u8(int(rec.state)).u8(len(rec.history))
    for h in rec.history:
        p.u8(int(h.state)).u64(h.at_ms).str8(h.node_id).str16(h.detail)
    r = rec.result
    if r is None:
        p.u8(0)
    else:
        p.u8(1).u8(int(r.status)).u8(int(r.reason)).str16(r.detail).u64(r.executed_at_ms)
    return bytes(p)


def unpack_ledger(value: bytes) -> LedgerRecord:
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


def pack_model(rec: e.PutModel) -> bytes:
    p = e.Packer().u8(RECORD_VERSION).str8(rec.version).blob8(rec.sha256).u64(rec.size)
    return bytes(p.str16(rec.source).u64(rec.at_ms))


def unpack_model(name: str, value: bytes) -> e.PutModel:
    u = e.Unpacker(bytes(value), 1)
    return e.PutModel(name, u.str8(), u.blob8(), u.u64(), u.str16(), u.u64())


def model_version_key(name: str, version: str) -> bytes:
    return name.encode() + b"\0" + version.encode()


def pack_model_version(mv: e.ModelVersion) -> bytes:
    p = e.Packer().u8(RECORD_VERSION)
    p.str8(mv.name).str8(mv.version).str8(mv.kind).blob8(mv.sha256).u64(mv.size)
    p.u32(len(mv.manifest)).raw(mv.manifest).blob8(mv.signature).str8(mv.key_id)
    return bytes(p.u64(mv.at_ms))


def unpack_model_version(value: bytes) -> e.ModelVersion:
    u = e.Unpacker(bytes(value), 1)
    name, version, kind, sha, size = u.str8(), u.str8(), u.str8(), u.blob8(), u.u64()
    manifest = u.raw(u.u32())
    return e.ModelVersion(name, version, kind, sha, size, manifest, u.blob8(), u.str8(), u.u64())


def node_fields(n: e.NodeInfo) -> bytes:
    """A node record without its version byte and time: its addresses."""
    p = e.Packer()
    e.pack_node_addresses(p, n)
    return bytes(p)


def pack_node(n: e.NodeInfo) -> bytes:
    p = e.Packer().u8(RECORD_VERSION)
    e.pack_node_addresses(p, n)
    return bytes(p.u64(n.at_ms))


def unpack_node(node_id: str, value: bytes) -> e.NodeInfo:
    u = e.Unpacker(bytes(value), 1)
    raft, broker, http = e.unpack_node_addresses(u)
    return e.NodeInfo(node_id, raft, broker, http, u.u64())


def pack_user(user: e.User) -> bytes:
    p = e.Packer()
    p.u8(RECORD_VERSION)
    e.pack_user(p, user)
    return bytes(p)


def unpack_user(value: bytes) -> e.User:
    return e.unpack_user(e.Unpacker(value[1:]))


def pack_decision(d: e.Decision) -> bytes:
    dev, cmd = d.device_id.encode(), d.command_id.encode()
    head = _DECISION_HEAD.pack(RECORD_VERSION, int(d.tier), d.at_ms)
    return head + bytes([len(dev)]) + dev + bytes([len(cmd)]) + cmd + d.record


def unpack_decision(decision_id: str, value: bytes) -> e.Decision:
    _, tier, at_ms = _DECISION_HEAD.unpack_from(value)
    i = _DECISION_HEAD.size
    dev = value[i + 1 : i + 1 + value[i]].decode()
    i += 1 + value[i]
    cmd = value[i + 1 : i + 1 + value[i]].decode()
    i += 1 + value[i]
    return e.Decision(decision_id, dev, e.Tier(tier), at_ms, cmd, bytes(value[i:]))


def pack_alert_ack(a: e.AckAlert) -> bytes:
    user = a.user.encode()
    return bytes([len(user)]) + user + U64.pack(a.at_ms)


def unpack_alert_ack(raw: bytes) -> tuple[str, int]:
    """Who acknowledged, and when (ms)."""
    n = raw[0]
    return raw[1 : 1 + n].decode(), U64.unpack_from(raw, 1 + n)[0]


def pack_revoked(at_ms: int) -> bytes:
    """A revoked_tokens value: record version, when it was revoked."""
    return bytes([RECORD_VERSION]) + U64.pack(at_ms)


def unpack_revoked(value: bytes) -> int:
    at_ms: int = U64.unpack_from(value, 1)[0]
    return at_ms


# -- the whole store ----------------------------------------------------------------


def applied_index(txn: Any, dbs: dict[str, Any]) -> int:
    raw = txn.get(META_APPLIED, db=dbs["meta"])
    return 0 if raw is None else seq_of(raw)


def content_hash(txn: Any, dbs: dict[str, Any]) -> str:
    """SHA-256 (hex) over every table's keys and values in key order, except
    UNHASHED_TABLES and the node-local meta keys (NODE_LOCAL_META)."""
    h = hashlib.sha256()
    for name in TABLES:  # sorted
        if name in UNHASHED_TABLES:
            continue
        h.update(b"T" + bytes([len(name)]) + name.encode())
        for k, v in txn.cursor(db=dbs[name]):
            if name == "meta" and k in NODE_LOCAL_META:
                continue
            h.update(U32.pack(len(k)) + k + U32.pack(len(v)) + v)
    return h.hexdigest()
