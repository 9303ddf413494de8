"""Replicated log entries: the bytes the hub proposes to Raft.

pysyncobj's replicated methods take bytes and primitives only, so every change
to the replicated state is one of these entries, encoded here and applied by
``Store.apply`` (hub/state/apply.py). Proposers (ingest, the CLI, the decision
engine, command delivery) build entries with ``encode``; nothing but the store
decodes them. This module does not import LMDB.

Layout (all integers big-endian; see hub/state/DESIGN.md for every payload)::

    byte 0    format version (ENTRY_VERSION, 1)
    byte 1    entry type (EntryType)
    2..       payload

    str8   = u8 length, UTF-8 bytes        blob8 = u8 length, bytes
    str16  = u16 length, UTF-8 bytes

Entry types (EntryType): BATCH 1, REGISTER_DEVICE 2, REMOVE_DEVICE 3,
PRESENCE 4, COMMAND 5, COMMAND_RESULT 6, COMMAND_STATE 7, MODEL_PUT 8,
(9 reserved for GAP), NODE_PUT 10 (a hub node's addresses, ``NodeInfo``),
NODE_REMOVE 11 (``RemoveNode``), DECISION 12 (a decision's provenance,
``Decision``), USER_PUT 13 (``User``), USER_REMOVE 14 (``RemoveUser``),
ALERT_ACK 15 (``AckAlert``), MODEL_VERSION 17 (``ModelVersion``),
TOKEN_REVOKE 18 (``RevokeTokens``: admin tokens revoked by id or by a cut-off),
NODE_DRAIN 20 (``DrainNode``: a hub node drained for maintenance, or back),
PRUNE 21 (``Prune``: a retention step, raw readings and rollups older than cut-offs),
POLICY_SET 22 (``SetPolicy``: an operator's LLM policy in words for a device class),
INVITE 30, INVITE_ACCEPT 31, THREAD_POST 32, THREAD_MARK 33, THREAD_PRUNE 34
(invitations and conversations: hub/state/invites.py, hub/state/threads.py),
EXPORT 40 (``Export``: the cloud export's switch and cursor, hub/state/outbox.py),
GROUP 16 (several of the others in one Raft entry; groups do not nest).
MODEL_PUT activates a registered version (``PutModel``).

Decoding checks structure and values (lengths, UTF-8, enums, device ids,
sequence ranges, no trailing bytes) and raises ``EntryError`` with a
machine-readable ``reason`` (one of ``REASONS``); encoding raises the same
error for what cannot be represented. State-dependent checks (is the device
registered?) belong to ``Store.apply``.
"""

from __future__ import annotations

import enum
import json
import math
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from protocol import messages as m
from protocol.errors import ReasonError
from protocol.topics import valid_device_id

ENTRY_VERSION: Final = 1

# A hub node id, as hub/core/config.py NODE_ID. Kept here, not imported: what
# decodes as a valid entry is part of the replicated format and must not move
# with the config file's rules (a unit test checks that the two agree).
NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PORT: Final = re.compile(r"[0-9]{1,5}")
MAX_ADDRESS_BYTES: Final = 255

# A batch spans at most 65.535 s (u16 offsets): base_ts_ms + offset fits in u64.
_U64_MAX: Final = 2**64 - 1
_MAX_BASE_TS: Final = _U64_MAX - 0xFFFF

REASONS: Final = (
    "truncated",  # the bytes end inside a field
    "trailing_bytes",  # bytes left after the payload
    "bad_version",  # format version byte other than ENTRY_VERSION
    "unknown_type",  # entry type byte outside EntryType
    "bad_utf8",  # a string is not valid UTF-8
    "bad_device_id",  # not a device id of protocol/topics.py
    "bad_value",  # a number, enum or length outside its range
    "nested_group",  # a group inside a group
)


class EntryError(ReasonError, ValueError):
    """Bytes that are not a valid entry, or an entry that cannot be encoded."""

    reasons = REASONS


class EntryType(enum.IntEnum):
    BATCH = 1
    REGISTER_DEVICE = 2
    REMOVE_DEVICE = 3
    PRESENCE = 4
    COMMAND = 5
    COMMAND_RESULT = 6
    COMMAND_STATE = 7
    MODEL_PUT = 8
    # 9 is reserved for GAP (a device-declared sequence gap; hub/state/DESIGN.md).
    NODE_PUT = 10
    NODE_REMOVE = 11
    DECISION = 12
    USER_PUT = 13
    USER_REMOVE = 14
    ALERT_ACK = 15
    MODEL_VERSION = 17
    TOKEN_REVOKE = 18
    # 19 is free.
    NODE_DRAIN = 20
    PRUNE = 21
    POLICY_SET = 22
    # 30-34: invitations and conversations (``Invite`` .. ``PruneThreads``).
    INVITE = 30
    INVITE_ACCEPT = 31
    THREAD_POST = 32
    THREAD_MARK = 33
    THREAD_PRUNE = 34
    # 40: the cloud export's switch and cursor (``Export``; hub/state/outbox.py).
    EXPORT = 40
    GROUP = 16


class LedgerState(enum.IntEnum):
    """A command's state in the replicated ledger (hub side)."""

    PENDING = 0
    SENT = 1
    DONE = 2
    FAILED = 3
    REJECTED = 4
    EXPIRED = 5

    @property
    def final(self) -> bool:
        return self not in (LedgerState.PENDING, LedgerState.SENT)


# -- primitives -------------------------------------------------------------------

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
READING = struct.Struct(">HHf")  # sensor, offset_ms, value: 8 bytes, as on the wire


