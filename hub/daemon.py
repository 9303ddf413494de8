"""The hub daemon: one node of the cluster, wired together.

    aiot hub run --config hub.toml

What runs, all in one asyncio loop on the main thread (pysyncobj adds its
own thread; hub/state/raft.py):

    RaftNode         the replicated store (LMDB) behind pysyncobj
    broker           this node's Mosquitto (spawned, supervised, dies with
                     the daemon), an embedded amqtt broker, or an external one
    consumer         aiomqtt on this node's broker: aiot/v1/+/up -> Ingest,
                     +/status -> presence, +/ack -> command results
    Delivery         commands from the ledger to the devices this node holds
    HTTP API         FastAPI under uvicorn (hub/http/api.py)
    registry watch   regenerates broker credentials and ACL on registry change
    node record      proposes this node's addresses (NODE_PUT) once ready

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
from collections.abc import Generator, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final, Protocol

import aiomqtt

from hub.core import auth, keys
from hub.core.clock import wall_ms
from hub.core.config import ConfigError, HubConfig
from hub.decide.engine import DecisionEngine
from hub.decide.registry import ModelRegistry
from hub.link.broker import BrokerError, BrokerUser, MosquittoSupervisor
from hub.link.delivery import Delivery
from hub.link.events import EventBus
from hub.link.ingest import Ingest, Status
from hub.ops import metrics
from hub.state import entries as e
from hub.state.raft import RaftError, RaftNode, SecretError, raft_timing, staggered
from hub.state.store import ApplyResult, Outcome, Store
from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError

log = logging.getLogger("aiot.hub")

MAX_IN_HAND: Final = 512  # messages being handled at once (backpressure on the broker)
DRAIN_S: Final = 10.0
_REGISTRY_KINDS: Final = (e.EntryType.REGISTER_DEVICE, e.EntryType.REMOVE_DEVICE)


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Broker(Protocol):
    restarts: int
    reloads: int

    async def start(self, timeout: float = 10.0) -> None: ...
    async def supervise(self) -> None: ...
    def update_users(self, users: Iterable[BrokerUser]) -> None: ...
    async def stop(self, timeout: float = 5.0) -> None: ...
    @property
    def pid(self) -> int | None: ...


class Hub:
    """One hub node. ``await hub.run(stop)`` returns after a clean shutdown."""

    def __init__(self, cfg: HubConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.started_at = time.time()
        self.raft: RaftNode | None = None
        self.broker: Broker | None = None
        self.ingest: Ingest | None = None
        self.delivery: Delivery | None = None
        self.engine: DecisionEngine | None = None
        self.models: ModelRegistry | None = None
        self.client: aiomqtt.Client | None = None
        self.consumer_connected = False
        self.statuses: dict[str, tuple[m.DeviceStatus, float]] = {}  # last status, time
        self.status_rejects: dict[str, int] = {}
        self._here: dict[str, bool] = {}  # device -> presence names this node (cache)
        self._in_hand: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_HAND)
        self._draining = False
        self._registry_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: Any = None
        self.events = EventBus()

    # -- lifecycle -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        try:
            raft = RaftNode(
                str(cfg.raft.bind),
                [str(p) for p in cfg.raft.peers],
                cfg.data_dir,
                cfg.raft.secret,
                snapshot_min_entries=staggered(cfg.raft.snapshot_min_entries, cfg.node_id),
                snapshot_format=cfg.raft.snapshot_format,
                timing=raft_timing(cfg.raft),
            )
        except SecretError as exc:
            raise StartupError(f"{cfg.source}: raft: {exc}") from None
        self.raft = raft

        def on_applied(results: list[ApplyResult]) -> None:  # pysyncobj's thread
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._applied, results)

        raft.on_applied = on_applied
        try:
            await self._start(raft)
            log.info(
                "hub %s up: raft %s, broker %s %s, http %s",
                self.node_id,
                cfg.raft.bind,
                cfg.broker.mode,
                cfg.broker.address,
                cfg.http.bind,
            )
            await stop.wait()
            log.info("hub %s stopping", self.node_id)
        finally:
            await self._shutdown()

    async def _start(self, raft: RaftNode) -> None:
        cfg = self.cfg
        from hub.decide import engine as engine_mod

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
            auth.admin_token(cfg.raft.secret),
        )
        self.engine = engine_mod.DecisionEngine(
            raft, ruleset, guard, cfg.decisions, models=self.models
        )
        self.engine.llm = engine_mod.llm_tier(cfg.decisions)
        # /metrics: aiot_decisions_total, the latency histogram, aiot_model_loads_total
        self.engine.on_decision = metrics.observe_decision
        self.models.on_load = metrics.count_model_load
        self.ingest = Ingest(self.node_id, _RegistryView(raft), raft, cfg.ingest)
        self.delivery = Delivery(
            self.node_id, raft, self._publish, retry_s=cfg.commands.retry_ms / 1000
        )
        self.broker = await self._start_broker()
        from hub.http.api import start_http  # FastAPI is imported only by the daemon

        try:
            self._http = await start_http(self)
        except OSError as exc:
            raise StartupError(f"{self.cfg.source}: http.bind: {exc}") from None
        spawn = self._tasks.append
        spawn(asyncio.create_task(self._consume(), name="consumer"))
        spawn(asyncio.create_task(self.delivery.run(), name="delivery"))
        spawn(asyncio.create_task(self.engine.run(), name="engine"))
        spawn(asyncio.create_task(self.models.run(), name="models"))
        spawn(asyncio.create_task(self._watch_registry(), name="registry"))
        spawn(asyncio.create_task(self._announce(), name="announce"))
        if self.broker is not None:
            spawn(asyncio.create_task(self.broker.supervise(), name="broker"))

    async def _start_broker(self) -> Broker | None:
        cfg = self.cfg.broker
        workdir = self.cfg.data_dir / "broker"
        if cfg.mode == "external":
            log.warning(
                "broker mode external: device credentials and ACL are the external broker's job"
            )
            return None
        assert cfg.bind is not None
        users = self.broker_users()
        broker: Broker
        try:
            if cfg.mode == "mosquitto":
                broker = MosquittoSupervisor(workdir, cfg.bind, users)
            else:
                try:
                    from hub.link.embedded import EmbeddedBroker  # type: ignore[import-not-found,unused-ignore]
                except ImportError as exc:
                    raise StartupError(f"broker mode embedded needs amqtt: {exc}") from None
                broker = EmbeddedBroker(workdir, cfg.bind, users)
            await broker.start()
        except BrokerError as exc:
            raise StartupError(f"{self.cfg.source}: broker: {exc}") from None
        return broker

    async def _shutdown(self) -> None:
        self._draining = True
        client = self.client
        if client is not None and self.consumer_connected:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    for channel in ("up", "status", "ack"):
                        await client.unsubscribe(topics.subscription(channel))
        if self._in_hand:
            _done, pending = await asyncio.wait(set(self._in_hand), timeout=DRAIN_S)
            for t in pending:
                t.cancel()
        if self.ingest is not None:
            await self.ingest.aclose()
        if self.engine is not None and self.engine.llm is not None:
            with contextlib.suppress(Exception):
                await self.engine.llm.aclose()
        if self._http is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.task, 5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.raft is not None:
            raft = self.raft
            raft.on_applied = None
            await asyncio.to_thread(raft.close)
        if self.broker is not None:
            await self.broker.stop()
        log.info("hub %s stopped", self.node_id)

    # -- the registry and the broker ---------------------------------------------------

    def broker_users(self) -> list[BrokerUser]:
        secret = self.cfg.raft.secret
        users = [
            BrokerUser(auth.hub_user(self.node_id), auth.hub_password(secret, self.node_id), "hub"),
            BrokerUser(auth.MONITOR_USER, auth.monitor_password(secret), "monitor"),
        ]
        assert self.raft is not None
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

    def _applied(self, results: list[ApplyResult]) -> None:
        """Apply results from pysyncobj's thread, now on the loop."""
        metrics.applied(self, results)
        if self.delivery is not None:
            self.delivery.notice(results)
        if self.engine is not None:
            self.engine.notice(results)
        if self.models is not None:
            self.models.notice(results)
        if not results:
            self._here.clear()
            self._registry_dirty.set()
            return
        for r in results:
            if r.type in _REGISTRY_KINDS and r.outcome is Outcome.APPLIED:
                self._registry_dirty.set()
                self._here.pop(r.device_id, None)
            elif r.type is e.EntryType.PRESENCE and r.outcome is Outcome.APPLIED:
                self._here.pop(r.device_id, None)
        if self.events.listening:
            for r in results:
                if r.outcome is Outcome.APPLIED:
                    event = self._event_of(r)
                    if event is not None:
                        self.events.publish(event)
                        if event.get("alert"):
                            self.events.publish({**event, "type": "alert"})

    def _event_of(self, r: ApplyResult) -> dict[str, Any] | None:
        """The stream event for an applied entry (only while someone listens)."""
        assert self.raft is not None
        raft = self.raft
        if r.type is e.EntryType.BATCH and r.stored:
            first = r.watermark - r.stored + 1 if r.watermark >= r.stored else 1
            rows = raft.read(lambda s: s.readings(r.device_id, first, r.watermark))
            return {
                "type": "reading",
                "device_id": r.device_id,
                "watermark": r.watermark,
                "readings": [[x.ts_ms, x.sensor, x.value] for x in rows],
            }
        if r.type is e.EntryType.PRESENCE:
            p = raft.read(lambda s: s.presence(r.device_id))
            if p is None:
                return None
            return {
                "type": "presence",
                "device_id": r.device_id,
                "node": p.node_id,
                "online": p.state is m.LinkState.ONLINE,
            }
        if r.type in (
            e.EntryType.COMMAND,
            e.EntryType.COMMAND_RESULT,
            e.EntryType.COMMAND_STATE,
        ):
            rec = raft.read(lambda s: s.command(r.command_id))
            if rec is None:
                return None
            from hub.http.api import ledger_json

            return {"type": "command", **ledger_json(rec)}
        if r.type is e.EntryType.DECISION:
            d = raft.read(lambda s: s.decision(r.decision_id))
            if d is None:
                return None
            from hub.http.api import decision_json

            return {"type": "decision", **decision_json(d, None)}
        return None

    async def _announce(self) -> None:
        """Propose this node's addresses until the cluster has them."""
        raft = self.raft
        assert raft is not None
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

    # -- MQTT ------------------------------------------------------------------------

    def _broker_endpoint(self) -> tuple[str, int, str | None, str | None]:
        b = self.cfg.broker
        if b.mode == "external":
            addr = b.address
            return addr.host, addr.port, None, None
        assert b.bind is not None
        host = "127.0.0.1" if b.bind.host in ("0.0.0.0", "::", "[::]") else b.bind.host
        user = auth.hub_user(self.node_id)
        return host, b.bind.port, user, auth.hub_password(self.cfg.raft.secret, self.node_id)

    async def _consume(self) -> None:
        host, port, user, password = self._broker_endpoint()
        while not self._draining:
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    username=user,
                    password=password,
                    identifier=f"{auth.hub_user(self.node_id)}-consumer",
                    clean_session=True,
                    logger=logging.getLogger("aiomqtt"),
                ) as client:
                    for channel in ("up", "status", "ack"):
                        await client.subscribe(topics.subscription(channel), qos=1)
                    self.client = client
                    self.consumer_connected = True
                    log.info("consuming aiot/v1/+/up from %s:%d", host, port)
                    async for msg in client.messages:
                        await self._slots.acquire()
                        task = asyncio.create_task(self._one(client, msg))
                        self._in_hand.add(task)
                        task.add_done_callback(self._handled)
            except aiomqtt.MqttError as exc:
                if self.consumer_connected:
                    log.warning("broker connection lost: %s", exc)
                self.consumer_connected = False
                self.client = None
                await asyncio.sleep(0.5)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("message handling failed", exc_info=task.exception())

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self.client
        if client is None:
            raise _NotConnected()
        await client.publish(topic, payload, qos=1)

    async def _one(self, client: aiomqtt.Client, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
        channel = topic.rsplit("/", 1)[-1]
        if channel == "up":
            assert self.ingest is not None
            outcome = await self.ingest.handle(topic, payload)
            if outcome.publish is not None:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(outcome.publish.topic, outcome.publish.payload, qos=1)
            if outcome.status is Status.ACKED:
                await self._seen_here(outcome.device_id)
            return
        try:
            device_id, channel = topics.parse(topic)
        except topics.TopicError:
            return
        if channel == "status":
            await self._on_status(device_id, bytes(payload), bool(msg.retain))
        elif channel == "ack":
            assert self.delivery is not None
            await self.delivery.on_result(device_id, bytes(payload))

    async def _on_status(self, device_id: str, payload: bytes, retained: bool) -> None:
        assert self.raft is not None
        device = self.raft.read(lambda s: s.device(device_id))
        try:
            if device is None:
                raise CodecError("unknown_device", device_id)
            msg = wire.decode_frame(payload, device.key)
            if not isinstance(msg, m.DeviceStatus) or msg.device_id != device_id:
                raise CodecError("topic_mismatch", type(msg).__name__)
        except CodecError as exc:
            self.status_rejects[exc.reason] = self.status_rejects.get(exc.reason, 0) + 1
            log.warning("status rejected device=%s reason=%s", device_id, exc.reason)
            return
        self.statuses[device_id] = (msg, time.time())
        if self.events.listening:
            self.events.publish({"type": "status", "device_id": device_id, **m.to_dict(msg)})
        if retained:
            return  # a copy kept by the broker, not news of a session
        if msg.state is m.LinkState.ONLINE:
            await self._seen_here(device_id)
        else:
            await self._propose_presence(device_id, m.LinkState.OFFLINE)

    async def _seen_here(self, device_id: str) -> None:
        """The device has a session on this node's broker: make presence say so."""
        if self._here.get(device_id):
            return
        assert self.raft is not None
        p = self.raft.read(lambda s: s.presence(device_id))
        if p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE:
            self._here[device_id] = True
            return
        if await self._propose_presence(device_id, m.LinkState.ONLINE):
            self._here[device_id] = True

    async def _propose_presence(self, device_id: str, state: m.LinkState) -> bool:
        assert self.raft is not None
        entry = e.encode(e.Presence(device_id, self.node_id, state, wall_ms()))
        try:
            await self.raft.propose(entry)
        except RaftError as exc:
            log.info("presence of %s not recorded: %s", device_id, exc.reason)
            return False
        log.info("presence device=%s node=%s state=%s", device_id, self.node_id, state.name)
        return True

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This node's view, for the API and `aiot cluster status`."""
        assert self.raft is not None
        raft = self.raft.status()

        def connected(s: Store) -> list[str]:
            out = []
            for d in s.devices():
                p = s.presence(d.device_id)
                if p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE:
                    out.append(d.device_id)
            return out

        ingest = self.ingest
        return {
            "node_id": self.node_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "raft": asdict(raft),
            "lag": max(0, raft.commit_index - raft.applied_index),
            "broker": {
                "mode": self.cfg.broker.mode,
                "address": str(self.cfg.broker.address),
                "pid": None if self.broker is None else self.broker.pid,
                "restarts": 0 if self.broker is None else self.broker.restarts,
                "reloads": 0 if self.broker is None else self.broker.reloads,
                "consumer_connected": self.consumer_connected,
            },
            "devices_connected": self.raft.read(connected),
            "ingest": {
                "acked": 0 if ingest is None else ingest.acked,
                "rejected": {} if ingest is None else dict(ingest.counters),
                "failed": {} if ingest is None else dict(ingest.failures),
            },
            "commands": {
                "published": 0 if self.delivery is None else self.delivery.published,
                "results": 0 if self.delivery is None else self.delivery.results,
                "rejected": {} if self.delivery is None else dict(self.delivery.rejected),
                "resends": {} if self.delivery is None else dict(self.delivery.resends),
            },
            "status_rejected": dict(self.status_rejects),
            "decisions": {} if self.engine is None else self.engine.status(),
            "models": {} if self.models is None else self.models.status(),
        }


class _NotConnected(RaftError):
    def __init__(self) -> None:
        super().__init__("broker_disconnected", "not connected to this node's broker")


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
    stop = asyncio.Event()
    with _signals(asyncio.get_running_loop(), stop):
        await Hub(cfg).run(stop)


def main(config_path: Path) -> int:
    """`aiot hub run`: 0 after a clean shutdown, 2 when it cannot start."""
    from hub.core import config as config_mod
    from hub.core import logs
    from hub.link.ingest import mutation_from_env

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
