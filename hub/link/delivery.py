"""Command delivery: from the replicated ledger to the device, and back.

Every node runs one ``Delivery``. It delivers only the commands of devices
whose replicated presence names this node (the node whose broker holds the
device's session), so exactly one node sends at a time, and a device that
moves to another hub gets its pending commands from the new one::

    delivery = Delivery(node_id, raft, publish, retry_s=2.0)
    raft.on_applied = ...  # hand results to delivery.notice() on the loop
    task = asyncio.create_task(delivery.run())
    ...
    await delivery.on_result(device_id, payload)   # from aiot/v1/<id>/ack

Per device, one command is in flight: the open command with the lowest
sequence number. The device's executor (edge/executor.py) refuses a sequence
number at or below the last one it consumed, so sending a later command
first would make the earlier one a duplicate. The command is published,
signed with the device's key, to ``aiot/v1/<id>/down`` and resent every
``retry_s`` until the ledger holds a final state; the device answers a
redelivery with its stored answer and never runs a command twice.

The first publication is recorded as SENT. A deadline that passes without a
final result is recorded as EXPIRED by the leader (one proposer; the store
refuses EXPIRED before the deadline). A device result is proposed as a
RecordResult, whichever node receives it; the store keeps the first final
answer. REJECTED BUSY (the device has no clock yet) is not final on the
device, so it is not recorded either: the command is resent.

The command's term is a fencing token: the device refuses a term below the
highest it has seen (STALE_TERM). The API stamps the proposing node's view
of the term, which can be old on a node that has just rejoined after a
partition, although the command then commits in the new term. A committed
command is therefore sent with at least the delivering node's current term,
and REJECTED STALE_TERM, which the device does not consume either, is not
recorded: the command is resent once this node knows the newer term.

State lives in the ledger only; a restarted node or a new leader rebuilds
the open set from the store and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Final

from hub.core.clock import wall_ms
from hub.state import entries as e
from hub.state.apply import MAX_PROGRESS, ApplyResult
from hub.state.raft import RaftError, RaftNode
from hub.state.records import LedgerRecord
from hub.state.store import Store
from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError

log = logging.getLogger("hub.delivery")

Publish = Callable[[str, bytes], Awaitable[None]]
_COMMAND_KINDS: Final = (
    e.EntryType.COMMAND,
    e.EntryType.COMMAND_RESULT,
    e.EntryType.COMMAND_STATE,
)
_TICK_S: Final = 0.2
# Refusals the device does not consume: not recorded, the command is resent.
_RESEND: Final = (m.Reason.BUSY, m.Reason.STALE_TERM)


def _stale(res: m.CommandResult, s: Store) -> str:
    """Why the device's answer cannot change the ledger as this node has it
    ("" when it may): checked before proposing, so a replayed or repeated
    answer costs no Raft entry. It errs on the side of proposing; apply
    (hub/state/apply.py ``_command_result``) has the last word. A node that
    lags refuses an answer it does not know yet: the command is redelivered
    and the device answers again."""
    rec = s.command(res.command_id)
    if rec is None:
        return "unknown_command"
    c = rec.command
    if res.device_id != c.device_id:
        return "wrong_device"
    if res.seq != c.seq:
        return "wrong_seq"
    if res.status is not m.CommandStatus.ACCEPTED:
        return "stale" if rec.result is not None else ""
    if rec.state is e.LedgerState.PENDING:
        return ""
    seen = [h.detail for h in rec.history if h.detail]
    news = res.detail and res.detail not in seen and len(seen) < MAX_PROGRESS
    return "" if not rec.state.final and news else "stale"


class Delivery:
    def __init__(
        self,
        node_id: str,
        raft: RaftNode,
        publish: Publish,
        retry_s: float = 2.0,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self._open: set[str] = set()  # commands this node may still have to publish
        self.node_id = node_id
        self._raft = raft
        self._publish = publish
        self._retry_s = retry_s
        self._clock = clock
        self._sent_at: dict[str, float] = {}  # command id -> time.monotonic() of last publish
        self._marked: set[str] = set()  # SENT proposed by this node
        self._wake = asyncio.Event()
        self._rebuild = True
        self.published = 0
        self.results = 0
        self.rejected: dict[str, int] = {}
        self.resends: dict[str, int] = {}  # refusals answered by resending, by reason

    # -- inputs ------------------------------------------------------------------------

    def notice(self, results: Iterable[ApplyResult]) -> None:
        """Applied results, on the event loop. An empty batch (a snapshot
        install) means anything may have changed: rebuild from the store."""
        results = list(results)
        if not results:
            self._rebuild = True
        for r in results:
            if r.type in _COMMAND_KINDS and r.command_id:
                self._open.add(r.command_id)  # run() drops it once final
            elif r.type in (e.EntryType.PRESENCE, e.EntryType.REMOVE_DEVICE):
                pass
            else:
                continue
            self._wake.set()

    async def on_result(self, device_id: str, payload: bytes) -> None:
        """A message on ``aiot/v1/<device_id>/ack``: propose the device's answer."""
        device = self._raft.read(lambda s: s.device(device_id))
        if device is None:
            self._reject("unknown_device", device_id)
            return
        try:
            msg = wire.decode_frame(payload, device.key)
        except CodecError as exc:
            self._reject("bad_frame", device_id, exc.reason)
            return
        if not isinstance(msg, m.CommandResult) or msg.device_id != device_id:
            self._reject("topic_mismatch", device_id, type(msg).__name__)
            return
        stale = self._raft.read(partial(_stale, msg))
        if stale:
            self._reject(stale, device_id, msg.command_id)
            return
        if msg.status is m.CommandStatus.REJECTED and msg.reason in _RESEND:
            reason = msg.reason.name.lower()
            log.info(
                "command %s refused by %s (%s): resending later",
                msg.command_id,
                device_id,
                msg.detail or reason,
                extra={"device": device_id, "command_id": msg.command_id, "reason": reason},
            )
            self.resends[reason] = self.resends.get(reason, 0) + 1
            return
        entry = e.encode(e.RecordResult(msg, self.node_id, self._clock()))
        try:
            (res,) = await self._raft.propose(entry)
        except RaftError as exc:
            log.warning(
                "command result not recorded device=%s reason=%s",
                device_id,
                exc.reason,
                extra={"device": device_id, "command_id": msg.command_id, "reason": exc.reason},
            )
            return  # the device answers the next redelivery again
        self.results += 1
        if res.error is not None:
            self._reject(res.reason, device_id, res.detail)

    def _reject(self, reason: str, device_id: str, detail: str = "") -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.log(
            logging.INFO if reason == "stale" else logging.WARNING,
            "command result rejected device=%s reason=%s %s",
            device_id,
            reason,
            detail,
            extra={"device": device_id, "reason": reason},
        )

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
            except RaftError as exc:
                log.info("command delivery paused: %s", exc, extra={"reason": exc.reason})
                await asyncio.sleep(0.5)

    def _load_open(self) -> set[str]:
        def scan(s: Store) -> set[str]:
            return {
                rec.command.command_id
                for d in s.devices()
                for rec in s.commands(d.device_id)
                if not rec.state.final
            }

        return self._raft.read(scan)

    async def tick(self) -> None:
        if self._rebuild:
            self._rebuild = False
            self._open |= self._load_open()
        if not self._open:
            return
        now_ms = self._clock()
        is_leader = self._raft.status().is_leader
        first: dict[str, LedgerRecord] = {}
        for cid in list(self._open):
            rec = self._raft.read(partial(Store.command, command_id=cid))
            if rec is None or rec.state.final:
                self._forget(cid)
                continue
            c = rec.command
            if c.deadline_ms and now_ms >= c.deadline_ms:
                if is_leader:
                    await self._expire(c, now_ms)
                continue
            best = first.get(c.device_id)
            if best is None or c.seq < best.command.seq:
                first[c.device_id] = rec
        for device_id, rec in first.items():
            await self._deliver(device_id, rec)

    def _forget(self, cid: str) -> None:
        self._open.discard(cid)
        self._sent_at.pop(cid, None)
        self._marked.discard(cid)

    async def _expire(self, c: m.Command, now_ms: int) -> None:
        mark = e.MarkCommand(c.command_id, e.LedgerState.EXPIRED, self.node_id, now_ms)
        (res,) = await self._raft.propose(e.encode(mark))
        if res.error is None:
            log.info(
                "command %s for %s expired",
                c.command_id,
                c.device_id,
                extra={"device": c.device_id, "command_id": c.command_id, "reason": "expired"},
            )

    async def _deliver(self, device_id: str, rec: LedgerRecord) -> None:
        def where(s: Store) -> tuple[e.Device | None, bool]:
            p = s.presence(device_id)
            here = p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE
            return s.device(device_id), here

        device, here = self._raft.read(where)
        c = rec.command
        if device is None or not here:
            return
        last = self._sent_at.get(c.command_id)
        if last is not None and time.monotonic() - last < self._retry_s:
            return
        term = self._raft.status().term
        if term > c.term:  # committed: fenced by the term it is delivered in
            c = dataclasses.replace(c, term=term)
        frame = wire.seal(wire.encode(c), device.key)
        await self._publish(topics.topic(device_id, "down"), frame)
        self._sent_at[c.command_id] = time.monotonic()
        self.published += 1
        if rec.state is e.LedgerState.PENDING and c.command_id not in self._marked:
            self._marked.add(c.command_id)
            mark = e.MarkCommand(c.command_id, e.LedgerState.SENT, self.node_id, self._clock())
            await self._raft.propose(e.encode(mark))