class Packer:
    """Appends big-endian fields; ``bytes()`` joins them."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def _pack(self, s: struct.Struct, value: int | float, what: str) -> Packer:
        try:
            self._parts.append(s.pack(value))
        except (struct.error, OverflowError, TypeError) as exc:
            raise EntryError("bad_value", f"{what}={value!r}: {exc}") from None
        return self

    def u8(self, v: int, what: str = "u8") -> Packer:
        return self._pack(_U8, v, what)

    def u16(self, v: int, what: str = "u16") -> Packer:
        return self._pack(_U16, v, what)

    def u32(self, v: int, what: str = "u32") -> Packer:
        return self._pack(_U32, v, what)

    def u64(self, v: int, what: str = "u64") -> Packer:
        return self._pack(_U64, v, what)

    def i64(self, v: int, what: str = "i64") -> Packer:
        return self._pack(_I64, v, what)

    def f64(self, v: float, what: str = "f64") -> Packer:
        return self._pack(_F64, v, what)

    def raw(self, b: bytes) -> Packer:
        self._parts.append(b)
        return self

    def blob8(self, b: bytes, what: str = "blob") -> Packer:
        self.u8(len(b), what + " length")
        self._parts.append(bytes(b))
        return self

    def str8(self, s: str, what: str = "str") -> Packer:
        return self.blob8(s.encode(), what)

    def str16(self, s: str, what: str = "str") -> Packer:
        b = s.encode()
        self.u16(len(b), what + " length")
        self._parts.append(b)
        return self

    def __bytes__(self) -> bytes:
        return b"".join(self._parts)


class Unpacker:
    """Reads big-endian fields; raises EntryError('truncated') past the end."""

    __slots__ = ("_buf", "_pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self._buf = buf
        self._pos = pos

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            raise EntryError("truncated", f"need {n} bytes at {self._pos}, have {len(self._buf)}")
        b = self._buf[self._pos : end]
        self._pos = end
        return b

    def _unpack(self, s: struct.Struct) -> int:
        value: int = s.unpack(self._take(s.size))[0]
        return value

    def u8(self) -> int:
        return self._unpack(_U8)

    def u16(self) -> int:
        return self._unpack(_U16)

    def u32(self) -> int:
        return self._unpack(_U32)

    def u64(self) -> int:
        return self._unpack(_U64)

    def i64(self) -> int:
        return self._unpack(_I64)

    def f64(self) -> float:
        value: float = _F64.unpack(self._take(8))[0]
        return value

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def blob8(self) -> bytes:
        return self._take(self.u8())

    def _text(self, b: bytes) -> str:
        try:
            return b.decode()
        except UnicodeDecodeError:
            raise EntryError("bad_utf8", repr(b[:40])) from None

    def str8(self) -> str:
        return self._text(self.blob8())

    def str16(self) -> str:
        return self._text(self._take(self.u16()))

    def rest(self) -> bytes:
        b = self._buf[self._pos :]
        self._pos = len(self._buf)
        return b

    def end(self) -> None:
        if self._pos != len(self._buf):
            raise EntryError("trailing_bytes", f"{len(self._buf) - self._pos} bytes after payload")


def _enum(cls: type[enum.IntEnum], value: int, what: str) -> int:
    try:
        return cls(value)
    except ValueError:
        raise EntryError("bad_value", f"{what}={value}") from None


def _device_id(device_id: str) -> str:
    if not valid_device_id(device_id):
        raise EntryError("bad_device_id", repr(device_id[:80]))
    return device_id


def _nonempty(s: str, what: str) -> str:
    if not s:
        raise EntryError("bad_value", f"{what} is empty")
    return s


def _node_id(node_id: str) -> str:
    if not NODE_ID.fullmatch(node_id):
        raise EntryError("bad_value", f"node_id {node_id[:80]!r}")
    return node_id


def valid_address(address: str) -> bool:
    """``host:port``: at most 255 UTF-8 bytes, no spaces or control
    characters, a non-empty host, a port in 1..65535 (ASCII digits) after the
    last colon; a host with a colon (IPv6) must be in brackets, as in
    ``[::1]:1883``."""
    # isprintable() first: it also refuses lone surrogates, which encode() cannot take.
    if not address or not address.isprintable() or " " in address:
        return False
    if len(address.encode()) > MAX_ADDRESS_BYTES:
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        return False
    if any(c in host for c in ":[]"):
        # IPv6: the whole host in brackets, and no bracket inside.
        inner = host[1:-1]
        return (
            host[0] == "[" and host[-1] == "]" and bool(inner) and not any(c in inner for c in "[]")
        )
    return True


def _address(address: str, what: str) -> str:
    if not valid_address(address):
        raise EntryError("bad_value", f"{what} {address[:80]!r}: want host:port")
    return address


# -- entries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """A TelemetryBatch that ingest authenticated, and the node that received it.

    ``packed`` holds the readings as on the wire, 8 bytes each (sensor u16,
    offset_ms u16, value f32, big-endian), so apply copies value bytes without
    a float round trip. ``lost_before`` is the batch's declaration that the
    device holds no unacknowledged reading below that seq (0: none; aiot.fbs).
    """

    device_id: str
    node_id: str
    boot_epoch: int
    first_seq: int
    base_ts_ms: int
    packed: bytes
    lost_before: int = 0

    @classmethod
    def from_message(cls, batch: m.TelemetryBatch, node_id: str) -> Batch:
        try:
            packed = b"".join(READING.pack(r.sensor, r.offset_ms, r.value) for r in batch.readings)
        except (struct.error, OverflowError, TypeError) as exc:
            raise EntryError("bad_value", f"reading: {exc}") from None
        return cls(
            batch.device_id,
            node_id,
            batch.boot_epoch,
            batch.first_seq,
            batch.base_ts_ms,
            packed,
            batch.lost_before,
        )

    @property
    def count(self) -> int:
        return len(self.packed) // READING.size

    @property
    def last_seq(self) -> int:
        """Sequence number of the last reading (first_seq - 1 when empty)."""
        return self.first_seq + self.count - 1

    def readings(self) -> Iterator[m.Reading]:
        for sensor, offset_ms, value in READING.iter_unpack(self.packed):
            yield m.Reading(sensor, offset_ms, value)


@dataclass(frozen=True, slots=True)
class Device:
    """A device registry record: what the hub knows about a device."""

    device_id: str
    key: bytes
    capabilities: tuple[m.Capability, ...] = ()
    limit_w: float | None = None
    owner: str = ""


@dataclass(frozen=True, slots=True)
class RegisterDevice:
    device: Device
    at_ms: int


@dataclass(frozen=True, slots=True)
class RemoveDevice:
    device_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Presence:
    """``node_id`` holds (ONLINE) or lost (OFFLINE) the device's broker session."""

    device_id: str
    node_id: str
    state: m.LinkState
    at_ms: int


