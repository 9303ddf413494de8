"""The hub's MQTT session on its own node's broker: what devices send comes in here.

    consumer = Consumer(node_id, broker_endpoint(cfg), raft, ingest, events)
    consumer.on_result = delivery.on_result     # aiot/v1/<id>/ack
    task = asyncio.create_task(consumer.run(), name="consumer")
    await consumer.publish(topic, payload)      # Delivery's way to the devices
    ...
    await consumer.stop(drain_s)                # unsubscribe, finish what is in hand

Subscriptions and where each message goes:

    aiot/v1/+/up        uplink batches -> Ingest; its CommitAck is published back,
                        and an acked batch means the device's session is here
    aiot/v1/+/status    the device's signed status -> ``statuses``, the live
                        stream, and presence (online here, or offline)
    aiot/v1/+/ack       command results -> ``on_result`` (Delivery)

Backpressure: a QoS 1 message is acknowledged (PUBACK) only once it has
been handled (its batch committed and the CommitAck published, or refused,
or over its device's rate), and in the order the messages came
[MQTT-4.6.0-2]. A broker that keeps to its in-flight window then sends at
most ``WINDOW`` messages unacknowledged, and the rest wait in its queue for
this session (Mosquitto's ``max_queued_messages``, which drops beyond it;
the devices resend what has no CommitAck). On Mosquitto the session is
MQTT 5 with Receive Maximum ``WINDOW``, which Mosquitto takes for that
client in place of its global ``max_inflight_messages`` (the devices'
window, kept small).

Whatever the broker does, the consumer holds (``held``: being handled or
received and waiting) at most ``WINDOW`` QoS 1 messages and ``QOS0_ROOM``
QoS 0 ones; past that it sheds on arrival (``shed``): a QoS 1 message is
acknowledged unread, as a device's excess is, and a QoS 0 one (owed no ack,
held back by no broker) is dropped. Brokers that do not keep to the window:
amqtt (the embedded broker) has none; MQTT 3.1.1 cannot ask for one from an
external broker; and Mosquitto 2.0.11 sends up to a whole new window for
each PUBACK of the oldest message in flight (``db__message_delete_outgoing``
counts only the messages in flight before the acknowledged one), so once
the hub acknowledges in order after a stall, it sends past the window and
the excess is shed here. Up to ``MAX_IN_HAND`` messages are handled at once.

A lost connection is retried every half second until ``stop()``. The session
is clean: what it had not acknowledged the broker discards with it (it does
not redeliver it to the next session); a device resends any batch without a
CommitAck, so nothing is lost for good.

Presence: a device seen on this node's broker (an acked batch, an online
status not retained by the broker) is proposed ONLINE with this node's id,
once; ``notice()`` forgets that when the registry or presence changes, so
the next message proposes again if needed. An offline status proposes
OFFLINE, only while presence names this node online (anything else would
change nothing).

Hostile devices (docs/security.md): every message first takes a token from
its device's bucket for its channel (``Ingest.admit``, hub/link/limits.py);
an empty bucket drops it unread. A status whose (boot_epoch, uptime_s) is
older than the newest authentic one this node has seen from the device (an
OFFLINE one counts as uptime 0, its boot_epoch only) is a replay: refused as
``stale`` with no proposal. The newest one is learnt from live statuses and
from the copy the broker retains, which it sends on every (re)subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.core import auth, tls
from hub.core.clock import wall_ms
from hub.core.config import HubConfig
from hub.link.broker import hub_socket
from hub.link.events import EventBus
from hub.link.ingest import Ingest, Status
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftError, RaftNode
from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError

log = logging.getLogger("aiot.hub")

MAX_IN_HAND: Final = 512  # messages being handled at once
# QoS 1 messages the broker may have sent unacknowledged (Receive Maximum on
# Mosquitto): the hub's own bound on what waits for it. Large enough that the
# handling time of a batch (its commit and CommitAck) does not cap ingest:
# 512 / 0.2 s is over 2,500 batches/s per node.
WINDOW: Final = 512
QOS0_ROOM: Final = 64  # QoS 0 messages waiting at most; more are dropped
CHANNELS: Final = ("up", "status", "ack")
_FORGET: Final = (e.EntryType.REGISTER_DEVICE, e.EntryType.REMOVE_DEVICE, e.EntryType.PRESENCE)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the consumer connects, and as whom (None: no credentials)."""

    host: str  # a host name, or the socket's path with ``unix``
    port: int
    user: str | None
    password: str | None
    unix: bool = False
    tls: ssl.SSLContext | None = None  # None: plain TCP (or the Unix socket)


