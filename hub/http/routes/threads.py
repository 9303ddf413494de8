"""Conversations: each user's one thread with the hub (hub/state/threads.py).

GET  /v1/threads/me                  my thread (?after=seq)          any user
POST /v1/threads/me/messages {text, person}   ask; the bot answers   any user
POST /v1/threads/me/read {upto}      I read the replies up to upto   any user
GET  /v1/threads/{user}              a thread: its owner, or an admin
POST /v1/threads/{user}/messages {text}       a private reply         admin
POST /v1/threads/{user}/read {upto}  the admins read it up to upto   admin
POST /v1/threads/{user}/resolve      back to the bot, out of the inbox   admin
GET  /v1/inbox                       threads with a person (?all=true: every thread)  admin

A question first goes to the bot: the answer of ``POST /v1/ask`` (the same
explain call over the same view of what the asker may see: answers come from
the ledger, with the LLM tier for what the rules do not answer, validated).
``person: true`` ("talk to a person"), or a question the bot cannot answer
(explain's method ``none``), moves the thread to the admins' inbox; while it
is there, the bot stays quiet and the admins answer.

Every applied message and mark is a ``thread`` event on ``GET /v1/stream``,
which only the thread's owner and admins receive (routes/stream.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from typing import Any, Final

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from hub.core.clock import wall_ms
from hub.decide import explain
from hub.http.node import Asker
from hub.http.principal import Admin, Principal, Raft, ThisNode, Viewer
from hub.http.replica import commit
from hub.http.routes.ask import StoreView
from hub.link.events import EventBus
from hub.state import entries as e
from hub.state import threads as th
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftNode

router = APIRouter()

HANDOFF: Final = "I cannot answer that from the data; an admin will reply here."
WAITING: Final = "An admin will reply here."
MESSAGE_ID: Final = r"^[A-Za-z0-9._:-]{1,64}$"


class MessageIn(BaseModel):
    text: str = Field(min_length=1, max_length=2000)
    person: bool = False  # "talk to a person"
    message_id: str | None = Field(default=None, pattern=MESSAGE_ID)  # retries


class ReplyIn(BaseModel):
    text: str = Field(min_length=1, max_length=2000)
    message_id: str | None = Field(default=None, pattern=MESSAGE_ID)


class ReadIn(BaseModel):
    upto: int | None = Field(default=None, ge=0, le=2**63 - 1)  # None: the last message


def message_json(m: th.Message) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "author": m.author.name.lower(),
        "by": m.by,
        "at_ms": m.at_ms,
        "escalate": m.escalate,
        "text": m.text,
    }


def thread_json(t: th.ThreadRecord | None, user: str) -> dict[str, Any]:
    if t is None:
        t = th.ThreadRecord(user, th.ThreadState.BOT, 0, 0, 0, 0, 0, 0, 0)
    return {
        "user": t.user,
        "state": t.state.name.lower(),
        "last_seq": t.last_seq,
        "unread": t.user_unread,  # the admins' replies its owner has not read
        "admin_unread": t.admin_unread,  # the owner's messages the admins have not read
        "updated_ms": t.updated_ms,
        "escalated_ms": t.escalated_ms,
    }


def read_thread(r: RaftNode, user: str, after: int = 0, limit: int = th.MAX_PAGE) -> dict[str, Any]:
    def read(txn: Any, dbs: dict[str, Any]) -> dict[str, Any]:
        msgs = th.messages(txn, dbs, user, after, limit)
        return {**thread_json(th.get(txn, dbs, user), user), "messages": msgs}

    out = r.read(lambda s: s.read_tables(read))
    out["messages"] = [message_json(m) for m in out["messages"]]
    return out


def _fit(text: str) -> str:
    """A bot answer cut to what a message holds (at a character boundary)."""
    b = text.encode()
    return (
        text if len(b) <= e.MAX_MESSAGE_BYTES else b[: e.MAX_MESSAGE_BYTES].decode(errors="ignore")
    )


async def _post(r: RaftNode, entry: e.PostMessage) -> int:
    res = await commit(r, e.encode(entry))
    if res.error is not None:
        if res.reason == "unknown_user":
            raise HTTPException(404, f"no user {entry.user!r}")
        raise HTTPException(409, f"{res.reason}: {res.detail}")
    return res.message_seq


def _visible(who: Principal, user: str) -> None:
    """A thread is its owner's and the admins': to anyone else it does not exist."""
    if not e.USER_NAME.fullmatch(user) or (who.role is not e.Role.ADMIN and who.name != user):
        raise HTTPException(404, f"no thread {user[:80]!r}")


@router.get("/v1/threads/me")
async def my_thread(
    who: Viewer, r: Raft, after: int = Query(0, ge=0, le=2**63 - 1)
) -> dict[str, Any]:
    return read_thread(r, who.name, after)


@router.post("/v1/threads/me/messages")
async def ask(body: MessageIn, who: Viewer, r: Raft, node: ThisNode) -> dict[str, Any]:
    """The user's message, then the bot's answer (or the handoff to a person)."""
    now = wall_ms()
    before = r.read(lambda s: s.read_tables(lambda txn, dbs: th.get(txn, dbs, who.name)))
    mid = body.message_id or uuid.uuid4().hex
    msg = e.PostMessage(who.name, e.Author.USER, who.name, body.text, body.person, mid, now)
    seq = await _post(r, msg)
    answer: dict[str, Any] | None = None
    if body.person:
        bot = e.PostMessage(who.name, e.Author.BOT, "bot", WAITING, False, mid + ".bot", wall_ms())
        await _post(r, bot)
    elif before is None or before.state is th.ThreadState.BOT:
        fallback = node.ask_fallback() if isinstance(node, Asker) else None
        got = await asyncio.to_thread(explain.explain, body.text, StoreView(r, who), fallback)
        stuck = got.method == "none"
        text = _fit(f"{got.text} {HANDOFF}" if stuck else got.text)
        bot = e.PostMessage(who.name, e.Author.BOT, "bot", text, stuck, mid + ".bot", wall_ms())
        await _post(r, bot)
        answer = {"method": got.method, "sources": got.sources, "refused": got.refused or None}
    return {**read_thread(r, who.name, seq - 1), "answer": answer}


async def _mark(r: RaftNode, user: str, mark: e.ThreadMark, upto: int | None, by: str) -> None:
    entry = e.MarkThread(user, mark, 2**63 - 1 if upto is None else upto, by, wall_ms())
    res = await commit(r, e.encode(entry))
    if res.error is not None:  # marks are never refused but for bad bytes
        raise HTTPException(409, f"{res.reason}: {res.detail}")


@router.post("/v1/threads/me/read")
async def read_mine(body: ReadIn, who: Viewer, r: Raft) -> dict[str, Any]:
    await _mark(r, who.name, e.ThreadMark.USER_READ, body.upto, who.name)
    return read_thread(r, who.name, 2**63 - 1)


@router.get("/v1/threads/{user}")
async def thread(
    user: str, who: Viewer, r: Raft, after: int = Query(0, ge=0, le=2**63 - 1)
) -> dict[str, Any]:
    _visible(who, user)
    return read_thread(r, user, after)


@router.post("/v1/threads/{user}/messages")
async def reply(user: str, body: ReplyIn, who: Admin, r: Raft) -> dict[str, Any]:
    """An admin's private reply; its owner sees it live on the stream."""
    _visible(who, user)
    mid = body.message_id or uuid.uuid4().hex
    msg = e.PostMessage(user, e.Author.ADMIN, who.name, body.text, False, mid, wall_ms())
    seq = await _post(r, msg)
    return read_thread(r, user, seq - 1)


