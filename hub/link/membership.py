"""Membership that devices follow: each device's broker order after a node
joins, leaves or is drained, sent as a signed ``hubs.set`` command.

Every node runs one ``Membership``::

    membership = Membership(node_id, raft, on_drain=hub.drained)
    ... membership.notice(results)      # applied results, on the loop
    task = asyncio.create_task(membership.run())

**Which nodes serve devices.** The node table (``NODE_PUT`` records, which
each node proposes at startup, and ``NODE_REMOVE``) minus the drained nodes
(the ``drains`` table, ``NODE_DRAIN`` entries from ``aiot cluster drain`` /
``undrain``). A device's order is its balanced rendezvous order
(``rendezvous.balanced``, hub/link/rendezvous.py) among the serving nodes,
computed over every registered device in registration order (the time in
its record, then its id), so each serving node is first for a near-equal
share of them. It is sent as the brokers' "host:port,..." (``hubs_text``).
A device that registers between changes is given the first node with the
fewest devices so far (``device_order``), so the shares stay even.

**Noticing a change.** A ``NODE_PUT`` that changes the table (a new node, new
addresses; a restart re-proposes the same record, which changes nothing), a
``NODE_REMOVE`` or a ``NODE_DRAIN`` that applies marks the membership
changed on every node. The leader then reconciles: for every device whose
latest ``hubs.set`` in the ledger (none for a device never reconfigured)
does not carry the order the serving nodes give now, it proposes one
``hubs.set`` command (no deadline: a device that is away gets it when it
comes back). The ledger is the record of what was sent, so the reconcile
is idempotent: run again, by the same leader or a new one, it proposes
nothing for a device whose latest ``hubs.set`` already matches. A follower
keeps the mark, so a leader elected before the old one finished carries on.
A device registered after the last change this node saw got the current
order at registration: while it has no ``hubs.set`` it is skipped (each
node keeps those devices in memory, from the registrations it applies). A
snapshot install marks nothing: a node that learnt a change only from a
snapshot, then leads before the reconcile is done, leaves the devices never
reconfigured on their old lists (they still fail over along them).

Commands go through the ledger like any other: one per device in flight,
delivered by the node holding the device, signed with its key, executed at
most once (edge/executor.py), recorded DONE. ``hubs.set`` is a system
action (``entries.SYSTEM_ACTIONS``): apply accepts it for any device, and the
guard keeps it from every other origin (it is in no device's capabilities).
A device running firmware without the handler answers REJECTED
UNKNOWN_ACTION, final like any refusal, and keeps its old order.

**Draining.** The drained node itself calls ``on_drain(True)`` once it has
applied its drain (and at startup when it is drained): the daemon then
takes the devices' logins out of its broker (new sessions are refused),
and after ``DRAIN_GRACE_S`` drops the sessions still open (devices whose
firmware did not move on its own); each device fails over down its list.
``on_drain(False)`` when it is back: logins return, and the reconcile puts
the node back into the orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import Final

from hub.core.clock import wall_ms
from hub.core.validate import address
from hub.link import rendezvous
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftError, RaftNode
from hub.state.records import LedgerRecord, NodeRecord
from hub.state.store import Store
from protocol import messages as m

log = logging.getLogger("hub.membership")

HUBS_SET: Final = "hubs.set"
# After its drain applies, a node waits this long for its devices to move on
# their own (the hubs.set command) before it drops the sessions left.
DRAIN_GRACE_S: Final = 3.0
_TICK_S: Final = 1.0
_KINDS: Final = (e.EntryType.NODE_PUT, e.EntryType.NODE_REMOVE, e.EntryType.NODE_DRAIN)

OnDrain = Callable[[bool], Awaitable[None]]


def drained(s: Store) -> set[str]:
    """The ids of the drained nodes (the ``drains`` table)."""
    return s.drained()


def serving(s: Store) -> list[NodeRecord]:
    """The node records of the nodes that take devices: not drained."""
    out = drained(s)
    return [n for n in s.nodes() if n.node_id not in out]


def orders(device_ids: Iterable[str], nodes: Sequence[NodeRecord]) -> dict[str, list[NodeRecord]]:
    """Each device's serving nodes in its balanced rendezvous order."""
    by_id = {n.node_id: n for n in nodes}
    return {d: [by_id[i] for i in ids] for d, ids in rendezvous.balanced(device_ids, by_id).items()}