def broker_endpoint(cfg: HubConfig) -> Endpoint:
    """This node's broker as the hub user: Mosquitto's Unix socket for the hub
    (hub/link/broker.py ``hub_socket``), the embedded broker's bind address
    (over TLS with ``[tls]``); or the external broker's URL without
    credentials, over TLS for ``mqtts://`` (the cluster CA pinned when the
    config has one, otherwise the system's CAs)."""
    b = cfg.broker
    if b.mode == "external":
        assert b.url is not None
        addr = b.address
        secure = None
        if b.url.startswith("mqtts://"):
            secure = tls.client_context(cfg.tls.ca if cfg.tls.on else None)
        return Endpoint(addr.host, addr.port, None, None, tls=secure)
    assert b.bind is not None
    user = auth.hub_user(cfg.node_id)
    password = auth.hub_password(cfg.raft.secret, cfg.node_id)
    if b.mode == "mosquitto":
        sock = hub_socket(cfg.data_dir / "broker")
        return Endpoint(str(sock), 1883, user, password, unix=True)  # paho wants a port
    host = "127.0.0.1" if b.bind.host in ("0.0.0.0", "::", "[::]") else b.bind.host
    secure = tls.client_context(cfg.tls.ca) if cfg.tls.on else None
    return Endpoint(host, b.bind.port, user, password, tls=secure)


def consumer_id(node_id: str) -> str:
    """The client id of the node's session: public (node ids are), and yet no
    other login can use it (hub/link/broker.py, "Identities")."""
    return f"{auth.hub_user(node_id)}-consumer"


class NotConnected(RaftError):
    """A publication while the consumer has no broker connection."""

    def __init__(self) -> None:
        super().__init__("broker_disconnected", "not connected to this node's broker")


