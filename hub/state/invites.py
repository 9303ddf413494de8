"""Invitations: one-time links that let a new API user set their own password.

An admin proposes INVITE (hub/state/entries.py ``Invite``): the name, role and
devices of the user to be, when the link expires, and the invitation's id. The
link carries a random token; only the first 16 bytes of its SHA-256 (the id)
are replicated, so a store, a snapshot or a backup does not hold a usable link.

The invited person opens the link and proposes INVITE_ACCEPT with their
password hash. Apply decides, from the entry and the store only:

- unknown id: ``unknown_invite``; used already: ``invite_used`` (unless it is
  the same acceptance again, a retried proposal: ``unchanged``); the entry's
  time (the proposer's clock) at or past the expiry: ``invite_expired``; a
  user of that name exists by now: ``user_exists``;
- otherwise the user is created (as USER_PUT would) and the invitation is
  marked used in the same transaction.

Two acceptances racing on two nodes are two entries in one log: every replica
applies the first and rejects the second, so a link works once on any node.
Expired invitations are deleted by the conversations' retention step
(THREAD_PRUNE, hub/state/threads.py).

Table ``invites``: invite id (32 hex digits, ASCII) -> u8 record version,
str8 name, u8 role, u16 n, n × str8 device, u64 expires_ms, str8 by, u64 at_ms,
u64 used_ms (0: not used).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from hub.state import entries as e
from hub.state import records as r
from hub.state.errors import Rejected

TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, unpadded base64url
MAX_TTL_S: Final = 30 * 86_400
DEFAULT_TTL_S: Final = 72 * 3600


@dataclass(frozen=True, slots=True)
class InviteRecord:
    invite_id: str
    name: str
    role: e.Role
    devices: tuple[str, ...]
    expires_ms: int
    by: str
    at_ms: int
    used_ms: int  # 0: not used yet


def new_token() -> str:
    """A fresh link token (256 random bits)."""
    return secrets.token_urlsafe(32)


def invite_id_of(token: str) -> str:
    """The replicated id of a link token."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def pack(rec: InviteRecord) -> bytes:
    p = e.Packer().u8(r.RECORD_VERSION).str8(rec.name).u8(int(rec.role))
    p.u16(len(rec.devices))
    for d in rec.devices:
        p.str8(d)
    p.u64(rec.expires_ms).str8(rec.by).u64(rec.at_ms).u64(rec.used_ms)
    return bytes(p)


def unpack(invite_id: str, value: bytes) -> InviteRecord:
    u = e.Unpacker(bytes(value), 1)
    name, role = u.str8(), e.Role(u.u8())
    devices = tuple(u.str8() for _ in range(u.u16()))
    return InviteRecord(invite_id, name, role, devices, u.u64(), u.str8(), u.u64(), u.u64())


def _record(inv: e.Invite, used_ms: int = 0) -> InviteRecord:
    return InviteRecord(
        inv.invite_id, inv.name, inv.role, inv.devices, inv.expires_ms, inv.by, inv.at_ms, used_ms
    )


# -- apply (called by hub/state/apply.py in the entry's own transaction) ----------


def apply_invite(txn: Any, dbs: dict[str, Any], inv: e.Invite) -> bool:
    """Store a new invitation; False for the same one again."""
    key = inv.invite_id.encode()
    old = txn.get(key, db=dbs["invites"])
    if old is not None:
        if unpack(inv.invite_id, old) == _record(inv):
            return False
        raise Rejected("invite_exists", inv.invite_id)
    if txn.get(inv.name.encode(), db=dbs["users"]) is not None:
        raise Rejected("user_exists", inv.name)
    txn.put(key, pack(_record(inv)), db=dbs["invites"])
    return True


def apply_accept(txn: Any, dbs: dict[str, Any], acc: e.AcceptInvite) -> tuple[bool, str]:
    """Create the invited user and mark the invitation used: (changed, name)."""
    key = acc.invite_id.encode()
    raw = txn.get(key, db=dbs["invites"])
    if raw is None:
        raise Rejected("unknown_invite", acc.invite_id)
    rec = unpack(acc.invite_id, raw)
    user_raw = txn.get(rec.name.encode(), db=dbs["users"])
    if rec.used_ms:
        if user_raw is not None and r.unpack_user(user_raw).password_hash == acc.password_hash:
            return False, rec.name  # the same acceptance, proposed again
        raise Rejected("invite_used", rec.name)
    if acc.at_ms >= rec.expires_ms:
        raise Rejected("invite_expired", rec.name)
    if user_raw is not None:
        raise Rejected("user_exists", rec.name)
    user = e.User(rec.name, rec.role, acc.password_hash, rec.devices, acc.at_ms)
    txn.put(rec.name.encode(), r.pack_user(user), db=dbs["users"])
    used = InviteRecord(**{**_fields(rec), "used_ms": max(1, acc.at_ms)})
    txn.put(key, pack(used), db=dbs["invites"])
    return True, rec.name


def _fields(rec: InviteRecord) -> dict[str, Any]:
    return {f: getattr(rec, f) for f in InviteRecord.__slots__}


def prune(txn: Any, dbs: dict[str, Any], before_ms: int, budget: int) -> int:
    """Delete invitations that expired before ``before_ms`` (at most
    ``budget``, in key order): the number deleted."""
    gone: list[bytes] = []
    for k, v in txn.cursor(db=dbs["invites"]):
        if len(gone) >= budget:
            break
        if unpack(bytes(k).decode(), v).expires_ms < before_ms:
            gone.append(bytes(k))
    for k in gone:
        txn.delete(k, db=dbs["invites"])
    return len(gone)


# -- reads --------------------------------------------------------------------------


def get(txn: Any, dbs: dict[str, Any], invite_id: str) -> InviteRecord | None:
    raw = txn.get(invite_id.encode(), db=dbs["invites"])
    return None if raw is None else unpack(invite_id, raw)


def all_invites(txn: Any, dbs: dict[str, Any]) -> list[InviteRecord]:
    return [unpack(bytes(k).decode(), v) for k, v in txn.cursor(db=dbs["invites"])]
