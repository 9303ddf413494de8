"""Conversations (hub/state/threads.py) over real LMDB: messages, the inbox's
unread counts, escalation and resolution, retention steps, replicas agreeing."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state import threads
from hub.state.apply import Outcome
from hub.state.store import Store
from tests.unit.test_invites import MAP, T0, Log

pytestmark = pytest.mark.unit

PW = b"\x01" * 48  # a stored hash; no password is checked here
U, B, A = e.Author.USER, e.Author.BOT, e.Author.ADMIN


def post(user: str, author: e.Author, text: str, at: int, escalate: bool = False) -> e.PostMessage:
    by = {U: user, B: "rules", A: "root"}[author]
    return e.PostMessage(user, author, by, text, escalate, f"m-{user}-{at}-{author}", T0 + at)


def mark(user: str, kind: e.ThreadMark, upto: int) -> e.MarkThread:
    return e.MarkThread(user, kind, upto, "root", T0)


def thread(log: Log, user: str) -> threads.ThreadRecord | None:
    return log.store.read_tables(lambda txn, dbs: threads.get(txn, dbs, user))


def texts(log: Log, user: str) -> list[str]:
    return [
        m.text for m in log.store.read_tables(lambda txn, dbs: threads.messages(txn, dbs, user))
    ]


@pytest.fixture
def log(tmp_path: Path) -> Log:
    log = Log(tmp_path / "s")
    log.apply(e.User("vic", e.Role.VIEWER, PW, (), T0), e.User("val", e.Role.VIEWER, PW, (), T0))
    return log


def test_entries_round_trip_and_refuse_bad_values() -> None:
    for entry in (
        post("vic", U, "why did plug-1 switch off?", 1, escalate=True),
        mark("vic", e.ThreadMark.RESOLVE, 3),
        e.PruneThreads(T0, T0 - 1, 100, T0),
    ):
        assert e.decode(e.encode(entry)) == entry
    for bad in (
        post("vic", U, "", 1),
        post("vic", U, "x" * (e.MAX_MESSAGE_BYTES + 1), 1),
        post("no one!", U, "hi", 1),
        e.PruneThreads(T0, T0, 0, T0),
    ):
        with pytest.raises(e.EntryError):
            e.encode(bad)


def test_a_conversation_and_the_inbox_counts(log: Log) -> None:
    assert log.apply(post("vic", U, "why did plug-1 switch off?", 1)) == [(Outcome.APPLIED, "")]
    log.apply(post("vic", B, "Its power was over the limit.", 2))
    t = thread(log, "vic")
    assert t is not None and t.state is threads.ThreadState.BOT and t.last_seq == 2
    log.apply(post("vic", U, "I want to talk to a person", 3, escalate=True))
    log.apply(post("vic", U, "anyone?", 4))
    t = thread(log, "vic")
    assert t is not None and t.state is threads.ThreadState.PERSON
    assert (t.admin_unread, t.user_unread, t.escalated_ms) == (3, 0, T0 + 3)
    log.apply(mark("vic", e.ThreadMark.ADMIN_READ, 3))  # read up to the third
    assert thread(log, "vic").admin_unread == 1  # type: ignore[union-attr]
    log.apply(post("vic", A, "Hello, I am here.", 5))
    t = thread(log, "vic")
    assert t is not None and (t.admin_unread, t.user_unread, t.admin_read) == (0, 1, 5)
    log.apply(mark("vic", e.ThreadMark.USER_READ, 99))  # past the end: up to the last
    t = thread(log, "vic")
    assert t is not None and (t.user_unread, t.user_read) == (0, 5)
    assert log.apply(mark("vic", e.ThreadMark.USER_READ, 5)) == [(Outcome.UNCHANGED, "")]
    log.apply(mark("vic", e.ThreadMark.RESOLVE, 0))
    assert thread(log, "vic").state is threads.ThreadState.BOT  # type: ignore[union-attr]
    assert texts(log, "vic")[-1] == "Hello, I am here."
    assert thread(log, "val") is None  # another user's thread is their own


def test_retried_posts_unknown_users_and_marks(log: Log) -> None:
    p = post("vic", U, "hello", 1)
    log.apply(p)
    results = log.store.apply([(log.index + 1, e.encode(p))])
    log.index += 1
    assert results[0].outcome is Outcome.UNCHANGED and results[0].message_seq == 1
    assert texts(log, "vic") == ["hello"]
    before = log.store.content_hash()
    assert log.apply(post("nobody", U, "hi", 2)) == [(Outcome.REJECTED, "unknown_user")]
    assert log.apply(mark("val", e.ThreadMark.ADMIN_READ, 1)) == [(Outcome.UNCHANGED, "")]
    assert log.store.content_hash() == before


def test_retention_steps_are_bounded_and_the_same_everywhere(tmp_path: Path) -> None:
    rng = random.Random(7)
    entries: list[e.Entry] = [e.User(n, e.Role.VIEWER, PW, (), T0) for n in ("vic", "val")]
    for i in range(1, 41):
        who = rng.choice(["vic", "val"])
        entries.append(post(who, rng.choice([U, U, A]), f"message {i}", i * 1000))
    # Every message before T0 + 30 s goes, 7 records a step; val's thread is read.
    entries.append(mark("val", e.ThreadMark.ADMIN_READ, 99))
    steps = [e.PruneThreads(T0 + 30_000, 0, 7, T0 + 10**9) for _ in range(6)]
    logs = [Log(tmp_path / n) for n in ("a", "b")]
    removed = []
    for log in logs:
        log.apply(*entries)
        removed.append(
            [
                log.store.apply([(log.index + i + 1, e.encode(s))])[0].removed
                for i, s in enumerate(steps)
            ]
        )
    assert removed[0] == removed[1] and all(n <= 7 + 2 for n in removed[0])
    assert logs[0].store.content_hash() == logs[1].store.content_hash()
    left = texts(logs[0], "vic") + texts(logs[0], "val")
    assert sorted(left, key=lambda s: int(s.split()[1])) == [f"message {i}" for i in range(30, 41)]
    for user in ("vic", "val"):
        t = thread(logs[0], user)
        msgs = logs[0].store.read_tables(lambda txn, dbs, u=user: threads.messages(txn, dbs, u))
        if t is None:
            assert msgs == []
            continue
        after_read = [m for m in msgs if m.seq > t.admin_read and m.author is U]
        assert t.admin_unread == len(after_read)


def test_a_thread_left_empty_goes_and_snapshots_carry_threads(log: Log, tmp_path: Path) -> None:
    log.apply(post("vic", U, "old", 1), post("val", U, "new", 10**6))
    buf = io.BytesIO()
    log.store.snapshot_to(buf)
    buf.seek(0)
    copy = Store(tmp_path / "copy", map_size=MAP)
    copy.restore(buf)
    assert copy.content_hash() == log.store.content_hash()
    (res,) = log.store.apply([(log.index + 1, e.encode(e.PruneThreads(T0 + 10, 0, 100, T0)))])
    assert res.removed == 2  # the message and its thread
    assert thread(log, "vic") is None and texts(log, "val") == ["new"]


def test_the_keepers_step_cuts_at_keep_days() -> None:
    from hub.core.config import ThreadsConfig
    from hub.state.threadkeeper import DAY_MS, INVITE_GRACE_MS, ThreadKeeper

    keeper = ThreadKeeper(None, ThreadsConfig(keep_days=2.5, step_records=50))  # type: ignore[arg-type]
    step = e.decode(keeper.step_entry(T0))
    assert step == e.PruneThreads(T0 - int(2.5 * DAY_MS), T0 - INVITE_GRACE_MS, 50, T0)