class Consumer:
    """Subscribes on this node's broker and dispatches every message."""

    def __init__(
        self,
        node_id: str,
        endpoint: Endpoint,
        raft: RaftNode,
        ingest: Ingest,
        events: EventBus,
    ) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self._raft = raft
        self._ingest = ingest
        self._events = events
        self.on_result: Callable[[str, bytes], Awaitable[None]] | None = None
        self.client: aiomqtt.Client | None = None
        self.connected = False
        self.sessions = 0  # broker sessions opened (1 while it was never lost)
        self.statuses: dict[str, tuple[m.DeviceStatus, float]] = {}  # last status, time
        self.status_rejects: dict[str, int] = {}
        # device -> the newest (boot_epoch, uptime_s) of its authentic statuses
        # (an OFFLINE one counts as uptime 0): older ones are replays.
        self._status_mark: dict[str, tuple[int, int]] = {}
        self._here: dict[str, bool] = {}  # device -> presence names this node (cache)
        self._in_hand: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_HAND)
        self._draining = False
        self._acks: _Acks | None = None  # the session's unacknowledged messages
        self._session_client: aiomqtt.Client | None = None  # connected or not
        self._busy = 0  # messages being handled (their tasks not past the ack)
        self.held_peak = 0  # the most messages ``held`` at once
        self.shed = 0  # messages dropped on arrival: over WINDOW (acked) or QOS0_ROOM

    @property
    def held(self) -> int:
        """Messages in the hub's hands: being handled, or received and waiting.
        (A task in ``_in_hand`` may have finished: it leaves on the next turn
        of the loop, after its ack, so a message can come in before it goes.)"""
        client = self._session_client
        return self._busy + (0 if client is None else len(client.messages))

    # -- the session -----------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe and hand out messages until ``stop()``."""
        ep = self.endpoint
        failed = ""  # why the last attempt failed, logged when it changes
        while not self._draining:
            try:
                client = self._session()
                async with client:
                    for channel in CHANNELS:
                        await client.subscribe(topics.subscription(channel), qos=1)
                    self.client = client
                    self.connected = True
                    self.sessions += 1
                    where = ep.host if ep.unix else f"{ep.host}:{ep.port}"
                    log.info("consuming aiot/v1/+/up from %s", where)
                    async for msg in client.messages:
                        if not self._admitted(msg.topic.value):
                            self._ack(msg)
                            continue  # over the device's rate: dropped unread
                        await self._slots.acquire()
                        task = asyncio.create_task(self._one(client, msg))
                        self._in_hand.add(task)
                        self._busy += 1
                        self.held_peak = max(self.held_peak, self.held)
                        task.add_done_callback(self._handled)
            except aiomqtt.MqttError as exc:
                if self.connected:
                    log.warning("broker connection lost: %s", exc)
                elif str(exc) != failed:  # once per reason: a bad certificate, a refusal
                    log.warning("cannot connect to the broker: %s", exc)
                failed = str(exc)
                self.connected = False
                self.client = None
                await asyncio.sleep(0.5)

    def _session(self) -> aiomqtt.Client:
        """A client for one session, acknowledging by hand (``_Acks``)."""
        ep = self.endpoint
        mqtt5 = ep.unix  # Mosquitto's socket for the hub: MQTT 5, Receive Maximum
        props = None
        if mqtt5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = WINDOW
        client = aiomqtt.Client(
            ep.host,
            ep.port,
            username=ep.user,
            password=ep.password,
            identifier=consumer_id(self.node_id),
            protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
            # MQTT 5: clean start (paho's default for a client's first
            # connection, and each session has its own client) and Session
            # Expiry Interval 0 (none set): the session ends with the connection.
            clean_session=None if mqtt5 else True,
            properties=props,
            transport="unix" if ep.unix else "tcp",
            tls_context=ep.tls,
            logger=logging.getLogger("aiomqtt"),
            # Never full, so aiomqtt never drops a message the hub owes an
            # ack: a QoS 1 message is queued only while fewer than WINDOW are
            # open (received, not handled), a QoS 0 one only while fewer than
            # QOS0_ROOM messages wait (on_message below).
            max_queued_incoming_messages=WINDOW + QOS0_ROOM,
        )
        # aiomqtt 2.5 has no public way to the paho client it drives, nor to
        # manual acks; both are paho's public API.
        mq: paho.Client = client._client
        mq.manual_ack_set(True)
        acks = self._acks = _Acks(mq)
        self._session_client = client
        deliver = mq.on_message  # aiomqtt's: into its queue
        assert deliver is not None

        def on_message(c: paho.Client, userdata: Any, pm: paho.MQTTMessage) -> None:
            if pm.qos == 0:
                if len(client.messages) >= QOS0_ROOM:
                    self.shed += 1
                    return
            elif acks.open >= WINDOW:  # a broker that sends past the window
                self.shed += 1
                acks.received(pm.mid)
                acks.done(pm.mid)  # sent once those before it are
                return
            else:
                acks.received(pm.mid)
            deliver(c, userdata, pm)
            self.held_peak = max(self.held_peak, self.held)

        mq.on_message = on_message
        return client

    def _ack(self, msg: aiomqtt.Message) -> None:
        acks = self._acks
        if msg.qos > 0 and acks is not None:
            acks.done(msg.mid)

    async def stop(self, drain_s: float) -> None:
        """Stop consuming (unsubscribe), then wait up to ``drain_s`` seconds
        for the messages in hand (their acks still go out); cancel the rest."""
        self._draining = True
        client = self.client
        if client is not None and self.connected:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    for channel in CHANNELS:
                        await client.unsubscribe(topics.subscription(channel))
        if self._in_hand:
            _done, pending = await asyncio.wait(set(self._in_hand), timeout=drain_s)
            for t in pending:
                t.cancel()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1; NotConnected while the session is down."""
        client = self.client
        if client is None:
            raise NotConnected()
        await client.publish(topic, payload, qos=1)

    def notice(self, results: Iterable[ApplyResult]) -> None:
        """Applied results: forget what changed presence or the registry (an
        empty batch, a snapshot install, forgets everything)."""
        results = list(results)
        if not results:
            self._here.clear()
        for r in results:
            if r.type in _FORGET and r.outcome is Outcome.APPLIED:
                self._here.pop(r.device_id, None)
                if r.type is not e.EntryType.PRESENCE:  # registered anew, or removed
                    self._status_mark.pop(r.device_id, None)

    # -- one message -------------------------------------------------------------------

    def _admitted(self, topic: str) -> bool:
        """The message is within its device's rate (hub/link/limits.py); checked
        before anything else, not even a task is made for one that is not."""
        try:
            device_id, channel = topics.parse(topic)
        except topics.TopicError:
            return True  # ingest counts it as bad_topic; status and ack ignore it
        return self._ingest.admit(channel, device_id)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._in_hand.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("message handling failed", exc_info=task.exception())

    async def _one(self, client: aiomqtt.Client, msg: aiomqtt.Message) -> None:
        """Handle the message, then acknowledge it (even if handling failed:
        the broker would only send it again, and the device resends)."""
        acks = self._acks
        try:
            await self._handle(client, msg)
        finally:
            self._busy -= 1
            if msg.qos > 0 and acks is not None:
                acks.done(msg.mid)  # this session's, even if a new one began since

    async def _handle(self, client: aiomqtt.Client, msg: aiomqtt.Message) -> None:
        topic = msg.topic.value
        payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
        channel = topic.rsplit("/", 1)[-1]
        if channel == "up":
            outcome = await self._ingest.handle(topic, payload)
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
            assert self.on_result is not None
            await self.on_result(device_id, bytes(payload))

    async def _on_status(self, device_id: str, payload: bytes, retained: bool) -> None:
        device = self._raft.read(lambda s: s.device(device_id))
        try:
            if device is None:
                raise CodecError("unknown_device", device_id)
            msg = wire.decode_frame(payload, device.key)
            if not isinstance(msg, m.DeviceStatus) or msg.device_id != device_id:
                raise CodecError("topic_mismatch", type(msg).__name__)
        except CodecError as exc:
            self._refuse_status(device_id, exc.reason)
            return
        online = msg.state is m.LinkState.ONLINE
        mark = (msg.boot_epoch, msg.uptime_s if online else 0)
        last = self._status_mark.get(device_id)
        if last is not None and (mark < last if online else mark[0] < last[0]):
            self._refuse_status(device_id, "stale", f"boot {mark[0]} at {mark[1]} s, seen {last}")
            return
        self._status_mark[device_id] = mark if last is None else max(mark, last)
        self.statuses[device_id] = (msg, time.time())
        if self._events.listening:
            self._events.publish({"type": "status", "device_id": device_id, **m.to_dict(msg)})
        if retained:
            return  # a copy kept by the broker, not news of a session
        if online:
            await self._seen_here(device_id)
        elif self._holds(device_id):
            await self._propose_presence(device_id, m.LinkState.OFFLINE)
        # else: presence does not name this node online; OFFLINE changes nothing

    def _refuse_status(self, device_id: str, reason: str, detail: str = "") -> None:
        self.status_rejects[reason] = self.status_rejects.get(reason, 0) + 1
        log.warning("status rejected device=%s reason=%s %s", device_id, reason, detail)

    def _holds(self, device_id: str) -> bool:
        """Replicated presence says the device is online on this node's broker."""
        p = self._raft.read(lambda s: s.presence(device_id))
        return p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE

    # -- presence ----------------------------------------------------------------------

    async def _seen_here(self, device_id: str) -> None:
        """The device has a session on this node's broker: make presence say so."""
        if self._here.get(device_id):
            return
        p = self._raft.read(lambda s: s.presence(device_id))
        if p is not None and p.node_id == self.node_id and p.state is m.LinkState.ONLINE:
            self._here[device_id] = True
            return
        if await self._propose_presence(device_id, m.LinkState.ONLINE):
            self._here[device_id] = True

    async def _propose_presence(self, device_id: str, state: m.LinkState) -> bool:
        entry = e.encode(e.Presence(device_id, self.node_id, state, wall_ms()))
        try:
            await self._raft.propose(entry)
        except RaftError as exc:
            log.info("presence of %s not recorded: %s", device_id, exc.reason)
            return False
        log.info("presence device=%s node=%s state=%s", device_id, self.node_id, state.name)
        return True


class _Acks:
    """One session's QoS 1 messages not yet acknowledged, in the order they
    came. A message's PUBACK goes out once it is handled and every message
    before it has been acknowledged: MQTT wants PUBACKs in the order of the
    PUBLISHes [MQTT-4.6.0-2] (Mosquitto would take them in any order). At
    most 65,535 entries: a packet id is not reused while unacknowledged."""

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._order: dict[int, bool] = {}  # packet id -> handled (dicts keep order)
        self.open = 0  # entries not handled yet

    def __len__(self) -> int:
        return len(self._order)

    def received(self, mid: int) -> None:
        if mid not in self._order:
            self._order[mid] = False
            self.open += 1

    def done(self, mid: int) -> None:
        if self._order.get(mid, True):
            return  # not this session's, or done already
        self._order[mid] = True
        self.open -= 1
        order = self._order
        while order:
            first = next(iter(order))
            if not order[first]:
                return
            del order[first]
            self._client.ack(first, 1)  # no error when the session is gone
