"""The site's link to the cloud: while this node leads, export (hub/link/export.py).

Every node runs a ``CloudLink`` when its config has a ``[cloud]`` table
(hub/core/cloudcfg.py); only the Raft leader's exports. It connects to the
cloud's servers (TLS, the cloud's CA pinned, the site's login) or to the
node's own leaf node, and steps the exporter: one batch of entries, then
the next. When the node stops leading, or the link fails, the exporter
forgets its position and the next start reads the stream's tail again. The
site never waits for the cloud: entries wait in the store until they are
exported, however long the cloud is away, and ``status()`` shows how far
behind the export is.

**The lag alert.** Every node with a ``[cloud]`` table, leader or not (the
cursor is replicated), checks the lag once a second: when the oldest entry
not yet exported is older than ``lag_alert_s``, it logs a warning and
publishes an ``alert`` event of kind ``cloud_export`` on its live stream
(the dashboard shows it as a toast), and again, inactive, once the export
has caught up. ``/metrics`` has the same figures (``aiot_cloud_export_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import nats

from hub.core.clock import wall_ms
from hub.core.cloudcfg import CloudConfig
from hub.link.export import Exporter, ExportRefused, ExportSource, Outgoing, PendingEntry
from hub.state import entries as e
from hub.state import outbox
from hub.state.raft import RaftError, RaftNode
from protocol import cloud
from protocol.cloud import stream_name

log = logging.getLogger("aiot.cloud")

CONNECT_S: Final = 10.0  # a first connect gives up after this
IDLE_S: Final = 0.2  # nothing to export: look again after this
# After a failure, then the next: short, so the export resumes within a
# couple of seconds of the cloud's return (a try costs one connect).
RETRY_S: Final = (0.5, 1.0, 2.0)


async def open_link(
    cfg: CloudConfig, name: str, on_error: Callable[[Exception], Awaitable[None]]
) -> Any:
    """A nats-py connection to the cloud (or the node's leaf node): the cloud's
    CA pinned, the site's login; it reconnects by itself once up. A first
    connect gives up after CONNECT_S (nats-py would keep trying)."""
    opts: dict[str, Any] = {
        "servers": list(cfg.servers),
        "name": name,
        "connect_timeout": 5,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "error_cb": on_error,
    }
    if cfg.ca is not None:
        ctx = ssl.create_default_context(cafile=str(cfg.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        opts["tls"] = ctx
    if cfg.login is not None:
        opts["user"], opts["password"] = cfg.login.user, cfg.login.password
    return await asyncio.wait_for(nats.connect(**opts), CONNECT_S)


CLOSE_S: Final = 5.0  # closing a link gives up after this and drops its socket
# One export step (connect, resume, publish a batch, settle its acks, commit
# the cursor) never takes this long on a working link: past it the link is
# dropped and made again. nats-py's client can wait without end on a socket
# (a flush or a drain), and the exporter must not wait with it.
STEP_S: Final = 60.0


async def close_link(nc: Any, timeout: float = CLOSE_S) -> None:
    """Close a nats-py connection, at most ``timeout`` s: a close that hangs on
    a dead socket (a drain that never returns) is cut, and its transport
    aborted, so nothing of the link stays behind."""
    try:
        await asyncio.wait_for(nc.close(), timeout)
    except TimeoutError:
        transport: Any = getattr(nc, "_transport", None)  # nats-py's, no public handle
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        log.warning("cloud link close timed out: socket dropped", extra={"timeout_s": timeout})
    except Exception:  # a broken link: nothing left to close
        pass


LAG_CHECK_S: Final = 1.0  # how often the lag alert is checked

Publish = Callable[[dict[str, Any]], None]


class CloudLink:
    def __init__(
        self,
        cfg: CloudConfig,
        source: ExportSource,
        leading: Callable[[], bool],
        node_id: str,
        publish: Publish | None = None,
    ) -> None:
        self.cfg = cfg
        self.leading = leading
        self.node_id = node_id
        self._publish = publish
        self.lag_alert = ""  # why the lag alert is up ("" while it is not)
        self.lag_alerts = 0  # times it was raised
        self._lag_checked = 0.0
        self.exporter = Exporter(cfg.site, stream_name(cfg.site), source, window=cfg.window)
        self._nc: Any = None
        self._js: Any = None  # the JetStream context of _nc
        self._failures = 0
        self.last_error: str | None = None
        self.last_export_ms: int | None = None
        self.step_s = STEP_S
        self.stuck_steps = 0  # steps cut at step_s (the link dropped and made again)

    async def _connect(self) -> Any:
        return await open_link(self.cfg, f"aiot-{self.cfg.site}-{self.node_id}", self._on_error)

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's report of a failed (re)connect: kept for the status, logged once."""
        why = f"cloud unreachable: {exc or type(exc).__name__}"
        if why != self.last_error:
            log.warning("cloud link error", extra={"reason": why})
        self.last_error = why

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await close_link(nc)

    async def run(self) -> None:
        try:
            while True:
                self._check_lag()
                if not self.leading():
                    self.exporter.reset()
                    await self._close()
                    await asyncio.sleep(IDLE_S)
                    continue
                try:
                    wait = await asyncio.wait_for(self._once(), self.step_s)
                except TimeoutError:
                    self.stuck_steps += 1
                    await self._close()
                    wait = self._failed(f"cloud link stuck for {self.step_s:.0f} s: dropped")
                await asyncio.sleep(wait)
        finally:
            await self._close()

    async def _once(self) -> float:
        """One step; how long to wait before the next."""
        try:
            if self._nc is None or self._nc.is_closed:
                self._nc = await self._connect()
                # One JetStream context per connection: each context subscribes
                # an inbox for its publish acks on first use, never removed.
                self._js = self._nc.jetstream(domain=self.cfg.domain)
                log.info("cloud link up", extra={"servers": list(self.cfg.servers)})
            js = self._js
            source = self.exporter.source
            if isinstance(source, OutboxSource) and not source.switched_on():
                await source.switch(True)  # from the next entry on, the outbox keeps
            done = await self.exporter.step(js)
        except ExportRefused as exc:
            return self._failed(f"export refused: {exc}")
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await self._close()
            return self._failed(f"cloud unreachable: {exc or type(exc).__name__}")
        except RaftError as exc:  # the cursor could not be committed: lost the lead?
            return self._failed(f"raft: {exc}")
        self._failures = 0
        self.last_error = None
        if done:
            self.last_export_ms = int(time.time() * 1000)
            return 0.0
        return IDLE_S

    def _failed(self, why: str) -> float:
        self.exporter.reset()
        wait = RETRY_S[min(self._failures, len(RETRY_S) - 1)]
        self._failures += 1
        if why != self.last_error:
            log.warning("cloud export paused", extra={"reason": why, "retry_s": wait})
        self.last_error = why
        return wait

    def lag(self) -> tuple[int, float]:
        """(the first unexported index, or 0; its age in seconds): read from the
        source, so it holds while the cloud is away too."""
        src = self.exporter.source
        first = src.pending(src.exported(), 1)
        if not first:
            return 0, 0.0
        age = time.time() - first[0].committed_ms / 1000 if first[0].committed_ms else 0.0
        return first[0].index, max(0.0, age)

    def _check_lag(self) -> None:
        """Raise or clear the lag alert (at most once a LAG_CHECK_S)."""
        now = time.monotonic()
        if now - self._lag_checked < LAG_CHECK_S:
            return
        self._lag_checked = now
        try:
            index, lag_s = self.lag()
        except RaftError:  # a halted or closing store: keep the last state
            return
        alert = (
            f"cloud export {lag_s:.0f} s behind (lag_alert_s {self.cfg.lag_alert_s})"
            if lag_s > self.cfg.lag_alert_s
            else ""
        )
        if bool(alert) == bool(self.lag_alert):  # no change (the text follows the lag)
            self.lag_alert = alert
            return
        if alert:
            self.lag_alerts += 1
            log.warning("cloud export alert: %s", alert, extra={"first_unexported": index})
        else:
            log.info("cloud export alert cleared: caught up")
        self.lag_alert = alert
        if self._publish is not None:
            self._publish(
                {
                    "type": "alert",
                    "device_id": "",
                    "node": self.node_id,
                    "kind": "cloud_export",
                    "active": bool(alert),
                    "reason": alert,
                    "lag_s": round(lag_s, 3),
                    "first_unexported_index": index,
                }
            )

    def _switched_on(self) -> bool:
        """Whether the site keeps what it commits for the cloud (the outbox)."""
        src = self.exporter.source
        return not isinstance(src, OutboxSource) or src.switched_on()

    def status(self) -> dict[str, Any]:
        s = self.exporter.stats
        waiting, lag_s = self.lag()
        return {
            "site": self.cfg.site,
            "on": self._switched_on(),
            "exporting": self.leading(),
            "connected": self._nc is not None and bool(self._nc.is_connected),
            "exported_index": s.last_index,
            "first_unexported_index": waiting,
            "lag_s": round(lag_s, 3),
            "messages": s.messages,
            "bytes": s.bytes,
            "duplicates": s.duplicates,
            "refusals": s.refusals,
            "last_export_ms": self.last_export_ms,
            "error": self.last_error,
            "lagging": lag_s > self.cfg.lag_alert_s,
            "lag_alert_s": self.cfg.lag_alert_s,
            "alert": self.lag_alert,
            "alerts": self.lag_alerts,
            "stuck_steps": self.stuck_steps,
        }


class OutboxSource:
    """The exporter's source on a hub: the replicated outbox and cursor
    (hub/state/outbox.py), read from this node's store, moved through Raft."""

    def __init__(self, raft: RaftNode, site: str) -> None:
        self.raft = raft
        self.site = site

    def exported(self) -> int:
        return self.raft.read(lambda s: s.export_cursor()) or 0

    def switched_on(self) -> bool:
        return self.raft.read(lambda s: s.export_cursor()) is not None

    def pending(self, after: int, limit: int) -> Sequence[PendingEntry]:
        records = self.raft.read(lambda s: s.outbox(after, limit))
        out: list[PendingEntry] = []
        for index, group in itertools.groupby(records, key=lambda x: x[0]):
            messages: list[Outgoing] = []
            newest = 0
            for _, _, value in group:
                found, at = _messages(self.site, index, value)
                messages += found
                newest = max(newest, at)
            if messages:
                out.append(PendingEntry(index, tuple(messages), newest))
        return out

    async def commit(self, index: int) -> None:
        await self.raft.propose(e.encode(e.Export(True, index, wall_ms())), timeout=10.0)

    async def switch(self, on: bool) -> int:
        """Turn the export on or off; the outbox records still to drop."""
        (res,) = await self.raft.propose(e.encode(e.Export(on, 0, wall_ms())), timeout=10.0)
        return res.removed


def _messages(site: str, index: int, value: bytes) -> tuple[list[Outgoing], int]:
    """The messages of one outbox record, and the newest time in it (ms)."""
    out: list[Outgoing] = []
    if outbox.kind_of(value) == outbox.EVENTS:
        device_id, events = outbox.decode_events(value)
        newest = 0
        for kind, body in events:
            payload = cloud.event_payload(site, index, kind, {"device": device_id, **body})
            out.append(Outgoing(cloud.subject(site, kind, device_id), payload))
            newest = max(newest, int(body.get("at_ms") or 0))
        return out, newest
    record, device, rows = outbox.decode(value)
    if record != outbox.READINGS or not rows:
        return out, 0
    subject = cloud.subject(site, "readings", device)
    for payload in cloud.readings_payloads(site, index, device, rows):
        out.append(Outgoing(subject, payload))
    return out, max(row[1] for row in rows)


async def keep_export_off(raft: RaftNode, every_s: float = 10.0) -> None:
    """On a node without ``[cloud]``: while it leads and the export is on (a
    table removed from the config), switch it off and drop the outbox."""
    while True:
        await asyncio.sleep(every_s)
        try:
            if raft.status().is_leader and raft.read(lambda s: s.export_cursor()) is not None:
                log.info("no [cloud] table: switching the export off")
                while await OutboxSource(raft, "x").switch(False) > 0:
                    pass
        except RaftError as exc:
            log.warning("export switch-off failed", extra={"reason": str(exc)})
