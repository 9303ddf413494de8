"""The hub node's embedded broker: amqtt inside the daemon's event loop.

    broker = EmbeddedBroker(workdir, Address("127.0.0.1", 1883), users)
    await broker.start()           # listening when it returns; BrokerError if not
    task = asyncio.create_task(broker.supervise())   # restarts a failed broker
    broker.update_users(new_users) # new credentials and ACL, at once
    await broker.stop()

The same interface as ``MosquittoSupervisor`` (hub/link/broker.py), for
``[broker] mode = "embedded"``: no separate process (``pid`` is None), nothing
written to ``workdir``. Production guidance stays Mosquitto.

Confinement is the Mosquitto ACL's (``render_acl``): anonymous access off;
a device publishes only ``up``, ``status`` and ``ack`` under
``aiot/v1/<its name>/`` and receives only its own ``down``; the hub role reads
and writes ``aiot/v1/#``; the monitor role reads it. Passwords are kept as
salted PBKDF2-SHA512 digests, compared in constant time; the plaintext the
client sent is dropped from amqtt's session once checked.

amqtt 0.12.1 on its own does not get there. ``_HubBroker`` overrides a few of
its private methods (hence the exact version pin in pyproject.toml); each fix
has a test in tests/integration/test_hub_embedded.py:

- amqtt looks up, takes over or wipes the session named by the client id
  before it checks the password: a client with a wrong password and a
  device's client id could wipe that device's persistent session. Here the
  password is checked first.
- amqtt does not check a client's last-will topic against the ACL: a device
  could have its will published (and retained) on another device's topic.
  Here a will the user may not publish is dropped at CONNECT; the connection
  is accepted, as Mosquitto does.
- amqtt never closes a connection whose keep-alive expired, so a half-open
  device kept its session and its will was never published. Here the
  connection is closed after 1.5 keep-alive periods without a packet
  (MQTT-3.1.2-24), which publishes the will.
- amqtt sends retained messages without the read check: on SUBSCRIBE, and on
  every reconnect of a persistent session, for every filter that *any*
  client had subscribed. Here only the session's own filters count and every
  retained message passes the read check.
- amqtt delivers the messages queued for an offline persistent session with
  the RETAIN flag set (MQTT-3.3.1-9 says 0; the hub ignores retained status
  copies). Here they go out with RETAIN 0, after a fresh read check (the user
  may have lost the right, or may not be the one who queued them).
- Per-session queues are capped (``limits.max_queued_messages``, 10,000 by
  default, ``[broker] max_queued_messages`` in a hub), as Mosquitto's
  ``max_queued_messages``; amqtt's are unbounded.
- A packet larger than ``limits.max_packet_bytes`` cuts its connection
  before it is read (Mosquitto's ``max_packet_size``); amqtt reads any size
  up to 256 MB.
- Nothing more is read from a connection once it is closing. amqtt's
  reader went on through the bytes already received: after a cut packet,
  and after a reserved packet type (whose handling "closes" the connection
  and reads on), every zero byte of a hostile client's buffer was one more
  reserved packet and one more warning, up to 64 KiB of them, holding the
  broker's loop for seconds. ``limits.max_connections`` caps the listener (amqtt waits
  with the next connection until one closes; Mosquitto refuses it).
- A device's or the monitor's client id is replaced by its user name
  (Mosquitto's ``use_username_as_clientid``): no login can take over another
  login's session, the hub consumer's included. A hub login keeps its client
  id (in Mosquitto it comes in on its own Unix socket listener).
- A second connection with a connected client's id: with a persistent
  session, amqtt marked the shared session disconnected under the new
  connection (which then received nothing; messages piled up in its queue)
  and published the new connection's will; with a clean session it left the
  old connection open, its will armed. Here the old connection is closed
  first, without its will, as Mosquitto does (MQTT-3.1.4-2).
- A client dropped for a PUBLISH to a ``$`` or wildcard topic kept a
  "connected" session and an open socket. Here it is ended as a lost
  connection: closed, will published.
- Connections that never send CONNECT are closed after ``connect_timeout_s``.
- Connections amqtt leaves open (refused, malformed) are closed.
- ``update_users`` disconnects clients whose user was removed or whose
  password changed, like Mosquitto on SIGHUP.

Known differences from Mosquitto that remain (hub/state/DESIGN.md, "Embedded
broker (amqtt)", says how each was found):

- Nothing is persisted: retained messages, persistent sessions and queued
  messages are lost on ``stop()`` and on a restart by ``supervise()``.
- SUBSCRIBE to a filter that cannot match anything the user may read is
  refused (return code 0x80); Mosquitto grants it and delivers nothing. A
  filter that can match (``aiot/v1/+/down`` for a device) is granted and
  filtered on delivery, as by Mosquitto.
- Messages are delivered at the subscription's QoS, not at
  min(publish QoS, subscription QoS): a QoS 0 publish reaches a QoS 1
  subscriber as QoS 1.
- A resumed persistent session gets the retained messages matching its
  subscriptions again (Mosquitto sends them only on SUBSCRIBE), with RETAIN 1.
- A client that publishes to a ``$`` topic is disconnected (its will goes
  out); Mosquitto drops the message and keeps the client.
- No limit on QoS 1 messages in flight per client (Mosquitto: ``max_inflight_messages``),
  and no MQTT 5 Receive Maximum. So the hub's session gets no backpressure
  here: amqtt sends every message at once, whether or not the hub has
  acknowledged the ones before. The hub still acknowledges each only once
  handled, and holds at most ``WINDOW`` (hub/link/consumer.py): past that
  it sheds what comes in (acknowledged unread; the device resends it), so a
  flood is shed at the hub, and amqtt's own memory holds what it has sent
  and not yet had acknowledged.
- MQTT 3.1.1 only: 3.1 and 5 clients are refused.
- Mosquitto's ``pattern`` lines also let the monitor user write its own
  ``aiot/v1/<monitor>/{up,status,ack}``; here the monitor publishes nothing.
- No ``$SYS`` topics.
- The broker shares the daemon's event loop (and CPU).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import secrets
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from amqtt.adapters import (  # type: ignore[import-untyped]
    StreamReaderAdapter,
    StreamWriterAdapter,
)
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import (  # type: ignore[import-untyped]
    Action,
    BrokerConfig,
    ListenerConfig,
    ListenerType,
)
from amqtt.errors import AMQTTError, MQTTError, NoDataError  # type: ignore[import-untyped]
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import (  # type: ignore[import-untyped]
    BrokerProtocolHandler,
)
from amqtt.plugins import manager as _plugin_manager  # type: ignore[import-untyped]
from amqtt.utils import gen_client_id  # type: ignore[import-untyped]

from hub.core.config import PLAIN, Address, TlsConfig
from hub.link.broker import BrokerError, BrokerLimits, BrokerUser, Role

log = logging.getLogger("hub.embedded")

_PLUGIN_NAMESPACE: Final = "amqtt.broker.plugins"
_PBKDF2_ITERATIONS: Final = 101  # as Mosquitto's $7$ hashes; the passwords are 128-bit secrets
MAX_QUEUED: Final = 10_000  # per offline persistent session, as max_queued_messages
_LIMITS: Final = BrokerLimits(max_queued_messages=MAX_QUEUED)
CONNECT_TIMEOUT_S: Final = 10.0
TAKEOVER_TIMEOUT_S: Final = 5.0
_QUIET: Final = ("amqtt", "transitions")  # amqtt's loggers, and its state-machine library's


# -- users and the ACL -------------------------------------------------------------------


def _levels(topic: str) -> tuple[str, ...]:
    return tuple(topic.split("/"))


def intersects(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether some topic matches both MQTT filters, given as levels.

    With ``b`` a plain topic this is "filter ``a`` matches topic ``b``".
    """
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


