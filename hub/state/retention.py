"""The store's housekeeping on one node: how full it is, the alert, and the
leader's retention steps (hub/state/DESIGN.md "Retention and rollups", "A full
store").

    keeper = Housekeeper(node_id, raft, cfg.store, cfg.retention, events.publish)
    ingest = Ingest(..., full=keeper.refusal)    # "" or why ingest refuses now
    task = asyncio.create_task(keeper.run())

Every second ``run`` reads this node's store usage (node-local figures: free
pages depend on this node's readers) and raises or clears the alert. The
leader proposes a PRUNE step every ``period_s``, and at once again while the
last step used its whole budget: each step deletes at most ``step_records``
records, so ingest latency holds while a large backlog of old readings goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from hub.core.clock import wall_ms
from hub.core.config import RetentionConfig, StoreConfig
from hub.state import entries as e
from hub.state import space
from hub.state.raft import RaftError, RaftNode
from hub.state.rollups import DAY_MS
from hub.state.store import Store

log = logging.getLogger("hub.retention")

TICK_S: Final = 1.0


class Housekeeper:
    """Usage, alert and retention of one hub node."""

    def __init__(
        self,
        node_id: str,
        raft: RaftNode,
        store: StoreConfig,
        retention: RetentionConfig,
        publish: Callable[[dict[str, Any]], None],
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.node_id = node_id
        self._raft = raft
        self._cfg = retention
        self._publish = publish
        self._clock = clock
        self.thresholds = space.Thresholds(
            store.alert_at, store.refuse_at, store.min_disk_free_mb << 20
        )
        self.usage: space.StoreUsage | None = None
        self.alert = ""  # why the store alerts now ("": no alert)
        self.refusing = ""  # why ingest refuses now ("": it does not)
        self.alerts = 0  # alerts raised since start
        self.steps = 0  # retention steps this node proposed
        self.removed = 0  # records they deleted (on this node's apply)
        self._last_step = 0.0
        self._more = False  # the last step used its whole budget
        self._offset = 0  # where the next step starts in the device list
        self._wrapped = True  # the last step reached the end of the device list

    def refusal(self) -> str:
        """Why ingest refuses a batch now ("" when it takes it)."""
        return self.refusing

    # -- usage and the alert --

    def refresh(self) -> None:
        """Read this node's usage; raise or clear the alert (any thread)."""
        u = self._raft.read(Store.usage)
        self.usage = u
        refusing = self.thresholds.refuses(u)
        if self._raft.store.waiting and not refusing:
            refusing = f"apply waits for space: {self._raft.store.waiting}"
        alert = refusing or (
            f"store {u.fraction:.0%} full (alert_at {self.thresholds.alert_at:.0%})"
            if self.thresholds.alerts(u)
            else ""
        )
        if refusing and not self.refusing:
            log.critical("store full, ingest refuses: %s", refusing)
        elif self.refusing and not refusing:
            log.warning("store has room again, ingest resumes (%.0f%% used)", 100 * u.fraction)
        self.refusing = refusing
        if alert and alert != self.alert:
            self.alerts += 1
            log.warning("store alert: %s", alert)
            self._event(alert, u)
        elif self.alert and not alert:
            log.info("store alert cleared: %.0f%% used", 100 * u.fraction)
            self._event("", u)
        self.alert = alert

    def _event(self, alert: str, u: space.StoreUsage) -> None:
        self._publish(
            {
                "type": "alert",
                "device_id": "",
                "node": self.node_id,
                "kind": "store",
                "active": bool(alert),
                "reason": alert,
                "used_fraction": round(u.fraction, 4),
            }
        )

    def status(self) -> dict[str, Any]:
        u = self.usage
        return {
            "used_bytes": None if u is None else u.used,
            "file_bytes": None if u is None else u.high,
            "map_bytes": None if u is None else u.map_size,
            "disk_free_bytes": None if u is None else u.disk_free,
            "used_fraction": None if u is None else round(u.fraction, 4),
            "alert": self.alert,
            "refusing": self.refusing,
            "retention_steps": self.steps,
            "retention_removed": self.removed,
        }

    # -- retention --

    def step_entry(self, devices: list[str], now_ms: int) -> bytes | None:
        """The next PRUNE step over ``devices`` (ids in order), or None."""
        if not devices:
            return None
        start = self._offset % len(devices)
        chosen = (devices[start:] + devices[:start])[: e.MAX_PRUNE_DEVICES]
        self._offset = start + len(chosen)
        self._wrapped = self._offset >= len(devices)  # every device had its turn
        rollup_before = max(0, now_ms - int(self._cfg.rollup_days * DAY_MS))
        cuts = []
        for d in chosen:
            days = self._cfg.raw_days_of(d)
            if days <= 0:
                continue  # kept for ever
            raw_before = max(0, now_ms - int(days * DAY_MS))
            cuts.append(e.PruneDevice(d, raw_before, min(rollup_before, raw_before)))
        if not cuts:
            return None
        return e.encode(e.Prune(tuple(cuts), self._cfg.step_records, now_ms))

    async def retention_step(self) -> int:
        """Propose one step (on the leader); the records it deleted here."""
        devices = self._raft.read(lambda s: [d.device_id for d in s.devices()])
        entry = self.step_entry(devices, self._clock())
        if entry is None:
            return 0
        (result,) = await self._raft.propose(entry, timeout=30.0)
        self.steps += 1
        self.removed += result.removed
        if result.removed:
            log.info("retention step removed %d records", result.removed)
        return result.removed

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.refresh)
                if self._due() and self._raft.status().is_leader:
                    removed = await self.retention_step()
                    # More at once: the budget was used up, or devices wait their turn.
                    self._more = removed >= self._cfg.step_records or not self._wrapped
                    self._last_step = time.monotonic()
            except RaftError as exc:
                log.info("retention step not proposed: %s", exc)
            except Exception:
                log.exception("store housekeeping failed; next try in %.0f s", TICK_S)
            await asyncio.sleep(TICK_S)

    def _due(self) -> bool:
        return self._more or time.monotonic() - self._last_step >= self._cfg.period_s
