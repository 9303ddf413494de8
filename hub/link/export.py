"""The site's export to the cloud: committed entries into JetStream, exactly once.

The leader exports; any node can become the leader, so everything the
exporter needs to resume lives in two places that survive it: the
replicated export cursor (the last Raft index whose messages JetStream has
stored, committed through Raft after the acks) and the site's stream
itself. ``ExportSource`` is the first: what is waiting after the cursor, in
index order, each entry as the messages that carry it (protocol/cloud.py
says what those look like), and how to move the cursor on.

Exactly once:

- Each message's ``Nats-Msg-Id`` is ``<site>:<index>:<part>/<parts>``:
  JetStream drops a resend within its de-duplication window.
- Each message names the one before it (``Nats-Expected-Last-Msg-Id``; on an
  empty stream ``Nats-Expected-Last-Sequence: 0``): JetStream stores it only
  if the stream's last message is that one. A resend after the window, or a
  second exporter (an old leader that has not yet heard it lost), is
  refused instead of stored twice, and the exporter reads the tail again.
- On taking over, the exporter reads the stream's last message: its id says
  how far the previous leader got, which may be past the cursor (the acks
  came, the cursor commit did not). It resumes after it, mid-entry if need
  be, and commits the cursor up to there.

Messages go out ``window`` at a time without waiting for each ack
(JetStream keeps a connection's publishes in order); an entry counts as
exported when the acks of all its messages are in, and the cursor moves at
most every ``commit_every_s``. Nothing is ever skipped: a refused or
unanswered message stops the step, and the next step starts again from the
stream's tail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from protocol.cloud import MsgId, msg_id, parse_msg_id

EXPECTED_LAST_ID: Final = "Nats-Expected-Last-Msg-Id"
EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"
MSG_ID: Final = "Nats-Msg-Id"
# JetStream's error codes for a failed expectation (ADR-22's publish headers).
WRONG_LAST_ID: Final = 10070
WRONG_LAST_SEQ: Final = 10071


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry waiting to be exported: its Raft index and its messages."""

    index: int
    messages: tuple[Outgoing, ...]
    committed_ms: int = 0  # when it committed, for the export lag


class ExportSource(Protocol):
    def exported(self) -> int:
        """The replicated cursor: the last index whose messages are stored."""

    def pending(self, after: int, limit: int) -> Sequence[PendingEntry]:
        """Up to ``limit`` entries after index ``after``, in index order."""

    async def commit(self, index: int) -> None:
        """Move the replicated cursor to ``index`` (through Raft)."""


class ExportRefused(Exception):
    """JetStream refused a message (another writer, a resend after the window,
    a stream that is gone); the next step starts from the tail again."""


@dataclass
class ExportStats:
    messages: int = 0
    bytes: int = 0
    entries: int = 0
    duplicates: int = 0  # resends JetStream dropped by id
    refusals: int = 0
    resumes: int = 0
    last_index: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Position:
    index: int  # the next entry to publish, from ``part``
    part: int
    last_id: str | None  # the stream's last message id (None: the stream is empty)