@dataclass(frozen=True, slots=True)
class PutCommand:
    """A new command for the ledger. Apply assigns the per-device sequence
    number, so concurrent proposers never pick the same one."""

    command_id: str
    device_id: str
    term: int
    action: str
    params: tuple[m.Param, ...] = ()
    issued_at_ms: int = 0
    deadline_ms: int = 0  # 0: no deadline

    def with_seq(self, seq: int) -> m.Command:
        return m.Command(
            self.command_id,
            self.device_id,
            seq,
            self.term,
            self.action,
            self.params,
            self.issued_at_ms,
            self.deadline_ms,
        )


@dataclass(frozen=True, slots=True)
class RecordResult:
    """A device's CommandResult, received by ``node_id`` at ``at_ms``."""

    result: m.CommandResult
    node_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class MarkCommand:
    """A hub-side state change: SENT (published) or EXPIRED (deadline passed
    without a result)."""

    command_id: str
    state: LedgerState
    node_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class PutModel:
    """The model registry's record for ``name`` (latest wins). An empty
    ``version`` (sha256 all zero, size 0) switches the model off: no version
    runs, not even a shipped one (``switched_off``)."""

    name: str
    version: str
    sha256: bytes
    size: int
    source: str
    at_ms: int


NO_SHA256: Final = bytes(32)


def switched_off(name: str, at_ms: int) -> PutModel:
    """The record that switches model ``name`` off on every node."""
    return PutModel(name, "", NO_SHA256, 0, f"switched off {name}", at_ms)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A hub node's record in the replicated node table (NODE_PUT): where its
    Raft peer port, its MQTT broker (what devices connect to) and its HTTP API
    are. Each node proposes its own at startup; ``at_ms`` is the proposer's
    clock."""

    node_id: str
    raft: str
    broker: str
    http: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class RemoveNode:
    """Forget a hub node's record (NODE_REMOVE)."""

    node_id: str
    at_ms: int


class Role(enum.IntEnum):
    """An API user's role (hub/http/api.py): what they may do."""

    ADMIN = 1  # users and devices, and everything below
    OPERATOR = 2  # commands and models, and reading everything
    VIEWER = 3  # reading the devices assigned to them


USER_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True, slots=True)
class User:
    """An API user (USER_PUT, latest wins). ``password_hash`` is computed by
    the proposer (hub/state/users.py), so every replica stores the same bytes;
    ``devices`` are the devices a viewer may see."""

    name: str
    role: Role
    password_hash: bytes
    devices: tuple[str, ...] = ()
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class RemoveUser:
    name: str
    at_ms: int


class Tier(enum.IntEnum):
    """Where a decision came from."""

    RULES = 1
    ONNX = 2
    LLM = 3
    OPERATOR = 4