def device_order(s: Store, device_id: str) -> list[NodeRecord]:
    """The serving nodes in the order a device is given when it registers
    (its config): the highest in its rendezvous order among the nodes that
    are first for the fewest devices so far, so that registrations keep the
    shares even between membership changes. Each device registered before
    it counts for the first node of its latest ``hubs.set``, or, without
    one, for the node this same rule gave it (the devices in registration
    order; the k-th goes to a node first for fewer than ``ceil(k / N)``).
    A device with a ``hubs.set`` whose first node serves keeps that node
    first (a config fetched again after a reconcile matches it)."""
    nodes = serving(s)
    if not nodes:
        return []
    by_id = {n.node_id: n for n in nodes}
    by_broker = {hubs_text([n]): n.node_id for n in nodes}
    ids = s.device_ids_registered()
    if device_id not in ids:
        ids.append(device_id)
    load = dict.fromkeys(by_id, 0)
    for k, d in enumerate(ids, start=1):
        ranked = rendezvous.order(d, by_id)
        hubs = latest_hubs(s.commands(d))
        if hubs is not None and hubs.split(",")[0] in by_broker:
            first = by_broker[hubs.split(",")[0]]
        else:
            cap = -(-k // len(by_id))  # ceil(k / N): some node has fewer
            first = next(n for n in ranked if load[n] < cap)
        if d == device_id:
            return [by_id[first], *(by_id[n] for n in ranked if n != first)]
        load[first] += 1
    raise AssertionError("unreachable: the device is in the list")


def hubs_text(nodes: Sequence[NodeRecord]) -> str:
    """The ``hubs`` parameter of a ``hubs.set``: the nodes' brokers, in the
    given order, as "host:port,..."."""
    out = []
    for n in nodes:
        a = address(n.broker)
        out.append(f"[{a.host}]:{a.port}" if ":" in a.host else f"{a.host}:{a.port}")
    return ",".join(out)


def latest_hubs(records: Iterable[LedgerRecord]) -> str | None:
    """The ``hubs`` parameter of the newest ``hubs.set`` among the device's
    commands (in sequence order), or None."""
    last = None
    for rec in records:
        if rec.command.action == HUBS_SET:
            last = next((str(p.value) for p in rec.command.params if p.name == "hubs"), None)
    return last


def plan(s: Store, fresh: Collection[str] = ()) -> list[tuple[str, str]]:
    """(device_id, hubs) for every device whose latest ``hubs.set`` does not
    carry the order the serving nodes give now; nothing while no node serves.
    A device in ``fresh`` (registered since the last change, so its config
    already has the order) is skipped while it has no ``hubs.set``."""
    nodes = serving(s)
    if not nodes:
        return []
    devices = s.device_ids_registered()
    wanted = orders(devices, nodes)
    out = []
    for device_id in devices:
        want = hubs_text(wanted[device_id])
        have = latest_hubs(s.commands(device_id))
        if have != want and not (have is None and device_id in fresh):
            out.append((device_id, want))
    return out


def hubs_command(device_id: str, hubs: str, term: int, now_ms: int) -> e.PutCommand:
    return e.PutCommand(
        secrets.token_hex(8),
        device_id,
        term,
        HUBS_SET,
        (m.Param("hubs", hubs),),
        issued_at_ms=now_ms,
        deadline_ms=0,
    )


class Membership:
    """The leader's reconcile of device orders, and this node's drain state."""

    def __init__(
        self,
        node_id: str,
        raft: RaftNode,
        on_drain: OnDrain | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.node_id = node_id
        self._raft = raft
        self._on_drain = on_drain
        self._clock = clock
        self._wake = asyncio.Event()
        self._changed = False  # a membership change not reconciled by this node
        self._fresh: set[str] = set()  # devices registered since the last change
        self.drained = raft.read(lambda s: node_id in drained(s))
        self.sent = 0  # hubs.set commands this node proposed

    def notice(self, results: Iterable[ApplyResult]) -> None:
        results = list(results)
        if not results:  # a snapshot install: this node's drain may have changed
            self._wake.set()
        for r in results:
            if r.outcome is not Outcome.APPLIED:
                continue
            if r.type is e.EntryType.REGISTER_DEVICE:
                self._fresh.add(r.device_id)
            elif r.type in _KINDS:
                self._changed = True
                self._fresh.clear()
                self._wake.set()

    async def run(self) -> None:
        if self.drained and self._on_drain is not None:
            await self._on_drain(True)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            await self._follow_drain()
            if self._changed and self._raft.status().is_leader:
                try:
                    await self.reconcile()
                except RaftError as exc:
                    log.info("membership reconcile paused: %s", exc, extra={"reason": exc.reason})

    async def _follow_drain(self) -> None:
        now = self._raft.read(lambda s: self.node_id in drained(s))
        if now == self.drained:
            return
        self.drained = now
        log.info("node %s %s", self.node_id, "drained" if now else "back from drain")
        if self._on_drain is not None:
            await self._on_drain(now)

    async def reconcile(self) -> int:
        """Propose a ``hubs.set`` for every device whose order changed; the
        number proposed. The mark is cleared only when all went through."""
        self._changed = False
        fresh = frozenset(self._fresh)
        todo = self._raft.read(lambda s: plan(s, fresh))
        term = self._raft.status().term
        try:
            for device_id, hubs in todo:
                cmd = hubs_command(device_id, hubs, term, self._clock())
                (res,) = await self._raft.propose(e.encode(cmd))
                if res.error is not None:  # removed meanwhile: nothing to do
                    log.info("hubs.set for %s refused: %s", device_id, res.reason)
                    continue
                self.sent += 1
        except BaseException:
            self._changed = True
            raise
        if todo:
            log.info("sent %d devices their new broker order", len(todo))
        return len(todo)
