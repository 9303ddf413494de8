"""The hub daemon: one node of the cluster, wired together.

    aiot hub run --config hub.toml

    hub = Hub(cfg)          # every part built: the replica, the engine, the broker, the API
    async with hub:         # parts started in order, background loops under named tasks
        await stop.wait()
                            # __aexit__: the clean shutdown below

What runs, all in one asyncio loop on the main thread (pysyncobj adds its
own thread; hub/state/raft.py):

    RaftNode         the replicated store (LMDB) behind pysyncobj
    broker           this node's Mosquitto (spawned, supervised, dies with
                     the daemon), an embedded amqtt broker, or an external one
    consumer         aiomqtt on this node's broker (hub/link/consumer.py):
                     aiot/v1/+/up -> Ingest, +/status -> presence, +/ack -> Delivery
    Delivery         commands from the ledger to the devices this node holds
    HTTP API         FastAPI under uvicorn (hub/http/api.py)
    registry watch   regenerates broker credentials and ACL on registry change
    node record      proposes this node's addresses (NODE_PUT) once ready

This module is the only one that knows every part: the HTTP layer and the
metrics read the Hub through the Protocols they declare (hub/http/node.py,
hub/ops/metrics.py), and applied entries reach each part from ``_applied``.

Startup refuses, with one clear line and exit status 2, a bad config file
or a missing cluster secret. SIGTERM or SIGINT shuts down in order: stop
consuming (unsubscribe), finish the messages in hand and the proposals in
flight (their acks still go out), stop the API and delivery, stop Raft
(joins its thread, closes LMDB), stop the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol

from hub.core import auth, keys, logs, tls
from hub.core import config as config_mod
from hub.core.clock import wall_ms
from hub.core.config import ConfigError, HubConfig
from hub.core.fsutil import private_dir
from hub.decide import engine as engine_mod
from hub.decide.engine import DecisionEngine
from hub.decide.registry import ModelRegistry
from hub.http import api
from hub.http.routes import stream, threads
from hub.link.broker import BrokerError, BrokerLimits, BrokerUser, MosquittoSupervisor
from hub.link.cloudhealth import CloudHealth
from hub.link.cloudlink import CloudLink, OutboxSource, keep_export_off
from hub.link.consumer import Consumer, broker_endpoint
from hub.link.delivery import Delivery
from hub.link.events import EventBus
from hub.link.ingest import Ingest, mutation_from_env
from hub.link.limits import DeviceLimits
from hub.link.membership import DRAIN_GRACE_S, Membership
from hub.ops import metrics
from hub.ops.clouddown import CloudDown
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.journal import JournalError
from hub.state.raft import RaftError, RaftNode, SecretError, raft_timing, staggered
from hub.state.retention import Housekeeper
from hub.state.store import Store
from hub.state.threadkeeper import ThreadKeeper
from protocol import messages as m

log = logging.getLogger("aiot.hub")

DRAIN_S: Final = 10.0
# The admin tokens a node mints for its own calls to peers (model blob
# fetches): a fresh one for each call, so a revocation cut-off (`aiot token
# revoke --all-before`) stops only calls already under way.
PEER_TOKEN_TTL_S: Final = 300
_REGISTRY_KINDS: Final = (e.EntryType.REGISTER_DEVICE, e.EntryType.REMOVE_DEVICE)


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Broker(Protocol):
    restarts: int
    reloads: int

    async def start(self, timeout: float = 10.0) -> None: ...
    async def supervise(self) -> None: ...
    def update_users(self, users: Iterable[BrokerUser]) -> None: ...
    def drop_sessions(self) -> None: ...
    async def stop(self, timeout: float = 5.0) -> None: ...
    @property
    def pid(self) -> int | None: ...


class Hub:
    """One hub node, built whole by the constructor and run with ``async with``.

    Build it inside the running loop, on the loop's thread (pysyncobj's thread
    stops with the thread that built the RaftNode). The constructor raises
    StartupError for what the config cannot give (rules, keys, the broker);
    entering starts the broker, the HTTP API and the background tasks, and
    raises StartupError when an address is taken; leaving shuts down cleanly.
    """

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.started_at = time.time()
        self.events = EventBus()
        self._registry_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        private_dir(cfg.data_dir)  # 0700: it holds the store, journal and keys
        self.raft = self._replica(asyncio.get_running_loop())
        try:
            self._build()
        except BaseException:
            self.raft.on_applied = None
            self.raft.close()
            log.info("hub %s stopped", self.node_id)
            raise

    def _replica(self, loop: asyncio.AbstractEventLoop) -> RaftNode:
        cfg = self.cfg
        try:
            raft = RaftNode(
                str(cfg.raft.bind),
                [str(p) for p in cfg.raft.peers],
                cfg.data_dir,
                cfg.raft.secret,
                snapshot_min_entries=staggered(cfg.raft.snapshot_min_entries, cfg.node_id),
                snapshot_format=cfg.raft.snapshot_format,
                timing=raft_timing(cfg.raft),
                durable_journal=cfg.raft.durable_journal,
                map_size=cfg.store.map_size_mb << 20,
            )
        except (SecretError, JournalError) as exc:
            raise StartupError(f"{cfg.source}: raft: {exc}") from None

        def on_applied(results: list[ApplyResult]) -> None:  # pysyncobj's thread
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._applied, results)

        raft.on_applied = on_applied
        # A full map or disk: apply grows the map into its reserve, then waits
        # and retries; it never halts the node (hub/state/DESIGN.md "A full store").
        raft.store.set_full_policy()
        return raft

    def _build(self) -> None:
        cfg, raft = self.cfg, self.raft
        try:
            ruleset, guard = engine_mod.load(cfg.source, cfg.decisions)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        try:
            trusted = keys.trusted(cfg.models.trusted_keys)
        except ValueError as exc:
            raise StartupError(f"{cfg.source}: models.trusted_keys: {exc}") from None
        self.models = ModelRegistry(
            self.node_id,
            raft,
            cfg.models.dir or cfg.data_dir / "models",
            trusted,
            lambda: auth.admin_token(cfg.raft.secret, PEER_TOKEN_TTL_S),  # fresh per fetch
            shipped=cfg.models.shipped_dir / "anomaly" / "anomaly.json",
            peer_tls=tls.client_context(cfg.tls.ca) if cfg.tls.on else None,
        )
        self.engine = DecisionEngine(raft, ruleset, guard, cfg.decisions, models=self.models)
        self.engine.llm = engine_mod.llm_tier(cfg.decisions, cfg.models.shipped_dir)
        if self.engine.llm is not None:
            self.engine.llm.tariff = cfg.tariff  # the local time and tariff period it states
        # /metrics: aiot_decisions_total, the latency histogram, aiot_model_loads_total
        self.engine.on_decision = metrics.observe_decision
        self.models.on_load = metrics.count_model_load
        # Store usage, its alert and the leader's retention steps (hub/state/retention.py).
        self.keeper = Housekeeper(self.node_id, raft, cfg.store, cfg.retention, self.events.publish)
        # The leader's retention steps of conversations and invitations.
        self.thread_keeper = ThreadKeeper(raft, cfg.threads)
        self.ingest = Ingest(
            self.node_id,
            _RegistryView(raft),
            raft,
            cfg.ingest,
            limits=DeviceLimits.of(cfg.broker),
            full=self.keeper.refusal,
        )
        self.consumer = Consumer(self.node_id, broker_endpoint(cfg), raft, self.ingest, self.events)
        self.delivery = Delivery(
            self.node_id, raft, self.consumer.publish, retry_s=cfg.commands.retry_ms / 1000
        )
        self.consumer.on_result = self.delivery.on_result
        # Device orders after membership changes; this node's drain (before
        # the broker: a drained node's broker starts without device logins).
        self.membership = Membership(self.node_id, raft, on_drain=self._drain)
        # The cloud (docs/cloud.md): models down while this node leads, the site's report up.
        self.cloudlink = (
            CloudLink(
                cfg.cloud,
                OutboxSource(raft, cfg.cloud.site),
                self._leads,
                self.node_id,
                publish=self.events.publish,
            )
            if cfg.cloud.on
            else None
        )
        self.cloudhealth = (
            CloudHealth(
                cfg.cloud,
                self.node_id,
                lambda: _health(self),
                watch=lambda: self.raft.status().is_leader,
            )
            if cfg.cloud.on
            else None
        )
        self.clouddown = (
            CloudDown(
                cfg.cloud,
                raft,
                self.models,
                self.node_id,
                export_status=self.cloudlink.status if self.cloudlink is not None else lambda: None,
            )
            if cfg.cloud.on
            else None
        )
        self.broker = self._broker()
        self._http = api.Server(api.make_app(self), cfg.http.bind, cfg.tls)

    def _broker(self) -> Broker | None:
        cfg = self.cfg.broker
        workdir = self.cfg.data_dir / "broker"
        if cfg.mode == "external":
            log.warning(
                "broker mode external: device credentials and ACL are the external broker's job"
            )
            return None
        assert cfg.bind is not None
        limits = BrokerLimits.of(cfg, self.cfg.ingest)
        try:
            if cfg.mode == "mosquitto":
                return MosquittoSupervisor(
                    workdir, cfg.bind, self.broker_users(), limits=limits, tls=self.cfg.tls
                )
            try:
                from hub.link import embedded  # lazy: amqtt loads in embedded mode only
            except ImportError as exc:
                raise StartupError(f"broker mode embedded needs amqtt: {exc}") from None
            broker: Broker = embedded.EmbeddedBroker(
                workdir, cfg.bind, self.broker_users(), limits=limits, tls=self.cfg.tls
            )
            return broker
        except BrokerError as exc:
            raise StartupError(f"{self.cfg.source}: broker: {exc}") from None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        cfg = self.cfg
        log.info(
            "hub %s up: raft %s, broker %s %s, http %s",
            self.node_id,
            cfg.raft.bind,
            cfg.broker.mode,
            cfg.broker.address,
            cfg.http.bind,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.info("hub %s stopping", self.node_id)
        await self._shutdown()

    async def _start(self) -> None:
        self._say_how_secure()
        if self.broker is not None:
            try:
                await self.broker.start()
            except BrokerError as exc:
                raise StartupError(f"{self.cfg.source}: broker: {exc}") from None
        try:
            await self._http.start()
        except OSError as exc:
            raise StartupError(f"{self.cfg.source}: http.bind: {exc}") from None
        spawn = self._tasks.append
        spawn(asyncio.create_task(self.consumer.run(), name="consumer"))
        spawn(asyncio.create_task(self.delivery.run(), name="delivery"))
        spawn(asyncio.create_task(self.membership.run(), name="membership"))
        spawn(asyncio.create_task(self.engine.run(), name="engine"))
        spawn(asyncio.create_task(self.models.run(), name="models"))
        spawn(asyncio.create_task(self._watch_registry(), name="registry"))
        spawn(asyncio.create_task(self._announce(), name="announce"))
        spawn(asyncio.create_task(self.keeper.run(), name="housekeeping"))
        spawn(asyncio.create_task(self.thread_keeper.run(), name="thread-retention"))
        if self.clouddown is not None:
            spawn(asyncio.create_task(self.clouddown.run(), name="cloud-down"))
        if self.cloudhealth is not None:
            spawn(asyncio.create_task(self.cloudhealth.run(), name="cloud-health"))
        if self.cloudlink is not None:
            spawn(asyncio.create_task(self.cloudlink.run(), name="cloud-export"))
        else:
            spawn(asyncio.create_task(keep_export_off(self.raft), name="cloud-export-off"))
        if self.broker is not None:
            spawn(asyncio.create_task(self.broker.supervise(), name="broker"))

    def _say_how_secure(self) -> None:
        cfg = self.cfg
        if not cfg.tls.on:
            log.warning(
                "plain TCP: the HTTP API and the broker's device listener do not use TLS, "
                "so tokens, passwords and readings cross the network in clear; a lab only "
                "(add [tls]: `aiot cluster init` writes it, docs/security.md)"
            )
        elif cfg.broker.mode == "external" and not (cfg.broker.url or "").startswith("mqtts://"):
            log.warning("broker.url %s is plain MQTT: use mqtts:// for TLS", cfg.broker.url)

    async def _shutdown(self) -> None:
        await self.consumer.stop(DRAIN_S)
        await self.ingest.aclose()
        if self.engine.llm is not None:
            with contextlib.suppress(Exception):
                await self.engine.llm.aclose()
        await self._http.stop(5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.raft.on_applied = None
        await asyncio.to_thread(self.raft.close)
        if self.broker is not None:
            await self.broker.stop()
        log.info("hub %s stopped", self.node_id)

    # -- what the API and the metrics read -------------------------------------------

    @property
    def consumer_connected(self) -> bool:
        return self.consumer.connected

    @property
    def statuses(self) -> Mapping[str, tuple[m.DeviceStatus, float]]:
        return self.consumer.statuses

    @property
    def status_rejects(self) -> Mapping[str, int]:
        return self.consumer.status_rejects

    # -- the registry and the broker ---------------------------------------------------

    def broker_users(self) -> list[BrokerUser]:
        secret = self.cfg.raft.secret
        users = [
            BrokerUser(auth.hub_user(self.node_id), auth.hub_password(secret, self.node_id), "hub"),
            BrokerUser(auth.MONITOR_USER, auth.monitor_password(secret), "monitor"),
        ]
        if self.membership.drained:  # drained: no device may log in here
            return users
        for d in self.raft.read(Store.devices):
            if not auth.reserved_name(d.device_id):
                users.append(BrokerUser(d.device_id, auth.device_password(d.key), "device"))
        return users

    async def _watch_registry(self) -> None:
        while True:
            await self._registry_dirty.wait()
            await asyncio.sleep(0.05)  # one reload for a burst of registrations
            self._registry_dirty.clear()
            if self.broker is not None:
                self.broker.update_users(self.broker_users())
                log.info("broker credentials reloaded")

    async def _drain(self, drained: bool) -> None:
        """This node was drained (or is back): device logins leave (return
        to) the broker; once drained, the sessions still open after
        DRAIN_GRACE_S (devices that did not move on their own) are dropped."""
        if self.broker is None:
            return
        self.broker.update_users(self.broker_users())
        if drained:  # in the background: the leader's reconcile must not wait
            self._tasks.append(asyncio.create_task(self._drop_sessions(), name="drain"))

    async def _drop_sessions(self) -> None:
        await asyncio.sleep(DRAIN_GRACE_S)
        if self.membership.drained and self.broker is not None:
            self.broker.drop_sessions()
            log.info("drained: the device sessions left were dropped")

    def _applied(self, results: list[ApplyResult]) -> None:
        """Apply results from pysyncobj's thread, now on the loop."""
        metrics.applied(self, results)
        self.delivery.notice(results)
        self.membership.notice(results)
        self.engine.notice(results)
        self.models.notice(results)
        self.consumer.notice(results)
        if not results or any(
            r.type in _REGISTRY_KINDS and r.outcome is Outcome.APPLIED for r in results
        ):
            self._registry_dirty.set()
        if self.events.listening:
            stream.publish_applied(self.events, self.raft, results)
            threads.publish_threads(self.events, self.raft, results)

    async def _announce(self) -> None:
        """Propose this node's addresses until the cluster has them."""
        raft = self.raft
        info = e.NodeInfo(
            self.node_id,
            str(self.cfg.raft.bind),
            str(self.cfg.broker.address),
            str(self.cfg.http.address),
            wall_ms(),
        )
        while True:
            if raft.is_ready:
                try:
                    (res,) = await raft.propose(e.encode(info))
                    if res.error is None:
                        return
                    log.warning("node record refused: %s", res.reason)
                    return
                except RaftError as exc:
                    log.debug("node record not committed yet: %s", exc)
            await asyncio.sleep(0.5)

    # -- status ------------------------------------------------------------------------

    def _leads(self) -> bool:
        return self.raft.status().is_leader

    def status(self) -> dict[str, Any]:
        """This node's view, for the API and `aiot cluster status`."""
        raft = self.raft.status()

        def connected(s: Store) -> list[str]:
            out = []
            for d in s.devices():
                p = s.presence(d.device_id)
                if p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE:
                    out.append(d.device_id)
            return out

        ingest, delivery, broker = self.ingest, self.delivery, self.broker
        return {
            "node_id": self.node_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "raft": asdict(raft),
            "lag": max(0, raft.commit_index - raft.applied_index),
            "broker": {
                "mode": self.cfg.broker.mode,
                "address": str(self.cfg.broker.address),
                "pid": None if broker is None else broker.pid,
                "restarts": 0 if broker is None else broker.restarts,
                "reloads": 0 if broker is None else broker.reloads,
                "consumer_connected": self.consumer.connected,
                "consumer_sessions": self.consumer.sessions,
            },
            "devices_connected": self.raft.read(connected),
            "drained": self.membership.drained,
            "ingest": {
                "acked": ingest.acked,
                "rejected": dict(ingest.counters),
                "failed": dict(ingest.failures),
            },
            "commands": {
                "published": delivery.published,
                "results": delivery.results,
                "rejected": dict(delivery.rejected),
                "resends": dict(delivery.resends),
            },
            "status_rejected": dict(self.consumer.status_rejects),
            "decisions": self.engine.status(),
            "store": self.keeper.status(),
            "models": self.models.status(),
            "cloud": None
            if self.clouddown is None or self.cloudlink is None
            else {
                "export": self.cloudlink.status(),
                "down": self.clouddown.status(),
                "health": None if self.cloudhealth is None else self.cloudhealth.status(),
            },
        }