DECISION_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_DECISION_RECORD: Final = 32 * 1024


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision and its provenance (DECISION): which tier decided what for
    which device, from which inputs, with which model, and what the guard
    said. ``record`` is a JSON object (UTF-8, at most MAX_DECISION_RECORD
    bytes) with the tier-specific fields (facts, model name and sha256,
    prompt sha256, raw output, latency, verdict); it is stored as proposed,
    so every replica holds the same bytes. ``command_id`` names the command
    it put into the ledger ("" if none: advisory, blocked, or no action)."""

    decision_id: str
    device_id: str
    tier: Tier
    at_ms: int
    command_id: str
    record: bytes


MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# firmware: a release; rules: a rules file the decision engine adds to the
# config's rules (hub/decide/registry.py); lora: a GGUF LoRA adapter the LLM
# tier applies to its base model
MODEL_KINDS: Final = ("onnx", "gguf", "firmware", "rules", "lora")
MAX_MODEL_MANIFEST: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """A model version in the registry (MODEL_VERSION): its signed manifest.
    The bytes travel out of band (hub/decide/registry.py); every node fetches them by
    sha256 and checks them against this record. ``manifest`` is the JSON the
    signature covers (name, version, kind, sha256, size, created and the
    model's own manifest), ``signature`` an Ed25519 signature of it by
    ``key_id`` (the sha256 of the public key, hex, first 16 characters)."""

    name: str
    version: str
    kind: str
    sha256: bytes
    size: int
    manifest: bytes
    signature: bytes
    key_id: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AckAlert:
    """An operator acknowledged the alert of decision ``decision_id`` (ALERT_ACK)."""

    decision_id: str
    user: str
    at_ms: int


# An admin token's id (hub/core/auth.py): 16 lowercase hex digits. Kept here,
# like NODE_ID, because what decodes is part of the replicated format.
TOKEN_ID: Final = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class RevokeTokens:
    """Revoke cluster admin tokens (TOKEN_REVOKE): the one whose id is
    ``token_id`` (empty: none), and every one issued before ``before_ms``
    (0: no new cut-off). At least one of the two. ``at_ms`` is when it was
    proposed (the proposer's clock): apply forgets revoked ids older than
    the longest lifetime of a token (hub/state/DESIGN.md)."""

    token_id: str
    before_ms: int
    at_ms: int


def _check_revoke(rv: RevokeTokens) -> None:
    if rv.token_id and not TOKEN_ID.fullmatch(rv.token_id):
        raise EntryError("bad_value", f"token id {rv.token_id[:40]!r}, want 16 hex digits")
    if not rv.token_id and not rv.before_ms:
        raise EntryError("bad_value", "a revocation names a token id or a cut-off")


# A retention step names at most this many devices, and deletes at most
# MAX_PRUNE_RECORDS records (hub/state/DESIGN.md "Retention and rollups").
MAX_PRUNE_DEVICES: Final = 1024
MAX_PRUNE_RECORDS: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class PruneDevice:
    """One device's cut-offs in a PRUNE entry: raw readings stamped before
    ``raw_before_ms`` go, and rollup rows of hours (days) that end at or
    before ``rollup_before_ms``."""

    device_id: str
    raw_before_ms: int
    rollup_before_ms: int


@dataclass(frozen=True, slots=True)
class Prune:
    """A retention step (PRUNE), proposed by the leader: the devices' cut-offs
    and the most records the step deletes (``max_records``). ``at_ms`` is
    when it was proposed (the proposer's clock); apply does not use it."""

    devices: tuple[PruneDevice, ...]
    max_records: int
    at_ms: int


def _check_prune(pr: Prune) -> None:
    if not 1 <= pr.max_records <= MAX_PRUNE_RECORDS:
        raise EntryError("bad_value", f"max_records {pr.max_records}")
    if len(pr.devices) > MAX_PRUNE_DEVICES:
        raise EntryError("bad_value", f"{len(pr.devices)} devices in one retention step")
    for d in pr.devices:
        _device_id(d.device_id)
        if d.rollup_before_ms > d.raw_before_ms:
            raise EntryError("bad_value", f"{d.device_id}: rollups cut after raw readings")


@dataclass(frozen=True, slots=True)
class DrainNode:
    """Drain a hub node for maintenance (``drained``), or bring it back
    (NODE_DRAIN): a drained node takes no device sessions and is left out of
    every device's broker order (hub/link/membership.py)."""

    node_id: str
    drained: bool
    at_ms: int


# A device class (hub/core/config.py DEVICE_CLASS: a device id up to its first
# "-") and the longest policy in words, in characters (MAX_POLICY_CHARS).
# Kept here, like NODE_ID: what decodes is part of the replicated format (a
# unit test checks that the two agree).
DEVICE_CLASS: Final = re.compile(r"[A-Za-z0-9_.]{1,64}")
MAX_POLICY_CHARS: Final = 4000


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """An operator's policy in words for the LLM tier on every device of
    ``device_class`` (POLICY_SET), or, with an empty ``text``, the class
    back to the config's policy. ``by`` is who set it, ``at_ms`` when (the
    proposer's clock)."""

    device_class: str
    text: str
    at_ms: int
    by: str


def policy_text_problem(text: str) -> str | None:
    """What makes ``text`` no policy, or None. Empty is valid (the override
    removed); otherwise not only spaces and newlines, at most
    MAX_POLICY_CHARS characters, and no C0 or C1 control character but
    newline. Code points are compared, never Unicode categories, so every
    Python version decodes the same entries alike."""
    if not text:
        return None
    if not text.strip(" \n"):  # spaces and newlines (others are refused below)
        return "a policy of blanks only"
    if len(text) > MAX_POLICY_CHARS:
        return f"a policy of {len(text)} characters, at most {MAX_POLICY_CHARS}"
    for c in text:
        n = ord(c)
        if (n < 0x20 and c != "\n") or 0x7F <= n <= 0x9F or 0xD800 <= n <= 0xDFFF:
            return f"a policy with the control character U+{n:04X} (only newlines)"
    return None


def _check_policy(sp: SetPolicy) -> None:
    if not DEVICE_CLASS.fullmatch(sp.device_class):
        raise EntryError("bad_value", f"device class {sp.device_class[:80]!r}")
    problem = policy_text_problem(sp.text)
    if problem is not None:
        raise EntryError("bad_value", problem)
    _nonempty(sp.by, "by")


# Commands the hub itself issues to a device, outside its registered
# capabilities (apply accepts them for any device; the guard keeps them from
# every other origin): ``hubs.set`` gives the device its new broker order
# (hub/link/membership.py). Part of the replicated format.
SYSTEM_ACTIONS: Final = frozenset({"hubs.set"})


# -- invitations and conversations (hub/state/invites.py, hub/state/threads.py) ------

# An invitation's id: the first 16 bytes of the SHA-256 of its secret link
# token, in hex. The token itself is never replicated.
INVITE_ID: Final = re.compile(r"[0-9a-f]{32}")
MAX_MESSAGE_BYTES: Final = 4000  # a conversation message's text (UTF-8)
MAX_THREAD_PRUNE: Final = 100_000  # most records one THREAD_PRUNE step deletes


@dataclass(frozen=True, slots=True)
class Invite:
    """An admin (``by``) invites ``name`` with ``role`` (INVITE): the user is
    created when the invitation is accepted before ``expires_ms``, once."""

    invite_id: str
    name: str
    role: Role
    devices: tuple[str, ...]
    expires_ms: int
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class AcceptInvite:
    """The invited user's password (hashed by the proposer) for the invitation
    (INVITE_ACCEPT). ``at_ms`` (the proposer's clock) is checked against the
    expiry in apply; the first acceptance in log order wins."""

    invite_id: str
    password_hash: bytes
    at_ms: int


class Author(enum.IntEnum):
    """Who wrote a conversation message."""

    USER = 1  # the thread's owner
    BOT = 2  # the hub's answers (hub/decide/explain.py)
    ADMIN = 3  # an admin's private reply


@dataclass(frozen=True, slots=True)
class PostMessage:
    """A message in ``user``'s thread (THREAD_POST). ``escalate`` moves the
    thread to the admins' inbox ("talk to a person", or a question the bot
    could not answer). ``message_id`` makes a retried proposal harmless."""

    user: str
    author: Author
    by: str
    text: str
    escalate: bool
    message_id: str
    at_ms: int


class ThreadMark(enum.IntEnum):
    ADMIN_READ = 1  # the admins read the thread up to a message
    USER_READ = 2  # its owner read the replies up to a message
    RESOLVE = 3  # the thread goes back to the bot (leaves the inbox)


@dataclass(frozen=True, slots=True)
class MarkThread:
    user: str
    mark: ThreadMark
    upto_seq: int
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class PruneThreads:
    """A retention step of conversations (THREAD_PRUNE), proposed by the
    leader: messages written before ``before_ms`` go, oldest first, at most
    ``max_records``; and invitations that expired before ``invites_before_ms``."""

    before_ms: int
    invites_before_ms: int
    max_records: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Export:
    """The cloud export (EXPORT, hub/state/outbox.py). ``on``: start keeping
    what commits in the outbox (when off), or move the export cursor to
    ``cursor`` and drop the outbox up to it (the leader, after JetStream
    acknowledged it). Not ``on``: stop, and drop the outbox."""

    on: bool
    cursor: int
    at_ms: int


TALK_ENTRIES: Final = (Invite, AcceptInvite, PostMessage, MarkThread, PruneThreads)
TALK_TYPES: Final = frozenset(range(30, 35))
TalkEntry = Invite | AcceptInvite | PostMessage | MarkThread | PruneThreads


def _invite_id(invite_id: str) -> str:
    if not INVITE_ID.fullmatch(invite_id):
        raise EntryError("bad_value", f"invite id {invite_id[:40]!r}")
    return invite_id


def _message_text(text: str) -> str:
    if not text.strip() or len(text.encode()) > MAX_MESSAGE_BYTES:
        raise EntryError("bad_value", f"message of {len(text.encode())} bytes")
    return text


def pack_talk(p: Packer, entry: TalkEntry) -> None:
    if isinstance(entry, Invite):
        p.str8(_invite_id(entry.invite_id)).str8(_user_name(entry.name), "name")
        p.u8(int(entry.role), "role").u16(len(entry.devices), "device count")
        for d in entry.devices:
            p.str8(_device_id(d))
        p.u64(entry.expires_ms, "expires_ms").str8(_nonempty(entry.by, "by"), "by")
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, AcceptInvite):
        if not 1 <= len(entry.password_hash) <= 255:
            raise EntryError("bad_value", "password hash length")
        p.str8(_invite_id(entry.invite_id)).blob8(entry.password_hash).u64(entry.at_ms, "at_ms")
    elif isinstance(entry, PostMessage):
        p.str8(_user_name(entry.user), "user").u8(int(entry.author), "author")
        p.str8(_nonempty(entry.by, "by"), "by").str16(_message_text(entry.text), "text")
        p.u8(1 if entry.escalate else 0).str8(_nonempty(entry.message_id, "message_id"))
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, MarkThread):
        p.str8(_user_name(entry.user), "user").u8(int(entry.mark), "mark")
        p.u64(entry.upto_seq, "upto_seq").str8(_nonempty(entry.by, "by"), "by")
        p.u64(entry.at_ms, "at_ms")
    else:
        if not 1 <= entry.max_records <= MAX_THREAD_PRUNE:
            raise EntryError("bad_value", f"max_records {entry.max_records}")
        p.u64(entry.before_ms, "before_ms").u64(entry.invites_before_ms, "invites_before_ms")
        p.u32(entry.max_records, "max_records").u64(entry.at_ms, "at_ms")


def unpack_talk(kind: EntryType, u: Unpacker) -> Entry:
    if kind is EntryType.INVITE:
        invite_id, name = _invite_id(u.str8()), _user_name(u.str8())
        role = Role(_enum(Role, u.u8(), "role"))
        devices = tuple(_device_id(u.str8()) for _ in range(u.u16()))
        expires, by = u.u64(), _nonempty(u.str8(), "by")
        return Invite(invite_id, name, role, devices, expires, by, u.u64())
    if kind is EntryType.INVITE_ACCEPT:
        invite_id, pw = _invite_id(u.str8()), u.blob8()
        if not pw:
            raise EntryError("bad_value", "empty password hash")
        return AcceptInvite(invite_id, pw, u.u64())
    if kind is EntryType.THREAD_POST:
        user = _user_name(u.str8())
        author = Author(_enum(Author, u.u8(), "author"))
        by, text, flag = _nonempty(u.str8(), "by"), _message_text(u.str16()), u.u8()
        if flag > 1:
            raise EntryError("bad_value", f"escalate flag {flag}")
        message_id = _nonempty(u.str8(), "message_id")
        return PostMessage(user, author, by, text, flag == 1, message_id, u.u64())
    if kind is EntryType.THREAD_MARK:
        user = _user_name(u.str8())
        mark = ThreadMark(_enum(ThreadMark, u.u8(), "mark"))
        upto, by = u.u64(), _nonempty(u.str8(), "by")
        return MarkThread(user, mark, upto, by, u.u64())
    before, invites_before, most = u.u64(), u.u64(), u.u32()
    if not 1 <= most <= MAX_THREAD_PRUNE:
        raise EntryError("bad_value", f"max_records {most}")
    return PruneThreads(before, invites_before, most, u.u64())


@dataclass(frozen=True, slots=True)
class Group:
    """Several entries proposed as one Raft entry (the ingest batcher's unit).
    Parts stay bytes: apply decodes and applies each on its own, so one bad
    part is rejected alone."""

    parts: tuple[bytes, ...]


Entry = (
    Batch
    | RegisterDevice
    | RemoveDevice
    | Presence
    | PutCommand
    | RecordResult
    | MarkCommand
    | PutModel
    | NodeInfo
    | RemoveNode
    | Decision
    | User
    | RemoveUser
    | AckAlert
    | ModelVersion
    | RevokeTokens
    | Prune
    | DrainNode
    | SetPolicy
    | Invite
    | AcceptInvite
    | PostMessage
    | MarkThread
    | PruneThreads
    | Export
    | Group
)

ENTRY_TYPES: Final[dict[type[object], EntryType]] = {
    Batch: EntryType.BATCH,
    RegisterDevice: EntryType.REGISTER_DEVICE,
    RemoveDevice: EntryType.REMOVE_DEVICE,
    Presence: EntryType.PRESENCE,
    PutCommand: EntryType.COMMAND,
    RecordResult: EntryType.COMMAND_RESULT,
    MarkCommand: EntryType.COMMAND_STATE,
    PutModel: EntryType.MODEL_PUT,
    NodeInfo: EntryType.NODE_PUT,
    RemoveNode: EntryType.NODE_REMOVE,
    Decision: EntryType.DECISION,
    User: EntryType.USER_PUT,
    RemoveUser: EntryType.USER_REMOVE,
    AckAlert: EntryType.ALERT_ACK,
    ModelVersion: EntryType.MODEL_VERSION,
    RevokeTokens: EntryType.TOKEN_REVOKE,
    Prune: EntryType.PRUNE,
    DrainNode: EntryType.NODE_DRAIN,
    SetPolicy: EntryType.POLICY_SET,
    Invite: EntryType.INVITE,
    AcceptInvite: EntryType.INVITE_ACCEPT,
    PostMessage: EntryType.THREAD_POST,
    MarkThread: EntryType.THREAD_MARK,
    PruneThreads: EntryType.THREAD_PRUNE,
    Export: EntryType.EXPORT,
    Group: EntryType.GROUP,
}


# -- shared field groups (also used by the store's records) ---------------------------


def pack_device(p: Packer, d: Device) -> None:
    _device_id(d.device_id)
    if not 1 <= len(d.key) <= 64:
        raise EntryError("bad_value", f"key of {len(d.key)} bytes, want 1..64")
    p.str8(d.device_id, "device_id").blob8(d.key, "key")
    if d.limit_w is None:
        p.u8(0).f64(0.0)
    else:
        if not math.isfinite(d.limit_w) or d.limit_w < 0:
            raise EntryError("bad_value", f"limit_w={d.limit_w}")
        p.u8(1).f64(d.limit_w)
    p.str16(d.owner, "owner")
    p.u8(len(d.capabilities), "capability count")
    for cap in d.capabilities:
        p.str8(_nonempty(cap.action, "action"), "action").u8(len(cap.params), "spec count")
        for spec in cap.params:
            if not (math.isfinite(spec.min) and math.isfinite(spec.max)):
                raise EntryError("bad_value", f"bounds of {cap.action}.{spec.name}")
            p.str8(spec.name, "spec name").u8(int(spec.kind), "kind")
            p.f64(spec.min, "min").f64(spec.max, "max")


def unpack_device(u: Unpacker) -> Device:
    device_id = _device_id(u.str8())
    key = u.blob8()
    if not 1 <= len(key) <= 64:
        raise EntryError("bad_value", f"key of {len(key)} bytes, want 1..64")
    has_limit, raw_limit = u.u8(), u.raw(8)
    limit: float = _F64.unpack(raw_limit)[0]
    if has_limit not in (0, 1) or (
        (not math.isfinite(limit) or limit < 0) if has_limit else raw_limit != bytes(8)
    ):
        raise EntryError("bad_value", f"limit_w flag {has_limit} value {limit}")
    owner = u.str16()
    caps = []
    for _ in range(u.u8()):
        action = _nonempty(u.str8(), "action")
        specs = []
        for _ in range(u.u8()):
            name = u.str8()
            kind = m.ParamKind(_enum(m.ParamKind, u.u8(), "kind"))
            lo, hi = u.f64(), u.f64()
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise EntryError("bad_value", f"bounds of {action}.{name}")
            specs.append(m.ParamSpec(name, kind, lo, hi))
        caps.append(m.Capability(action, tuple(specs)))
    return Device(device_id, key, tuple(caps), limit if has_limit else None, owner)


def pack_node_addresses(p: Packer, n: NodeInfo) -> None:
    """raft, broker, http as str8 (the node record without id and time)."""
    p.str8(_address(n.raft, "raft"), "raft").str8(_address(n.broker, "broker"), "broker")
    p.str8(_address(n.http, "http"), "http")


def unpack_node_addresses(u: Unpacker) -> tuple[str, str, str]:
    return _address(u.str8(), "raft"), _address(u.str8(), "broker"), _address(u.str8(), "http")


def pack_params(p: Packer, params: tuple[m.Param, ...]) -> None:
    p.u8(len(params), "param count")
    for prm in params:
        kind = prm.kind
        p.str8(prm.name, "param name").u8(int(kind))
        if kind is m.ParamKind.Int:
            p.i64(int(prm.value), prm.name)
        elif kind is m.ParamKind.Float:
            p.f64(float(prm.value), prm.name)
        elif kind is m.ParamKind.Bool:
            p.u8(int(prm.value))
        else:
            p.str16(str(prm.value), prm.name)


def unpack_params(u: Unpacker) -> tuple[m.Param, ...]:
    params = []
    for _ in range(u.u8()):
        name = u.str8()
        kind = _enum(m.ParamKind, u.u8(), "param kind")
        value: m.ParamValue
        if kind == m.ParamKind.Int:
            value = u.i64()
        elif kind == m.ParamKind.Float:
            value = u.f64()
        elif kind == m.ParamKind.Bool:
            b = u.u8()
            if b > 1:
                raise EntryError("bad_value", f"bool param {name}={b}")
            value = bool(b)
        else:
            value = u.str16()
        params.append(m.Param(name, value))
    return tuple(params)


def pack_put_command(p: Packer, c: PutCommand) -> None:
    p.str8(_nonempty(c.command_id, "command_id"), "command_id")
    p.str8(_device_id(c.device_id), "device_id")
    p.u64(c.term, "term").str8(_nonempty(c.action, "action"), "action")
    p.u64(c.issued_at_ms, "issued_at_ms").u64(c.deadline_ms, "deadline_ms")
    pack_params(p, c.params)


def unpack_put_command(u: Unpacker) -> PutCommand:
    command_id = _nonempty(u.str8(), "command_id")
    device_id = _device_id(u.str8())
    term = u.u64()
    action = _nonempty(u.str8(), "action")
    issued, deadline = u.u64(), u.u64()
    return PutCommand(command_id, device_id, term, action, unpack_params(u), issued, deadline)


# -- encode / decode ------------------------------------------------------------------


def _check_batch(b: Batch) -> None:
    _device_id(b.device_id)
    _nonempty(b.node_id, "node_id")
    if len(b.packed) % READING.size:
        raise EntryError("bad_value", f"packed readings of {len(b.packed)} bytes")
    if b.count and not 1 <= b.first_seq <= _U64_MAX - b.count + 1:
        raise EntryError("bad_value", f"seq range {b.first_seq}+{b.count}")
    if not 0 <= b.base_ts_ms <= _MAX_BASE_TS:
        raise EntryError("bad_value", f"base_ts_ms={b.base_ts_ms}")


def _payload(entry: Entry, p: Packer) -> None:
    if isinstance(entry, Batch):
        _check_batch(entry)
        p.str8(entry.device_id).str8(entry.node_id, "node_id")
        p.u32(entry.boot_epoch, "boot_epoch").u64(entry.first_seq, "first_seq")
        p.u64(entry.base_ts_ms, "base_ts_ms").u64(entry.lost_before, "lost_before")
        p.u16(entry.count, "reading count").raw(entry.packed)
    elif isinstance(entry, RegisterDevice):
        pack_device(p, entry.device)
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, RemoveDevice):
        p.str8(_device_id(entry.device_id)).u64(entry.at_ms, "at_ms")
    elif isinstance(entry, Presence):
        p.str8(_device_id(entry.device_id)).str8(_nonempty(entry.node_id, "node_id"), "node_id")
        p.u8(int(entry.state), "state").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, PutCommand):
        pack_put_command(p, entry)
    elif isinstance(entry, RecordResult):
        r = entry.result
        p.str8(_nonempty(r.command_id, "command_id"), "command_id")
        p.str8(_device_id(r.device_id)).u64(r.seq, "seq")
        p.u8(int(r.status), "status").u8(int(r.reason), "reason").str16(r.detail, "detail")
        p.u64(r.executed_at_ms, "executed_at_ms")
        p.str8(_nonempty(entry.node_id, "node_id"), "node_id").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, MarkCommand):
        if entry.state not in (LedgerState.SENT, LedgerState.EXPIRED):
            raise EntryError("bad_value", f"mark state {entry.state!r}, want SENT or EXPIRED")
        p.str8(_nonempty(entry.command_id, "command_id"), "command_id").u8(int(entry.state))
        p.str8(_nonempty(entry.node_id, "node_id"), "node_id").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, PutModel):
        if len(entry.sha256) != 32:
            raise EntryError("bad_value", f"sha256 of {len(entry.sha256)} bytes")
        p.str8(_nonempty(entry.name, "name"), "name").str8(entry.version, "version")
        p.blob8(entry.sha256).u64(entry.size, "size").str16(entry.source, "source")
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, NodeInfo):
        p.str8(_node_id(entry.node_id), "node_id")
        pack_node_addresses(p, entry)
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, RemoveNode):
        p.str8(_node_id(entry.node_id), "node_id").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, DrainNode):
        p.str8(_node_id(entry.node_id), "node_id").u8(1 if entry.drained else 0)
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, User):
        pack_user(p, entry)
    elif isinstance(entry, RemoveUser):
        p.str8(_user_name(entry.name), "name").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, ModelVersion):
        _check_model_version(entry)
        p.str8(entry.name, "name").str8(entry.version, "version").str8(entry.kind, "kind")
        p.blob8(entry.sha256).u64(entry.size, "size").u32(len(entry.manifest), "manifest")
        p.raw(entry.manifest).blob8(entry.signature).str8(entry.key_id, "key_id")
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, AckAlert):
        if not DECISION_ID.fullmatch(entry.decision_id):
            raise EntryError("bad_value", f"decision id {entry.decision_id!r}")
        p.str8(entry.decision_id, "decision_id").str8(_nonempty(entry.user, "user"), "user")
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, Decision):
        _check_decision(entry)
        p.str8(entry.decision_id, "decision_id").str8(entry.device_id)
        p.u8(int(entry.tier), "tier").u64(entry.at_ms, "at_ms")
        p.str8(entry.command_id, "command_id").u32(len(entry.record), "record length")
        p.raw(entry.record)
    elif isinstance(entry, RevokeTokens):
        _check_revoke(entry)
        p.str8(entry.token_id, "token_id").u64(entry.before_ms, "before_ms")
        p.u64(entry.at_ms, "at_ms")
    elif isinstance(entry, Prune):
        _check_prune(entry)
        p.u64(entry.at_ms, "at_ms").u32(entry.max_records, "max_records")
        p.u16(len(entry.devices), "device count")
        for d in entry.devices:
            p.str8(d.device_id, "device_id").u64(d.raw_before_ms, "raw_before_ms")
            p.u64(d.rollup_before_ms, "rollup_before_ms")
    elif isinstance(entry, SetPolicy):
        _check_policy(entry)
        p.str8(entry.device_class, "device_class").str16(entry.text, "text")
        p.u64(entry.at_ms, "at_ms").str8(entry.by, "by")
    elif isinstance(entry, Export):
        p.u8(1 if entry.on else 0).u64(entry.cursor, "cursor").u64(entry.at_ms, "at_ms")
    elif isinstance(entry, TALK_ENTRIES):
        pack_talk(p, entry)
    else:
        p.u16(len(entry.parts), "part count")
        for part in entry.parts:
            if len(part) >= 2 and part[1] == EntryType.GROUP:
                raise EntryError("nested_group")
            p.u32(len(part), "part length").raw(part)


