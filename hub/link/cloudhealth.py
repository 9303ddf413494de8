"""Each node's health up to the cloud (docs/cloud.md "Node health").

Every node with a ``[cloud]`` table, leader or not, publishes a compact
snapshot of its own state every ``EVERY_S``, and at once when what ``watch``
returns changes (its role), on ``aiot.<site>.health.<node>``,
into the site's health stream (``AIOT_HEALTH_<SITE>``, made by ``aiot cloud
add-site``), which keeps the last hour of each node. These are last values,
not a log: they go outside the exactly-once export (a lost one is replaced
by the next), on the node's own link, so a follower or a node that lost
the leader still says how it is. ``aiot cloud sites`` shows the newest of
each node.

    health = CloudHealth(cfg, node_id, snapshot, watch=lambda: raft.is_leader)
    task = asyncio.create_task(health.run())
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import nats

from hub.core.clock import wall_ms
from hub.core.cloudcfg import CloudConfig
from hub.link.cloudlink import close_link, open_link
from protocol import cloud

log = logging.getLogger("aiot.cloud")

EVERY_S: Final = 10.0
WATCH_S: Final = 1.0  # how often ``watch`` is looked at
ACK_S: Final = 5.0  # how long a publish waits for JetStream's ack
ONCE_S: Final = 20.0  # a report (connect and publish) given up after this

Snapshot = Callable[[], tuple[int, dict[str, Any]]]


class CloudHealth:
    def __init__(
        self,
        cfg: CloudConfig,
        node_id: str,
        snapshot: Snapshot,
        watch: Callable[[], object] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.snapshot = snapshot
        self.watch = watch
        self.subject = cloud.subject(cfg.site, "health", node_id)
        self._nc: Any = None
        self.sent = 0
        self.last_error: str | None = None

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"cloud unreachable: {exc or type(exc).__name__}"

    async def run(self) -> None:
        """A report every EVERY_S, and one as soon as ``watch()`` changes (a
        node that became leader says so within a second or two)."""
        seen: object = object()
        due = 0.0
        try:
            while True:
                now = self.watch()
                if now != seen or time.monotonic() >= due:
                    seen, due = now, time.monotonic() + EVERY_S
                    await self.once()
                await asyncio.sleep(WATCH_S)
        finally:
            nc, self._nc = self._nc, None
            if nc is not None:
                await close_link(nc)

    async def once(self) -> bool:
        """Publish one snapshot; False (and the reason kept) when it did not go."""
        try:
            return await asyncio.wait_for(self._once(), ONCE_S)
        except TimeoutError:  # a link stuck on its socket: made again next time
            nc, self._nc = self._nc, None
            if nc is not None:
                await close_link(nc)
            self.last_error = f"no report within {ONCE_S:.0f} s: link dropped"
            return False

    async def _once(self) -> bool:
        try:
            if self._nc is None or self._nc.is_closed:
                name = f"aiot-{self.cfg.site}-{self.node_id}-health"
                self._nc = await open_link(self.cfg, name, self._on_error)
            index, body = self.snapshot()
            payload = cloud.health_payload(
                self.cfg.site, self.node_id, index, {"at_ms": wall_ms(), **body}
            )
            js = self._nc.jetstream(domain=self.cfg.domain)
            await js.publish(self.subject, payload, timeout=ACK_S)
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if why != self.last_error:
                log.warning("cloud health not sent", extra={"reason": why})
            self.last_error = why
            return False
        self.sent += 1
        self.last_error = None
        return True

    def status(self) -> dict[str, Any]:
        return {"sent": self.sent, "error": self.last_error}
