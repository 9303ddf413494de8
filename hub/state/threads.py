"""Conversations: each API user's one thread with the hub, replicated.

A thread holds the user's questions, the bot's answers (hub/decide/explain.py
through the ask path) and the admins' private replies. It is with the bot
until the user asks for a person or the bot cannot answer (an entry with
``escalate``); then it is in the admins' inbox until an admin resolves it.

Entries (hub/state/entries.py): THREAD_POST (``PostMessage``), THREAD_MARK
(``MarkThread``: read up to a message, or resolved), THREAD_PRUNE
(``PruneThreads``: the leader's retention step). Apply reads only the entry
and the store, as everywhere (hub/state/DESIGN.md "Conversations").

Tables::

    threads        user -> u8 version, u8 state, u64 last_seq, u64 admin_read,
                   u64 user_read, u32 admin_unread, u32 user_unread,
                   u64 updated_ms, u64 escalated_ms
    thread_msgs    user 0x00 u64 seq -> u8 version, u8 author, str8 by,
                   u64 at_ms, u8 escalate, str8 message_id, str16 text
    thread_expiry  u64 at_ms, user 0x00 u64 seq -> empty (oldest first)

``admin_unread`` counts the owner's messages after ``admin_read``;
``user_unread`` the admins' replies after ``user_read`` (the bot's answers come
back with the question, so they are never unread).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from hub.state import entries as e
from hub.state import invites
from hub.state import records as r
from hub.state.errors import Rejected

_THREAD: Final = struct.Struct(">BBQQQIIQQ")
MAX_PAGE: Final = 500


class ThreadState(enum.IntEnum):
    BOT = 0  # the bot answers
    PERSON = 1  # in the admins' inbox


@dataclass(frozen=True, slots=True)
class ThreadRecord:
    user: str
    state: ThreadState
    last_seq: int
    admin_read: int
    user_read: int
    admin_unread: int
    user_unread: int
    updated_ms: int
    escalated_ms: int


@dataclass(frozen=True, slots=True)
class Message:
    seq: int
    author: e.Author
    by: str
    at_ms: int
    escalate: bool
    message_id: str
    text: str


def pack_thread(t: ThreadRecord) -> bytes:
    return _THREAD.pack(
        r.RECORD_VERSION,
        int(t.state),
        t.last_seq,
        t.admin_read,
        t.user_read,
        t.admin_unread,
        t.user_unread,
        t.updated_ms,
        t.escalated_ms,
    )


def unpack_thread(user: str, value: bytes) -> ThreadRecord:
    _, state, *rest = _THREAD.unpack(bytes(value))
    return ThreadRecord(user, ThreadState(state), *rest)


def pack_message(msg: Message) -> bytes:
    p = e.Packer().u8(r.RECORD_VERSION).u8(int(msg.author)).str8(msg.by).u64(msg.at_ms)
    return bytes(p.u8(int(msg.escalate)).str8(msg.message_id).str16(msg.text))


def unpack_message(seq: int, value: bytes) -> Message:
    u = e.Unpacker(bytes(value), 1)
    author, by, at_ms = e.Author(u.u8()), u.str8(), u.u64()
    return Message(seq, author, by, at_ms, bool(u.u8()), u.str8(), u.str16())


def _prefix(user: str) -> bytes:
    return user.encode() + b"\0"  # user names hold no NUL (entries.USER_NAME)


def _expiry_key(at_ms: int, user: str, seq: int) -> bytes:
    return r.U64.pack(at_ms) + _prefix(user) + r.U64.pack(seq)


def _messages(txn: Any, dbs: dict[str, Any], user: str, after: int) -> Iterator[Message]:
    prefix = _prefix(user)
    for k, v in r.scan(txn, dbs["thread_msgs"], prefix, r.dev_key(prefix, after + 1)):
        yield unpack_message(r.seq_of(k), v)


def _count(txn: Any, dbs: dict[str, Any], user: str, after: int, author: e.Author) -> int:
    return sum(1 for m in _messages(txn, dbs, user, after) if m.author is author)


# -- apply (called by hub/state/apply.py in the entry's own transaction) ----------


def apply_post(txn: Any, dbs: dict[str, Any], pm: e.PostMessage) -> tuple[bool, int]:
    """Append the message: (changed, its seq). The owner must be a user."""
    if txn.get(pm.user.encode(), db=dbs["users"]) is None:
        raise Rejected("unknown_user", pm.user)
    old = get(txn, dbs, pm.user)
    if old is not None and old.last_seq:
        last = txn.get(r.dev_key(_prefix(pm.user), old.last_seq), db=dbs["thread_msgs"])
        if last is not None and unpack_message(old.last_seq, last).message_id == pm.message_id:
            return False, old.last_seq  # a retried proposal
    t = old or ThreadRecord(pm.user, ThreadState.BOT, 0, 0, 0, 0, 0, 0, 0)
    seq = t.last_seq + 1
    msg = Message(seq, pm.author, pm.by, pm.at_ms, pm.escalate, pm.message_id, pm.text)
    txn.put(r.dev_key(_prefix(pm.user), seq), pack_message(msg), db=dbs["thread_msgs"])
    txn.put(_expiry_key(pm.at_ms, pm.user, seq), b"", db=dbs["thread_expiry"])
    t = replace(t, last_seq=seq, updated_ms=pm.at_ms)
    if pm.author is e.Author.USER:
        t = replace(t, admin_unread=t.admin_unread + 1)
    elif pm.author is e.Author.ADMIN:  # a reply: the admins have read it all
        t = replace(t, user_unread=t.user_unread + 1, admin_unread=0, admin_read=seq)
    if pm.escalate and t.state is ThreadState.BOT:
        t = replace(t, state=ThreadState.PERSON, escalated_ms=pm.at_ms)
    txn.put(pm.user.encode(), pack_thread(t), db=dbs["threads"])
    return True, seq


def apply_mark(txn: Any, dbs: dict[str, Any], mk: e.MarkThread) -> bool:
    """Read marks and resolution; a thread that does not exist is unchanged."""
    t = get(txn, dbs, mk.user)
    if t is None:
        return False
    upto = min(mk.upto_seq, t.last_seq)
    if mk.mark is e.ThreadMark.ADMIN_READ and upto > t.admin_read:
        n = _count(txn, dbs, mk.user, upto, e.Author.USER)
        new = replace(t, admin_read=upto, admin_unread=n)
    elif mk.mark is e.ThreadMark.USER_READ and upto > t.user_read:
        n = _count(txn, dbs, mk.user, upto, e.Author.ADMIN)
        new = replace(t, user_read=upto, user_unread=n)
    elif mk.mark is e.ThreadMark.RESOLVE and t.state is ThreadState.PERSON:
        new = replace(t, state=ThreadState.BOT, admin_read=t.last_seq, admin_unread=0)
    else:
        return False
    txn.put(mk.user.encode(), pack_thread(new), db=dbs["threads"])
    return True


def apply_prune(txn: Any, dbs: dict[str, Any], pr: e.PruneThreads) -> int:
    """Delete messages written before ``before_ms``, oldest first, at most
    ``max_records``; a thread left empty goes too. The records deleted."""
    cut = r.U64.pack(pr.before_ms)
    gone: list[bytes] = []
    for k, _ in txn.cursor(db=dbs["thread_expiry"]):
        if len(gone) >= pr.max_records or bytes(k[:8]) >= cut:
            break
        gone.append(bytes(k))
    touched: set[str] = set()
    for k in gone:
        txn.delete(k, db=dbs["thread_expiry"])
        txn.delete(k[8:], db=dbs["thread_msgs"])
        touched.add(k[8:-9].decode())
    removed = len(gone)
    for user in sorted(touched):
        removed += _settle(txn, dbs, user)
    # The same step deletes the invitations that expired long ago.
    return removed + invites.prune(
        txn, dbs, pr.invites_before_ms, pr.max_records - min(removed, pr.max_records)
    )


def _settle(txn: Any, dbs: dict[str, Any], user: str) -> int:
    """After messages went: drop an empty thread (1), or recount its unread."""
    t = get(txn, dbs, user)
    if t is None:
        return 0
    if next(_messages(txn, dbs, user, 0), None) is None:
        txn.delete(user.encode(), db=dbs["threads"])
        return 1
    admin = _count(txn, dbs, user, t.admin_read, e.Author.USER)
    mine = _count(txn, dbs, user, t.user_read, e.Author.ADMIN)
    txn.put(
        user.encode(),
        pack_thread(replace(t, admin_unread=admin, user_unread=mine)),
        db=dbs["threads"],
    )
    return 0


# -- reads --------------------------------------------------------------------------


def get(txn: Any, dbs: dict[str, Any], user: str) -> ThreadRecord | None:
    raw = txn.get(user.encode(), db=dbs["threads"])
    return None if raw is None else unpack_thread(user, raw)


def messages(
    txn: Any, dbs: dict[str, Any], user: str, after: int = 0, limit: int = MAX_PAGE
) -> list[Message]:
    """The thread's messages after seq ``after``, oldest first, at most ``limit``."""
    out: list[Message] = []
    for m in _messages(txn, dbs, user, after):
        if len(out) >= limit:
            break
        out.append(m)
    return out


def all_threads(txn: Any, dbs: dict[str, Any]) -> list[ThreadRecord]:
    return [unpack_thread(bytes(k).decode(), v) for k, v in txn.cursor(db=dbs["threads"])]