def _user_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise EntryError("bad_value", f"user name {name!r}")
    return name


def pack_user(p: Packer, user: User) -> None:
    if not 1 <= len(user.password_hash) <= 255:
        raise EntryError("bad_value", "password hash length")
    p.str8(_user_name(user.name), "name").u8(int(user.role), "role")
    p.blob8(user.password_hash, "password_hash").u16(len(user.devices), "device count")
    for d in user.devices:
        p.str8(_device_id(d))
    p.u64(user.at_ms, "at_ms")


def unpack_user(u: Unpacker) -> User:
    name = _user_name(u.str8())
    role = Role(_enum(Role, u.u8(), "role"))
    pw = u.blob8()
    if not pw:
        raise EntryError("bad_value", "empty password hash")
    devices = tuple(_device_id(u.str8()) for _ in range(u.u16()))
    return User(name, role, pw, devices, u.u64())


def _check_model_version(mv: ModelVersion) -> None:
    if not MODEL_NAME.fullmatch(mv.name) or not MODEL_NAME.fullmatch(mv.version):
        raise EntryError("bad_value", f"model {mv.name!r} version {mv.version!r}")
    if mv.kind not in MODEL_KINDS:
        raise EntryError("bad_value", f"model kind {mv.kind!r}, want one of {MODEL_KINDS}")
    if len(mv.sha256) != 32 or len(mv.signature) != 64 or not mv.key_id:
        raise EntryError("bad_value", "sha256 32 bytes, signature 64 bytes and a key id")
    if len(mv.manifest) > MAX_MODEL_MANIFEST:
        raise EntryError("bad_value", f"model manifest of {len(mv.manifest)} bytes")
    try:
        doc = json.loads(mv.manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EntryError("bad_value", "model manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise EntryError("bad_value", "model manifest is not a JSON object")


def _check_decision(d: Decision) -> None:
    if not DECISION_ID.fullmatch(d.decision_id):
        raise EntryError("bad_value", f"decision id {d.decision_id!r}")
    _device_id(d.device_id)
    if d.command_id and not DECISION_ID.fullmatch(d.command_id):
        raise EntryError("bad_value", f"command id {d.command_id!r}")
    if len(d.record) > MAX_DECISION_RECORD:
        raise EntryError("bad_value", f"decision record of {len(d.record)} bytes")
    try:
        doc = json.loads(d.record.decode("utf-8"))
    except UnicodeDecodeError:
        raise EntryError("bad_utf8", "decision record") from None
    except ValueError:
        raise EntryError("bad_value", "decision record is not JSON") from None
    if not isinstance(doc, dict):
        raise EntryError("bad_value", "decision record is not a JSON object")


def encode(entry: Entry) -> bytes:
    """The entry's bytes: version, type, payload."""
    p = Packer().u8(ENTRY_VERSION).u8(ENTRY_TYPES[type(entry)])
    _payload(entry, p)
    return bytes(p)


def group(parts: Iterable[bytes]) -> bytes:
    """One GROUP entry holding already encoded entries."""
    return encode(Group(tuple(parts)))


def peek_type(data: bytes) -> EntryType | None:
    """The entry type byte, if the header is readable and known."""
    if len(data) < 2 or data[0] != ENTRY_VERSION:
        return None
    try:
        return EntryType(data[1])
    except ValueError:
        return None


def _decode_payload(kind: EntryType, u: Unpacker) -> Entry:
    if kind is EntryType.BATCH:
        device_id, node_id = u.str8(), u.str8()
        boot_epoch, first_seq, base_ts, lost_before = u.u32(), u.u64(), u.u64(), u.u64()
        packed = u.raw(u.u16() * READING.size)
        batch = Batch(device_id, node_id, boot_epoch, first_seq, base_ts, packed, lost_before)
        _check_batch(batch)
        return batch
    if kind is EntryType.REGISTER_DEVICE:
        return RegisterDevice(unpack_device(u), u.u64())
    if kind is EntryType.REMOVE_DEVICE:
        return RemoveDevice(_device_id(u.str8()), u.u64())
    if kind is EntryType.PRESENCE:
        device_id, node_id = _device_id(u.str8()), _nonempty(u.str8(), "node_id")
        state = m.LinkState(_enum(m.LinkState, u.u8(), "state"))
        return Presence(device_id, node_id, state, u.u64())
    if kind is EntryType.COMMAND:
        return unpack_put_command(u)
    if kind is EntryType.COMMAND_RESULT:
        command_id = _nonempty(u.str8(), "command_id")
        device_id, seq = _device_id(u.str8()), u.u64()
        status = m.CommandStatus(_enum(m.CommandStatus, u.u8(), "status"))
        reason = m.Reason(_enum(m.Reason, u.u8(), "reason"))
        detail, executed = u.str16(), u.u64()
        result = m.CommandResult(command_id, device_id, seq, status, reason, detail, executed)
        return RecordResult(result, _nonempty(u.str8(), "node_id"), u.u64())
    if kind is EntryType.COMMAND_STATE:
        command_id = _nonempty(u.str8(), "command_id")
        mark = LedgerState(_enum(LedgerState, u.u8(), "state"))
        if mark not in (LedgerState.SENT, LedgerState.EXPIRED):
            raise EntryError("bad_value", f"mark state {mark.name}")
        return MarkCommand(command_id, mark, _nonempty(u.str8(), "node_id"), u.u64())
    if kind is EntryType.MODEL_PUT:
        name, version, sha = _nonempty(u.str8(), "name"), u.str8(), u.blob8()
        if len(sha) != 32:
            raise EntryError("bad_value", f"sha256 of {len(sha)} bytes")
        return PutModel(name, version, sha, u.u64(), u.str16(), u.u64())
    if kind is EntryType.NODE_PUT:
        node_id = _node_id(u.str8())
        raft, broker, http = unpack_node_addresses(u)
        return NodeInfo(node_id, raft, broker, http, u.u64())
    if kind is EntryType.NODE_REMOVE:
        return RemoveNode(_node_id(u.str8()), u.u64())
    if kind is EntryType.NODE_DRAIN:
        node_id, flag = _node_id(u.str8()), u.u8()
        if flag > 1:
            raise EntryError("bad_value", f"drained flag {flag}")
        return DrainNode(node_id, flag == 1, u.u64())
    if kind is EntryType.USER_PUT:
        return unpack_user(u)
    if kind is EntryType.USER_REMOVE:
        return RemoveUser(_user_name(u.str8()), u.u64())
    if kind is EntryType.MODEL_VERSION:
        name, version, mkind, sha, size = u.str8(), u.str8(), u.str8(), u.blob8(), u.u64()
        n = u.u32()
        if n > MAX_MODEL_MANIFEST:
            raise EntryError("bad_value", f"model manifest of {n} bytes")
        manifest = u.raw(n)
        mv = ModelVersion(name, version, mkind, sha, size, manifest, u.blob8(), u.str8(), u.u64())
        _check_model_version(mv)
        return mv
    if kind is EntryType.ALERT_ACK:
        did = u.str8()
        if not DECISION_ID.fullmatch(did):
            raise EntryError("bad_value", f"decision id {did!r}")
        return AckAlert(did, _nonempty(u.str8(), "user"), u.u64())
    if kind is EntryType.DECISION:
        decision_id, device_id = u.str8(), u.str8()
        tier = Tier(_enum(Tier, u.u8(), "tier"))
        at_ms, command_id = u.u64(), u.str8()
        size = u.u32()
        if size > MAX_DECISION_RECORD:
            raise EntryError("bad_value", f"decision record of {size} bytes")
        decision = Decision(decision_id, device_id, tier, at_ms, command_id, u.raw(size))
        _check_decision(decision)
        return decision
    if kind is EntryType.TOKEN_REVOKE:
        rv = RevokeTokens(u.str8(), u.u64(), u.u64())
        _check_revoke(rv)
        return rv
    if kind is EntryType.PRUNE:
        at_ms, most = u.u64(), u.u32()
        devs = tuple(PruneDevice(u.str8(), u.u64(), u.u64()) for _ in range(u.u16()))
        pr = Prune(devs, most, at_ms)
        _check_prune(pr)
        return pr
    if kind is EntryType.POLICY_SET:
        sp = SetPolicy(u.str8(), u.str16(), u.u64(), u.str8())
        _check_policy(sp)
        return sp
    if kind is EntryType.EXPORT:
        flag = u.u8()
        if flag > 1:
            raise EntryError("bad_value", f"export flag {flag}")
        return Export(flag == 1, u.u64(), u.u64())
    if kind in TALK_TYPES:
        return unpack_talk(kind, u)
    parts = []
    for _ in range(u.u16()):
        part = u.raw(u.u32())
        if len(part) >= 2 and part[1] == EntryType.GROUP:
            raise EntryError("nested_group")
        parts.append(part)
    return Group(tuple(parts))


def decode(data: bytes) -> Entry:
    """Parse and check an entry; EntryError says what is wrong."""
    if len(data) < 2:
        raise EntryError("truncated", f"{len(data)} bytes, no header")
    if data[0] != ENTRY_VERSION:
        raise EntryError("bad_version", f"version {data[0]}, want {ENTRY_VERSION}")
    try:
        kind = EntryType(data[1])
    except ValueError:
        raise EntryError("unknown_type", f"type {data[1]}") from None
    u = Unpacker(bytes(data), 2)
    entry = _decode_payload(kind, u)
    u.end()
    return entry