def _health(hub: Hub) -> tuple[int, dict[str, Any]]:
    """This node's health for the cloud (hub/link/cloudhealth.py): small,
    what a fleet view needs."""
    raft = hub.raft.status()
    store = hub.keeper.status()
    export = hub.cloudlink.status() if hub.cloudlink is not None else None
    return raft.applied_index, {
        "role": "leader" if raft.is_leader else "follower",
        "ready": raft.ready,
        "halted": raft.halted or None,
        "term": raft.term,
        "commit_index": raft.commit_index,
        "lag": max(0, raft.commit_index - raft.applied_index),
        "uptime_s": round(time.time() - hub.started_at, 1),
        "drained": hub.membership.drained,
        "broker_connected": hub.consumer.connected,
        "store_used_fraction": store["used_fraction"],
        "store_alert": store["alert"] or None,
        "export_lag_s": None if export is None else export["lag_s"],
    }


class _RegistryView:
    """The store through the RaftNode's read lock (never during a snapshot install)."""

    def __init__(self, raft: RaftNode) -> None:
        self._raft = raft

    def device(self, device_id: str) -> e.Device | None:
        return self._raft.read(lambda s: s.device(device_id))

    def progress(self, device_id: str) -> tuple[int, int]:
        return self._raft.read(lambda s: s.progress(device_id))


# -- entry point ---------------------------------------------------------------------


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Generator[None, None, None]:
    sigs = (signal.SIGTERM, signal.SIGINT)
    for sig in sigs:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)


async def serve(cfg: HubConfig) -> None:
    """Run one node until SIGTERM or SIGINT, then shut it down cleanly."""
    stop = asyncio.Event()
    with _signals(asyncio.get_running_loop(), stop):
        async with Hub(cfg):
            await stop.wait()


def main(config_path: Path) -> int:
    """`aiot hub run`: 0 after a clean shutdown, 2 when it cannot start."""
    try:
        mutation_from_env()
    except ValueError as exc:
        print(f"aiot hub: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        cfg = config_mod.load(config_path)
    except ConfigError as exc:
        print(f"aiot hub: {exc}", file=sys.stderr, flush=True)
        return 2
    logs.setup(cfg.log, cfg.node_id)
    try:
        asyncio.run(serve(cfg))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        print(f"aiot hub: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
