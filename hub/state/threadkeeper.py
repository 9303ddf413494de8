"""The leader's retention of conversations (hub/state/threads.py).

    keeper = ThreadKeeper(raft, cfg.threads)
    task = asyncio.create_task(keeper.run())

While this node leads, every ``period_s`` it proposes a THREAD_PRUNE step:
messages written more than ``keep_days`` ago go, oldest first, at most
``step_records`` records a step (at once again while a step used its whole
budget), and invitations that expired over a day ago. The cut-offs are the
proposer's clock, in the entry, so every replica deletes the same records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from hub.core.clock import wall_ms
from hub.core.config import ThreadsConfig
from hub.state import entries as e
from hub.state.raft import RaftError, RaftNode

log = logging.getLogger("hub.threads")

TICK_S: Final = 1.0
DAY_MS: Final = 86_400_000
# An expired invitation is refused either way; it is kept a day for the
# answer "expired" rather than "unknown" (and for clocks that disagree).
INVITE_GRACE_MS: Final = DAY_MS


class ThreadKeeper:
    def __init__(
        self, raft: RaftNode, cfg: ThreadsConfig, clock: Callable[[], int] = wall_ms
    ) -> None:
        self._raft = raft
        self._cfg = cfg
        self._clock = clock
        self.steps = 0
        self.removed = 0
        self._last = 0.0
        self._more = False

    def step_entry(self, now_ms: int) -> bytes:
        before = max(0, now_ms - int(self._cfg.keep_days * DAY_MS))
        invites_before = max(0, now_ms - INVITE_GRACE_MS)
        return e.encode(e.PruneThreads(before, invites_before, self._cfg.step_records, now_ms))

    async def step(self) -> int:
        """Propose one step; the records it deleted."""
        (res,) = await self._raft.propose(self.step_entry(self._clock()), timeout=30.0)
        self.steps += 1
        self.removed += res.removed
        if res.removed:
            log.info("conversation retention step removed %d records", res.removed)
        return res.removed

    async def run(self) -> None:
        while True:
            try:
                due = self._more or time.monotonic() - self._last >= self._cfg.period_s
                if due and self._raft.status().is_leader:
                    self._more = await self.step() >= self._cfg.step_records
                    self._last = time.monotonic()
            except RaftError as exc:
                log.info("conversation retention step not proposed: %s", exc)
            except Exception:
                log.exception("conversation retention failed; next try in %.0f s", TICK_S)
            await asyncio.sleep(TICK_S)