@router.post("/v1/threads/{user}/read")
async def read_theirs(user: str, body: ReadIn, who: Admin, r: Raft) -> dict[str, Any]:
    _visible(who, user)
    await _mark(r, user, e.ThreadMark.ADMIN_READ, body.upto, who.name)
    return read_thread(r, user, 2**63 - 1)


@router.post("/v1/threads/{user}/resolve")
async def resolve(user: str, who: Admin, r: Raft) -> dict[str, Any]:
    _visible(who, user)
    await _mark(r, user, e.ThreadMark.RESOLVE, 0, who.name)
    return read_thread(r, user, 2**63 - 1)


@router.get("/v1/inbox")
async def inbox(_: Admin, r: Raft, every: bool = Query(False, alias="all")) -> dict[str, Any]:
    """Threads with a person (newest first), each with its unread count and
    last message; ``unread`` is their sum (the dashboard's badge)."""

    def read(txn: Any, dbs: dict[str, Any]) -> list[tuple[th.ThreadRecord, th.Message | None]]:
        out = []
        for t in th.all_threads(txn, dbs):
            if every or t.state is th.ThreadState.PERSON:
                last = th.messages(txn, dbs, t.user, t.last_seq - 1, 1) if t.last_seq else []
                out.append((t, last[0] if last else None))
        return out

    rows = r.read(lambda s: s.read_tables(read))
    rows.sort(key=lambda row: row[0].updated_ms, reverse=True)
    threads = [
        {**thread_json(t, t.user), "last": None if m is None else message_json(m)} for t, m in rows
    ]
    unread = sum(t["admin_unread"] for t in threads if t["state"] == "person")
    return {"unread": unread, "threads": threads}


# -- the live stream ----------------------------------------------------------------

_THREAD_KINDS: Final = (e.EntryType.THREAD_POST, e.EntryType.THREAD_MARK)


def thread_event(raft: RaftNode, res: ApplyResult) -> dict[str, Any] | None:
    """The ``thread`` event of an applied message or mark: ``thread`` names
    the owner (routes/stream.py shows it to the owner and admins only)."""
    if res.type not in _THREAD_KINDS or res.outcome is not Outcome.APPLIED:
        return None

    def read(txn: Any, dbs: dict[str, Any]) -> tuple[th.ThreadRecord | None, list[th.Message]]:
        t = th.get(txn, dbs, res.user)
        seq = res.message_seq
        return t, th.messages(txn, dbs, res.user, seq - 1, 1) if seq else []

    t, msgs = raft.read(lambda s: s.read_tables(read))
    if t is None:
        return None
    event: dict[str, Any] = {"type": "thread", "thread": res.user, **thread_json(t, res.user)}
    event["message"] = message_json(msgs[0]) if msgs else None
    return event


def publish_threads(events: EventBus, raft: RaftNode, results: Iterable[ApplyResult]) -> None:
    """Publish the ``thread`` events of applied entries (the daemon calls it)."""
    for res in results:
        event = thread_event(raft, res)
        if event is not None:
            events.publish(event)
