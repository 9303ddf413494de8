"""A proposer for ingest tests that fails as the real one (hub/state/raft.py
RaftNode.propose) does: NotLeader, NotReady and DeadlineExceeded, with or
without the entry committing first when the error says it may have.

Commit is immediate and apply is ``Store.apply`` at the next index, as a
one-node Raft would do after commit. The proposer keeps its own account of
what committed (``committed``), from the entries themselves, so a test can
judge the store's watermark and ingest's acks against it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.state import entries as e
from hub.state.apply import ApplyResult
from hub.state.raft import DeadlineExceeded, NotLeader, NotReady, RaftError
from hub.state.store import Store


@dataclass(frozen=True)
class Failure:
    """One way a proposal fails: the error, and whether the entry committed
    before it was raised (only where the error says it may have)."""

    make: Callable[[], RaftError]
    committed: bool = False

    @property
    def reason(self) -> str:
        return self.make().reason


# Every failure RaftNode.propose raises (its _failure map and its own checks).
FAILURES: tuple[Failure, ...] = (
    Failure(lambda: NotLeader("not_leader", "hub-2", maybe_applied=False)),
    Failure(lambda: NotLeader("discarded", None, maybe_applied=False)),
    Failure(lambda: NotLeader("leader_changed", "hub-3", maybe_applied=True)),
    Failure(lambda: NotLeader("leader_changed", "hub-3", maybe_applied=True), committed=True),
    Failure(lambda: NotLeader("unknown_outcome", None, maybe_applied=True)),
    Failure(lambda: NotLeader("unknown_outcome", None, maybe_applied=True), committed=True),
    Failure(lambda: NotReady("no_leader")),
    Failure(lambda: NotReady("queue_full")),
    Failure(lambda: NotReady("request_denied")),
    Failure(lambda: NotReady("halted", "MapFullError")),
    Failure(lambda: DeadlineExceeded(5.0)),
    Failure(lambda: DeadlineExceeded(5.0), committed=True),
)


@dataclass
class FlakyProposer:
    """``plan`` says what the next proposals do, in order: None commits, a
    Failure fails; past its end every proposal commits."""

    store: Store
    plan: list[Failure | None] = field(default_factory=list)
    proposals: list[bytes] = field(default_factory=list)
    failed: list[tuple[bytes, Failure]] = field(default_factory=list)
    committed: dict[str, set[int]] = field(default_factory=dict)  # device -> seqs

    async def propose(self, entry: bytes) -> tuple[ApplyResult, ...]:
        self.proposals.append(entry)
        step = self.plan.pop(0) if self.plan else None
        await asyncio.sleep(0)  # a proposal always yields, as a real one does
        if step is None or step.committed:
            results = self._commit(entry)
        if step is not None:
            self.failed.append((entry, step))
            raise step.make()
        return results

    def _commit(self, entry: bytes) -> tuple[ApplyResult, ...]:
        results = tuple(self.store.apply([(self.store.applied_index() + 1, entry)]))
        grp = e.decode(entry)
        parts = grp.parts if isinstance(grp, e.Group) else (entry,)
        for part in parts:
            b = e.decode(part)
            if isinstance(b, e.Batch) and self.store.device(b.device_id) is not None:
                seqs = self.committed.setdefault(b.device_id, set())
                seqs.update(range(b.first_seq, b.first_seq + len(b.packed) // 8))
        return results

    def first_hole(self, device_id: str) -> int:
        """The lowest seq not committed for the device (1 when none was)."""
        seqs = self.committed.get(device_id, set())
        hole = 1
        while hole in seqs:
            hole += 1
        return hole