def _digest(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)


@dataclass(frozen=True, slots=True)
class _Account:
    role: Role
    salt: bytes
    digest: bytes
    read: tuple[tuple[str, ...], ...]
    write: tuple[tuple[str, ...], ...]

    @classmethod
    def of(cls, user: BrokerUser) -> _Account:
        salt = secrets.token_bytes(16)
        if user.role == "device":
            base = f"aiot/v1/{user.name}/"
            read = (_levels(base + "down"),)
            write = tuple(_levels(base + c) for c in ("up", "status", "ack"))
        elif user.role == "hub":
            read = write = (_levels("aiot/v1/#"),)
        else:  # monitor
            read, write = (_levels("aiot/v1/#"),), ()
        return cls(user.role, salt, _digest(user.password, salt), read, write)

    def verify(self, password: str) -> bool:
        return hmac.compare_digest(_digest(password, self.salt), self.digest)


class _Bounded(StreamReaderAdapter):  # type: ignore[misc]
    """A connection's reader that refuses to read a packet larger than
    ``limit`` bytes (Mosquitto's ``max_packet_size``): amqtt reads a packet's
    remaining length in one read, so a larger read means a larger packet.
    The connection is cut and ends as a lost one (its will goes out)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int, stats: Any
    ) -> None:
        super().__init__(reader)
        self._writer = writer
        self._limit = limit
        self._stats = stats
        self.ended = False

    def end(self) -> None:
        """Read nothing more: every later read is the end of the stream."""
        self.ended = True

    async def read(self, n: int = -1) -> bytes:
        if self.ended:
            raise asyncio.IncompleteReadError(b"", n if n >= 0 else None)
        if n < 0 or n > self._limit:
            self._stats["oversized"] += 1
            self.end()
            self._writer.transport.abort()
            raise asyncio.IncompleteReadError(b"", n if n >= 0 else None)
        data: bytes = await super().read(n)
        return data


_NOBODY: Final = _Account.of(BrokerUser("nobody", secrets.token_hex(16), "monitor"))


class Accounts:
    """The users, hashed, and what each may do. Immutable: replaced as a whole."""

    def __init__(self, users: Iterable[BrokerUser]) -> None:
        self._by_name = {u.name: _Account.of(u) for u in users}

    def authenticate(self, name: str | None, password: str | None) -> bool:
        account = self._by_name.get(name or "")
        # An unknown name costs the same hash as a known one.
        ok = (account or _NOBODY).verify(password or "")
        return ok and account is not None and password is not None

    def role(self, name: str | None) -> Role | None:
        account = self._by_name.get(name or "")
        return None if account is None else account.role

    def allows(self, name: str | None, topic: str, action: Any) -> bool:
        """PUBLISH and RECEIVE: ``topic`` is a topic; SUBSCRIBE: a filter that
        must be able to match something readable (delivery checks the rest)."""
        account = self._by_name.get(name or "")
        if account is None:
            return False
        patterns = account.write if action == Action.PUBLISH else account.read
        levels = _levels(topic)
        return any(intersects(p, levels) for p in patterns)

    def same_password(self, name: str | None, users: dict[str, BrokerUser]) -> bool:
        """``users`` still holds ``name``, with the password it has here."""
        old = self._by_name.get(name or "")
        user = users.get(name or "")
        return old is not None and user is not None and old.verify(user.password)


# -- amqtt, fixed ------------------------------------------------------------------------


class _Handler(BrokerProtocolHandler):  # type: ignore[misc]
    def handle_read_timeout(self) -> None:
        # No packet for the keep-alive window: close, as MQTT-3.1.2-24 says.
        # amqtt 0.12.1 only logs it. EOF ends the reader loop the ordinary way:
        # the broker sees an abnormal disconnect and publishes the will.
        feed_eof = getattr(self.reader, "feed_eof", None)
        if feed_eof is not None:
            feed_eof()

    async def handle_connection_closed(self) -> None:
        # amqtt calls this for a reserved packet type, then reads the next
        # packet; the connection ends here instead (the loop sees the end of
        # the stream, and the broker the abnormal disconnect: the will goes out).
        if isinstance(self.reader, _Bounded):
            self.reader.end()
        await super().handle_connection_closed()


class _HubBroker(Broker):  # type: ignore[misc]
    """amqtt's Broker with the hub's accounts and the fixes listed above."""

    def __init__(
        self,
        config: Any,
        accounts: Accounts,
        stats: Counter[str],
        connect_timeout_s: float,
        limits: BrokerLimits,
    ) -> None:
        super().__init__(config, plugin_namespace=_PLUGIN_NAMESPACE)
        self.accounts = accounts
        self.connect_timeout_s = connect_timeout_s
        self.max_queued = limits.max_queued_messages
        self.max_packet = limits.max_packet_bytes
        self.stats = stats
        self.connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.greeting: set[asyncio.Task[Any]] = set()  # before CONNECT is read and checked
        self.owner: dict[str, asyncio.Task[Any]] = {}  # client id -> its connection
        self.client_of: dict[asyncio.Task[Any], str] = {}
        self._checked: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    # Every connection: tracked, and closed however amqtt leaves it.
    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections[task] = writer
        try:
            bounded = _Bounded(reader, writer, self.max_packet, self.stats)
            await self._client_connected(listener_name, bounded, StreamWriterAdapter(writer))
        finally:
            self.connections.pop(task, None)
            self.greeting.discard(task)
            client_id = self.client_of.pop(task, None)
            if client_id is not None and self.owner.get(client_id) is task:
                del self.owner[client_id]
            if not writer.transport.is_closing():
                writer.transport.abort()

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        task = asyncio.current_task()
        assert task is not None
        self.greeting.add(task)
        try:
            handler, session = await asyncio.wait_for(
                _Handler.init_from_connect(reader, writer, self.plugins_manager),
                self.connect_timeout_s,
            )
        except (TimeoutError, NoDataError) as exc:
            raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}") from exc
        finally:
            self.greeting.discard(task)

        # Authenticate before the client id touches any session (amqtt does it after).
        if not self.accounts.authenticate(session.username, session.password):
            self.stats["refused"] += 1
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise MQTTError(f"not authorised: user {session.username!r} from {remote_address}")
        session.password = None
        if self.accounts.role(session.username) != "hub":
            # Mosquitto's use_username_as_clientid: a device (or the monitor)
            # can only ever take over its own session.
            session.client_id = session.username
        if session.will_flag and not self.accounts.allows(
            session.username, session.will_topic or "", Action.PUBLISH
        ):
            self.stats["denied will"] += 1
            session.will_flag = False  # as Mosquitto: accepted, the will dropped
            session.will_retain = False
            session.will_topic = session.will_message = None

        # amqtt's own bookkeeping from here on (Broker._initialize_client_session),
        # after closing any connection that holds this client id.
        client_id = session.client_id
        if client_id:
            await self._take_over(client_id)
        existing = self._sessions.get(client_id) if client_id else None
        if existing is not None and not session.clean_session and not existing[0].clean_session:
            old = existing[0]
            for attr in (
                "will_flag",
                "will_retain",
                "will_message",
                "will_topic",
                "will_qos",
                "keep_alive",
                "username",
                "password",
            ):
                setattr(old, attr, getattr(session, attr))
            session = old
            session.parent = 1
        else:
            if existing is not None:
                await self._delete_session(client_id)
            if not client_id:
                session.client_id = gen_client_id()
            session.parent = 0
        # The server allows 1.5 keep-alive periods (MQTT-3.1.2-24).
        session.keep_alive = math.ceil(session.keep_alive * 1.5)
        self._checked[id(session)] = session
        self.client_of[task] = session.client_id
        self.owner[session.client_id] = task
        return handler, session

    async def _take_over(self, client_id: str) -> None:
        """Close the connection that holds ``client_id``, without its will, and
        wait until amqtt has ended it (MQTT-3.1.4-2, and what Mosquitto does).

        amqtt 0.12.1 does it itself only for a persistent session, and then
        marks the shared session disconnected under the new connection (which
        then receives nothing) and publishes the *new* connection's will; for
        a clean session it leaves the old connection open.
        """
        existing = self._sessions.get(client_id)
        if existing is None or not existing[0].transitions.is_connected():
            return
        old_session, old_handler = existing
        old_session.will_flag = False
        old_task = self.owner.get(client_id)
        await old_handler.handle_connection_closed()
        if old_task is not None and old_task is not asyncio.current_task():
            _, pending = await asyncio.wait({old_task}, timeout=TAKEOVER_TIMEOUT_S)
            if pending:  # stuck (writing to a dead peer): cut it off
                writer = self.connections.get(old_task)
                if writer is not None:
                    writer.transport.abort()
                await asyncio.wait({old_task}, timeout=TAKEOVER_TIMEOUT_S)

    async def _client_message_loop(self, session: Any, handler: Any) -> None:
        await super()._client_message_loop(session, handler)
        if session.transitions.is_connected() and self._get_handler(session) is handler:
            # amqtt dropped the client for a PUBLISH to a '$' or wildcard topic
            # and left its session "connected": end it as a connection lost.
            lost = asyncio.get_running_loop().create_future()
            lost.set_result(None)
            await self._handle_disconnect(session, handler, lost)

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        # Done in _initialize_client_session, before any session was touched.
        return self._checked.pop(id(session), None) is session

    async def _topic_filtering(self, session: Any, topic: str, action: Any) -> bool:
        if self.accounts.allows(session.username, topic, action):
            return True
        self.stats[f"denied {action}"] += 1
        return False

    def _subscribed(self, session: Any, topic_filter: str) -> bool:
        subs = self._subscriptions.get(topic_filter, ())
        return any(s.client_id == session.client_id for s, _ in subs)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        topic_filter, qos = subscription
        # amqtt also calls this on reconnect with every client's filters.
        if not self._subscribed(session, topic_filter):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = []
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter) and self.accounts.allows(
                session.username, topic, Action.RECEIVE
            ):
                rqos = min(qos, retained.qos if retained.qos is not None else qos)
                sends.append(handler.mqtt_publish(topic, retained.data, rqos, retain=True))
        await asyncio.gather(*sends, return_exceptions=True)

    async def _publish_session_retained_messages(self, session: Any) -> None:
        # Messages queued while the client was away: RETAIN 0 (MQTT-3.3.1-9),
        # and only what the user may read now.
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = []
        queue = session.retained_messages
        while not queue.empty():
            m = queue.get_nowait()
            if self.accounts.allows(session.username, m.topic, Action.RECEIVE):
                sends.append(handler.mqtt_publish(m.topic, m.data, m.qos, retain=False))
        await asyncio.gather(*sends, return_exceptions=True)

    async def _retain_broadcast_message(
        self, broadcast: dict[str, Any], qos: int, target_session: Any
    ) -> None:
        if target_session.retained_messages.qsize() >= self.max_queued:
            self.stats["queue full"] += 1
            return
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    def disconnect_users(self, keep: Any) -> int:
        """Close the connections of users for whom ``keep(name)`` is false."""
        n = 0
        for session, handler in list(self._sessions.values()):
            if session.transitions.is_connected() and not keep(session.username):
                feed_eof = getattr(handler.reader, "feed_eof", None)
                if feed_eof is not None:
                    feed_eof()
                    n += 1
        return n

    def failure(self) -> asyncio.Future[Any] | None:
        """Done when a background task amqtt cannot do without has ended."""
        tasks = [t for t in (self._broadcast_task, self._session_monitor_task) if t is not None]
        if not tasks:
            return None
        return asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED))


# -- the supervisor-shaped wrapper ---------------------------------------------------------


class EmbeddedBroker:
    """Runs one amqtt broker in this event loop for this hub node and keeps it running."""

    def __init__(
        self,
        workdir: Path,
        bind: Address,
        users: Iterable[BrokerUser],
        backoff_s: float = 0.5,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_queued: int | None = None,
        limits: BrokerLimits = _LIMITS,
        tls: TlsConfig = PLAIN,
    ) -> None:
        self.workdir = workdir  # nothing is written there: no persistence
        self.tls = tls
        self.bind = bind
        self.users = tuple(users)
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.connect_timeout_s = connect_timeout_s
        if max_queued is not None:
            limits = dataclasses.replace(limits, max_queued_messages=max_queued)
        self.limits = limits
        self.max_queued = limits.max_queued_messages
        self.restarts = 0
        self.reloads = 0
        # refused (connections), oversized (connections cut for a packet over
        # max_packet_bytes), denied publish|subscribe|receive|will,
        # queue full (messages not queued for an offline session), kicked
        # (connections closed by update_users); kept across restarts.
        self.stats: Counter[str] = Counter()
        self._accounts = Accounts(self.users)
        self._broker: _HubBroker | None = None
        self._started = False
        self._stopping = False
        self._stop = asyncio.Event()
        self._launched_at = 0.0

    @property
    def pid(self) -> int | None:
        return None

    # -- running ----------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> None:
        for name in _QUIET:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        self._stopping = False
        self._stop.clear()
        await self._launch(timeout)
        self._started = True

    def _config(self) -> Any:
        host = f"[{self.bind.host}]" if ":" in self.bind.host else self.bind.host
        secure: dict[str, Any] = {}
        if self.tls.on:  # amqtt builds a TLS 1.2+ server context from these
            secure = {"ssl": True, "certfile": str(self.tls.cert), "keyfile": str(self.tls.key)}
        listener = ListenerConfig(
            type=ListenerType.TCP,
            bind=f"{host}:{self.bind.port}",
            max_connections=self.limits.max_connections,
            **secure,
        )
        # plugins={}: none of amqtt's defaults (anonymous access, $SYS, packet logging).
        return BrokerConfig(listeners={"default": listener}, plugins={})

    async def _launch(self, timeout: float) -> None:
        broker = _HubBroker(
            self._config(), self._accounts, self.stats, self.connect_timeout_s, self.limits
        )
        try:
            await asyncio.wait_for(broker.start(), timeout)
        except Exception as exc:
            await self._close_listeners(broker)
            _forget_plugins(broker)
            cause = exc.__cause__ or exc
            why = f"not listening within {timeout}s" if isinstance(exc, TimeoutError) else cause
            raise BrokerError(f"embedded broker on {self.bind}: {why}") from None
        self._broker = broker
        self._launched_at = time.monotonic()

    async def supervise(self) -> None:
        """Restart the broker whenever it fails, with exponential backoff."""
        if not self._started:
            return
        delay = self.backoff_s
        while not self._stopping:
            broker = self._broker
            if broker is not None:
                if not await self._failed(broker):
                    return  # stopped
                log.warning("embedded broker failed; restarting in %.1fs", delay)
                self._broker = None
                await self._discard(broker, 5.0)
                if time.monotonic() - self._launched_at > 10:
                    delay = self.backoff_s  # it had been up a while: start over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stopping:
                return
            delay = min(delay * 2, self.backoff_max_s)
            with contextlib.suppress(BrokerError):  # failed: wait, back off, retry
                await self._launch(10.0)
                self.restarts += 1
                if self._stopping and self._broker is not None:  # stop() came meanwhile
                    broker, self._broker = self._broker, None
                    await self._discard(broker, 5.0)

    async def _failed(self, broker: _HubBroker) -> bool:
        """Wait until ``broker`` fails (True) or stop() is called (False)."""
        failure = broker.failure()
        stopping = asyncio.ensure_future(self._stop.wait())
        waiting = [stopping] if failure is None else [stopping, failure]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in waiting:
                f.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        return not self._stopping and failure is not None and failure.done()

    def update_users(self, users: Iterable[BrokerUser]) -> None:
        """New credentials and ACL, for new connections and every later check.

        Connected clients whose user is gone or whose password changed are
        disconnected, as Mosquitto does on a reload.
        """
        self.users = tuple(users)
        old = self._accounts
        by_name = {u.name: u for u in self.users}
        self._accounts = Accounts(self.users)
        broker = self._broker
        if broker is not None:
            broker.accounts = self._accounts
            self.stats["kicked"] += broker.disconnect_users(
                lambda name: old.same_password(name, by_name)
            )
            self.reloads += 1

    def drop_sessions(self) -> None:
        """Close the sessions of users who may no longer log in (as
        ``update_users`` does): after a drain, the devices' sessions."""
        broker = self._broker
        if broker is not None:
            names = {u.name for u in self.users}
            self.stats["kicked"] += broker.disconnect_users(lambda name: name in names)

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._stop.set()
        broker, self._broker = self._broker, None
        if broker is not None:
            await self._discard(broker, timeout)

    async def _discard(self, broker: _HubBroker, timeout: float) -> None:
        """Shut ``broker`` down; whatever is left after ``timeout`` is cut off."""
        for task in list(broker.greeting):  # not a client yet: nothing to say goodbye to
            task.cancel()
        try:
            await asyncio.wait_for(broker.shutdown(), timeout)
        except Exception as exc:  # a failed broker may not shut down cleanly
            log.debug("embedded broker shutdown: %r", exc)
            await self._close_listeners(broker)
        tasks = list(broker.connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                writer = broker.connections.get(task)
                if writer is not None:
                    writer.transport.abort()
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # aborted transports close their sockets on the next turn
        _forget_plugins(broker)

    @staticmethod
    async def _close_listeners(broker: _HubBroker) -> None:
        for server in list(broker._servers.values()):
            with contextlib.suppress(Exception):
                await server.close_instance()


def _forget_plugins(broker: _HubBroker) -> None:
    # amqtt keeps the last plugin manager of a namespace in a module-level dict.
    registry = _plugin_manager.plugins_manager
    if registry.get(_PLUGIN_NAMESPACE) is broker.plugins_manager:
        del registry[_PLUGIN_NAMESPACE]