class Exporter:
    def __init__(
        self,
        site: str,
        stream: str,
        source: ExportSource,
        *,
        window: int = 64,
        entries_per_step: int = 256,
        ack_timeout_s: float = 10.0,
        commit_every_s: float = 0.2,
    ) -> None:
        self.site = site
        self.stream = stream
        self.source = source
        self.window = window
        self.entries_per_step = entries_per_step
        self.ack_timeout_s = ack_timeout_s
        self.commit_every_s = commit_every_s
        self.stats = ExportStats()
        self._pos: _Position | None = None
        self._committed = 0
        self._last_commit = 0.0

    def reset(self) -> None:
        """Forget the position (leadership lost, connection gone): the next
        step reads the stream's tail again."""
        self._pos = None

    async def resume(self, js: Any) -> _Position:
        """Where to go on: after the stream's last message or the cursor,
        whichever is further."""
        tail = await self._tail(js)
        cursor = self.source.exported()
        self._committed = cursor
        self.stats.resumes += 1
        if tail is None or tail.index <= cursor:
            # Nothing past the cursor reached the stream.
            return _Position(cursor + 1, 0, None if tail is None else str(tail))
        if tail.last:
            await self._commit(tail.index, force=True)
            return _Position(tail.index + 1, 0, str(tail))
        if tail.index - 1 > cursor:  # the entries before it are all stored
            await self._commit(tail.index - 1, force=True)
        return _Position(tail.index, tail.part + 1, str(tail))

    async def _tail(self, js: Any) -> MsgId | None:
        info = await js.stream_info(self.stream)
        if not info.state.messages:
            return None
        msg = await js.get_msg(self.stream, seq=info.state.last_seq)
        raw = (msg.headers or {}).get(MSG_ID)
        if raw is None:
            raise ExportRefused(f"{self.stream}: its last message has no {MSG_ID}")
        found = parse_msg_id(raw)
        if found.site != self.site:
            raise ExportRefused(f"{self.stream}: its last message is from site {found.site}")
        return found

    async def step(self, js: Any) -> int:
        """Publish what waits (one batch of entries); the number of entries exported."""
        if self._pos is None:
            self._pos = await self.resume(js)
        pos = self._pos
        entries = self.source.pending(pos.index - 1, self.entries_per_step)
        if not entries:
            await self._commit(self.stats.last_index)
            return 0
        if entries[0].index != pos.index and pos.part > 0:
            raise ExportRefused(f"entry {pos.index} is no longer pending, yet half exported")
        done = 0
        try:
            done = await self._publish(js, entries, pos)
        finally:
            if done:
                await self._commit(self.stats.last_index)
        return done

    async def _publish(self, js: Any, entries: Sequence[PendingEntry], pos: _Position) -> int:
        last_id, part = pos.last_id, pos.part
        inflight: list[tuple[asyncio.Future[Any], MsgId, int]] = []
        done = 0
        for entry in entries:
            n = len(entry.messages)
            for k in range(part, n):
                mid = msg_id(self.site, entry.index, k, n)
                headers = {MSG_ID: str(mid)}
                if last_id is None:
                    headers[EXPECTED_LAST_SEQ] = "0"
                else:
                    headers[EXPECTED_LAST_ID] = last_id
                out = entry.messages[k]
                fut = await js.publish_async(out.subject, out.payload, headers=headers)
                inflight.append((fut, mid, len(out.payload)))
                last_id = str(mid)
                if len(inflight) >= self.window:
                    done += await self._settle(inflight)
                    inflight = []
            part = 0
        done += await self._settle(inflight)
        return done

    async def _settle(self, inflight: list[tuple[asyncio.Future[Any], MsgId, int]]) -> int:
        """Wait for the acks in order; move the position past each stored one."""
        done = 0
        for fut, mid, size in inflight:
            try:
                ack = await asyncio.wait_for(fut, self.ack_timeout_s)
            except TimeoutError:
                self._drop(inflight)
                raise ExportRefused(f"no ack for {mid} within {self.ack_timeout_s:.0f} s") from None
            except Exception as exc:  # nats.js.errors.APIError and kin
                self._drop(inflight)
                self.stats.refusals += 1
                code = getattr(exc, "err_code", None)
                why = (
                    "another writer or a late resend"
                    if code in (WRONG_LAST_ID, WRONG_LAST_SEQ)
                    else ""
                )
                raise ExportRefused(f"{mid} refused: {exc} {why}".strip()) from None
            if getattr(ack, "duplicate", False):
                self.stats.duplicates += 1
            self.stats.messages += 1
            self.stats.bytes += size
            self._pos = _Position(
                mid.index + 1 if mid.last else mid.index, 0 if mid.last else mid.part + 1, str(mid)
            )
            if mid.last:
                self.stats.entries += 1
                self.stats.last_index = mid.index
                done += 1
        return done

    def _drop(self, inflight: list[tuple[asyncio.Future[Any], MsgId, int]]) -> None:
        for fut, _, _ in inflight:
            fut.cancel()
        self._pos = None  # read the tail again next step

    async def _commit(self, index: int, force: bool = False) -> None:
        now = time.monotonic()
        if index <= self._committed or (
            not force and now - self._last_commit < self.commit_every_s
        ):
            return
        await self.source.commit(index)
        self._committed = index
        self._last_commit = now

    async def flush(self) -> None:
        """Commit the cursor up to what JetStream has stored, now."""
        await self._commit(self.stats.last_index, force=True)


def describe(stats: ExportStats) -> dict[str, Any]:
    """The figures as plain JSON values (for /status and the metrics)."""
    return dict(dataclasses.asdict(stats))
