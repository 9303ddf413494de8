"""The hub's embedded amqtt broker: the Mosquitto ACL's confinement, and amqtt's gaps closed.

Clients are aiomqtt (the hub's library), raw MQTT 3.1.1 where a test needs a
connection to vanish without a DISCONNECT, and the edge client
(edge/mqtt.py) through the runner in tests/micropython/, on CPython and on
the real MicroPython interpreter.

"Never delivered" is asserted without waiting out a delay: the broker has
already refused the message (its ``stats`` say so) or handled the
disconnection, and a later message on the same path arrives alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hub.core.config import Address
from hub.link.broker import BrokerError, BrokerUser
from hub.link.embedded import EmbeddedBroker, intersects
from tests.micropython.mqtt_harness import Lab, MicroPythonDevice, run_lab
from tests.support import micropython
from tools.base import mqttwire
from tools.base.ports import free_port

pytestmark = pytest.mark.integration

WAIT = 10.0  # a bound for what must happen, never a measured duration
HUB = BrokerUser("hub-1", "hub-secret-1", "hub")
MONITOR = BrokerUser("monitor", "monitor-secret", "monitor")
PLUG1 = BrokerUser("plug-1", "plug-1-secret", "device")
PLUG2 = BrokerUser("plug-2", "plug-2-secret", "device")
USERS = (HUB, MONITOR, PLUG1, PLUG2)

Msg = tuple[str, bytes, bool, int]  # topic, payload, retain, qos


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await asyncio.wait_for(scenario(), 60)

    asyncio.run(main())


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, users: tuple[BrokerUser, ...] = USERS
) -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker(tmp_path / "broker", Address("127.0.0.1", free_port()), users)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def client(
    broker: EmbeddedBroker, user: BrokerUser, identifier: str | None = None, **kw: Any
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.bind.host,
        broker.bind.port,
        username=user.name,
        password=user.password,
        identifier=identifier or user.name,
        **kw,
    )


async def until(c: aiomqtt.Client, topic: str, payload: bytes) -> list[Msg]:
    """Every message ``c`` receives up to and including (topic, payload)."""
    got: list[Msg] = []

    async def read() -> None:
        async for m in c.messages:
            got.append((str(m.topic), bytes(m.payload), m.retain, m.qos))  # type: ignore[arg-type,unused-ignore]
            if got[-1][:2] == (topic, payload):
                return

    try:
        await asyncio.wait_for(read(), WAIT)
    except TimeoutError:
        raise AssertionError(f"{topic} {payload!r} never arrived; got {got}") from None
    return got


def sub_refused(granted: Any) -> bool:
    """SUBACK return code 0x80 for the one filter (paho gives ints or ReasonCodes)."""
    return int(getattr(granted[0], "value", granted[0])) == 0x80


async def eventually(check: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def refused(broker: EmbeddedBroker, **kw: Any) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(broker.bind.host, broker.bind.port, **kw):
            pass


async def disconnected(broker: EmbeddedBroker, client_id: str) -> None:
    """The broker has handled the end of ``client_id``'s connection (will sent, if any)."""

    def done() -> bool:
        inner = broker._broker
        entry = None if inner is None else inner.sessions.get(client_id)
        return entry is None or entry[0].transitions.state == "disconnected"

    await eventually(done, f"{client_id} disconnected")


# -- raw MQTT 3.1.1, for connections that vanish without a DISCONNECT --------------------


async def raw_connect(
    broker: EmbeddedBroker,
    user: BrokerUser,
    client_id: str,
    *,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """CONNECT by hand; returns the stream and the CONNACK return code."""
    reader, writer = await asyncio.open_connection(broker.bind.host, broker.bind.port)
    writer.write(
        mqttwire.connect(client_id, user.name, user.password, keepalive=keepalive, will=will)
    )
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), WAIT)
    return reader, writer, connack[3]


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), WAIT) == b""
    except ConnectionError:
        return True


# -- the ACL -------------------------------------------------------------------------------


def test_filter_intersection() -> None:
    def x(a: str, b: str) -> bool:
        return intersects(a.split("/"), b.split("/"))

    assert x("aiot/v1/#", "aiot/v1/plug-1/up")
    assert x("aiot/v1/#", "aiot/v1")  # '#' also matches the parent level
    assert x("#", "aiot/v1/#") and x("+/+/+/down", "aiot/v1/plug-1/down")
    assert x("aiot/v1/+/down", "aiot/v1/plug-1/down")
    assert not x("aiot/v1/plug-2/down", "aiot/v1/plug-1/down")
    assert not x("aiot/v1/+", "aiot/v1/plug-1/down")
    assert not x("aiot/#", "other/v1/x") and not x("$SYS/#", "aiot/v1/#")


def test_wrong_password_unknown_user_and_anonymous_are_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as broker:
            await refused(broker, username="plug-1", password="wrong", identifier="plug-1")
            await refused(broker, username="nobody", password="x", identifier="nobody")
            await refused(broker, username="plug-1", identifier="plug-1")  # no password
            await refused(broker, identifier="anon")
            await refused(broker)  # no client id either
            assert broker.stats["refused"] == 5
            async with client(broker, PLUG1) as dev:  # the right one still works
                await dev.publish("aiot/v1/plug-1/up", b"ok", qos=1)
            _, w, rc = await raw_connect(broker, PLUG1, "plug-1")
            assert rc == 0
            w.close()
            _, w, rc = await raw_connect(broker, BrokerUser("plug-1", "nope", "device"), "x")
            assert rc == 5  # CONNACK "not authorised", as Mosquitto answers a 3.1.1 client
            w.close()

    run(scenario)


def test_a_device_publishes_only_to_its_own_up_status_and_ack(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            async with client(broker, PLUG1) as dev:
                await dev.publish("aiot/v1/plug-2/up", b"forged", qos=1)
                await dev.publish("aiot/v1/plug-2/status", b"forged", qos=1, retain=True)
                await dev.publish("aiot/v1/plug-1/down", b"not mine to write", qos=1)
                await dev.publish("aiot/v1/other", b"outside", qos=0)
                await eventually(lambda: broker.stats["denied publish"] == 4, "4 refusals")
                for channel in ("up", "status", "ack"):
                    await dev.publish(f"aiot/v1/plug-1/{channel}", b"mine", qos=1)
                got = await until(hub, "aiot/v1/plug-1/ack", b"mine")
            assert [(t, p) for t, p, _, _ in got] == [
                ("aiot/v1/plug-1/up", b"mine"),
                ("aiot/v1/plug-1/status", b"mine"),
                ("aiot/v1/plug-1/ack", b"mine"),
            ]
            # Nothing forged was retained either.
            async with client(broker, HUB, "hub-late") as late:
                await late.subscribe("aiot/v1/plug-2/status", qos=1)
                await late.publish("aiot/v1/plug-2/status", b"fence", qos=1)
                assert [m[1] for m in await until(late, "aiot/v1/plug-2/status", b"fence")] == [
                    b"fence"
                ]

    run(scenario)


def test_a_device_reads_only_its_own_down(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as broker:
            async with client(broker, PLUG2) as other:  # a retained status of another device
                await other.publish("aiot/v1/plug-2/status", b"p2 online", qos=1, retain=True)
            async with client(broker, PLUG1) as dev:
                foreign = await dev.subscribe("aiot/v1/plug-2/down", qos=1)
                statuses = await dev.subscribe("aiot/v1/+/status", qos=1)
                # Filters that cannot match anything it may read are refused
                # (Mosquitto grants them and delivers nothing) ...
                assert sub_refused(foreign) and sub_refused(statuses)
                # ... and one that can is granted, and filtered on delivery.
                assert not sub_refused(await dev.subscribe("#", qos=1))
                async with client(broker, HUB) as hub:
                    await hub.publish("aiot/v1/plug-2/down", b"other", qos=1)
                    await hub.publish("aiot/v1/plug-2/up", b"not for devices", qos=1)
                    await hub.publish("aiot/v1/plug-1/down", b"cmd", qos=1)
                got = await until(dev, "aiot/v1/plug-1/down", b"cmd")
            # Only its own down; no retained status of plug-2 either.
            assert [(t, p) for t, p, _, _ in got] == [("aiot/v1/plug-1/down", b"cmd")]
            assert broker.stats["denied subscribe"] == 2
            assert broker.stats["denied receive"] == 2

    run(scenario)


def test_the_hub_reads_and_writes_everything_under_aiot_v1(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running(tmp_path) as broker,
            client(broker, HUB) as hub,
            client(broker, PLUG1) as dev,
        ):
            assert not sub_refused(await hub.subscribe("aiot/v1/+/up", qos=1))
            assert not sub_refused(await hub.subscribe("aiot/v1/+/status", qos=1))
            assert not sub_refused(await hub.subscribe("aiot/v1/+/ack", qos=1))
            assert sub_refused(await hub.subscribe("$SYS/#", qos=1))
            await dev.subscribe("aiot/v1/plug-1/down", qos=1)
            await dev.publish("aiot/v1/plug-1/up", b"batch", qos=1)
            await dev.publish("aiot/v1/plug-1/ack", b"done", qos=1)
            got = await until(hub, "aiot/v1/plug-1/ack", b"done")
            assert [p for _, p, _, _ in got] == [b"batch", b"done"]
            await hub.publish("aiot/v1/plug-1/down", b"commit-ack", qos=1)
            await hub.publish("aiot/v1/plug-2/status", b"hub may", qos=1)
            assert (await until(dev, "aiot/v1/plug-1/down", b"commit-ack"))[0][3] == 1
            got = await until(hub, "aiot/v1/plug-2/status", b"hub may")
            assert [p for _, p, _, _ in got] == [b"hub may"]
            await hub.publish("elsewhere/x", b"outside aiot/v1", qos=1)
            await eventually(lambda: broker.stats["denied publish"] == 1, "refusal")

    run(scenario)


def test_the_monitor_reads_everything_and_publishes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            running(tmp_path) as broker,
            client(broker, MONITOR) as mon,
            client(broker, HUB) as hub,
            client(broker, PLUG1) as dev,
        ):
            await mon.subscribe("aiot/v1/#", qos=1)
            await hub.subscribe("aiot/v1/#", qos=1)
            await dev.subscribe("aiot/v1/plug-1/down", qos=1)
            await mon.publish("aiot/v1/plug-1/down", b"from monitor", qos=1)
            await mon.publish("aiot/v1/monitor/up", b"own subtree", qos=1)
            await mon.publish("aiot/v1/plug-1/status", b"fake", qos=1, retain=True)
            await eventually(lambda: broker.stats["denied publish"] == 3, "3 refusals")
            await hub.publish("aiot/v1/plug-1/down", b"from hub", qos=1)
            assert [p for _, p, _, _ in await until(dev, "aiot/v1/plug-1/down", b"from hub")] == [
                b"from hub"
            ]
            assert [p for _, p, _, _ in await until(hub, "aiot/v1/plug-1/down", b"from hub")] == [
                b"from hub"
            ]
            await dev.publish("aiot/v1/plug-1/status", b"real", qos=1, retain=True)
            got = await until(mon, "aiot/v1/plug-1/status", b"real")
            assert [p for _, p, _, _ in got] == [b"from hub", b"real"]

    run(scenario)


# -- credentials change while running ---------------------------------------------------


def test_update_users_adds_and_removes_devices(tmp_path: Path) -> None:
    plug9 = BrokerUser("plug-9", "plug-9-secret", "device")

    async def scenario() -> None:
        async with running(tmp_path, (HUB, PLUG1)) as broker:
            await refused(broker, username="plug-9", password=plug9.password, identifier="plug-9")
            broker.update_users((HUB, PLUG1, plug9))
            assert broker.reloads == 1
            async with client(broker, HUB) as hub, client(broker, plug9) as dev:
                await hub.subscribe("aiot/v1/+/up", qos=1)
                await dev.publish("aiot/v1/plug-9/up", b"hello", qos=1)
                assert (await until(hub, "aiot/v1/plug-9/up", b"hello"))[0][1] == b"hello"
                async with client(broker, PLUG1) as stays:
                    # plug-9 removed: its open connection is closed, as by
                    # Mosquitto on SIGHUP; plug-1, unchanged, stays connected.
                    broker.update_users((HUB, PLUG1))
                    with pytest.raises(aiomqtt.MqttError):
                        await asyncio.wait_for(until(dev, "never", b""), WAIT)
                    assert broker.stats["kicked"] == 1
                    await stays.publish("aiot/v1/plug-1/up", b"still here", qos=1)
                    assert (await until(hub, "aiot/v1/plug-1/up", b"still here"))[-1][1]
                    # A changed password closes the connection made with the old one.
                    broker.update_users((HUB, BrokerUser("plug-1", "rotated-secret", "device")))
                    with pytest.raises(aiomqtt.MqttError):
                        await asyncio.wait_for(until(stays, "never", b""), WAIT)
                    assert broker.stats["kicked"] == 2
            await refused(broker, username="plug-9", password=plug9.password, identifier="plug-9")
            await refused(broker, username="plug-1", password=PLUG1.password, identifier="plug-1")
            async with aiomqtt.Client(
                "127.0.0.1", broker.bind.port, username="plug-1", password="rotated-secret"
            ):
                pass
            assert broker.reloads == 3

    run(scenario)


def test_a_publish_to_a_dollar_topic_ends_the_connection_with_its_will(tmp_path: Path) -> None:
    # amqtt drops such a client; 0.12.1 left its session "connected" with no
    # will. Mosquitto drops the message and keeps the client.
    status = "aiot/v1/plug-1/status"

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            reader, writer, _ = await raw_connect(
                broker, PLUG1, "plug-1", will=(status, b"offline", 1, False)
            )
            writer.write(mqttwire.publish("$SYS/x", b"!"))  # QoS 0
            await writer.drain()
            assert [p for _, p, _, _ in await until(hub, status, b"offline")] == [b"offline"]
            assert await closed_by_peer(reader)
            writer.close()
            async with client(broker, PLUG1) as dev:  # and it can come back
                await dev.publish("aiot/v1/plug-1/up", b"back", qos=1)
                assert (await until(hub, "aiot/v1/plug-1/up", b"back"))[-1][1] == b"back"

    run(scenario)


def test_a_connection_is_read_no_further_after_a_bad_packet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each bad packet comes with 64 KiB of zeros behind it. amqtt read on
    # through them: one more reserved packet type, and one more warning, for
    # every two bytes. Here the connection ends at the bad packet.
    caplog.set_level(logging.WARNING, logger="amqtt")
    zeros = b"\x00" * 65536
    topic = mqttwire.string("aiot/v1/plug-1/up")
    bad = {
        "reserved packet type": b"\x00\x00",
        # the header of a QoS 0 PUBLISH whose payload is the zeros
        "oversized PUBLISH": b"\x30" + mqttwire.remaining_length(len(topic) + len(zeros)) + topic,
    }
    stats: dict[str, int] = {}

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            for what, packet in bad.items():
                reader, writer, code = await raw_connect(broker, PLUG1, "plug-1")
                assert code == 0, what
                with contextlib.suppress(ConnectionError):
                    writer.write(packet + zeros)
                    await writer.drain()
                assert await closed_by_peer(reader), what
                writer.close()
                await disconnected(broker, "plug-1")
            async with client(broker, PLUG1) as dev:  # and the broker serves on
                await dev.publish("aiot/v1/plug-1/up", b"after", qos=1)
                assert (await until(hub, "aiot/v1/plug-1/up", b"after"))[-1][1] == b"after"
            stats.update(broker.stats)

    run(scenario)
    reserved = [r for r in caplog.records if "reserved packet" in r.getMessage()]
    assert len(reserved) == 1, f"{len(reserved)} reserved-packet warnings"
    assert stats["oversized"] == 1, stats


# -- retained messages, last will, persistent sessions ----------------------------------


def test_retained_status_and_the_last_will(tmp_path: Path) -> None:
    status = "aiot/v1/plug-1/status"

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe(status, qos=1)
            # One login, one session: a second plug-1 connection would take
            # this one over (its client id is the user name), so the status
            # goes out first.
            async with client(broker, PLUG1) as dev:
                await dev.publish(status, b"online", qos=1, retain=True)
            assert (await until(hub, status, b"online"))[-1][2] is False  # live: RETAIN 0
            _, writer, rc = await raw_connect(
                broker, PLUG1, "plug-1", will=(status, b"offline", 1, True)
            )
            assert rc == 0
            async with client(broker, MONITOR) as late:  # a late subscriber gets the copy
                await late.subscribe(status, qos=1)
                assert (await until(late, status, b"online")) == [(status, b"online", True, 1)]
            writer.transport.abort()  # the device vanishes: no DISCONNECT
            assert [p for _, p, _, _ in await until(hub, status, b"offline")] == [b"offline"]
            async with client(broker, MONITOR) as late:
                await late.subscribe(status, qos=1)
                assert (await until(late, status, b"offline")) == [(status, b"offline", True, 1)]
            # A clean DISCONNECT drops the will.
            _, writer, _ = await raw_connect(
                broker, PLUG1, "plug-1", will=(status, b"gone", 1, True)
            )
            writer.write(b"\xe0\x00")
            await writer.drain()
            await disconnected(broker, "plug-1")
            writer.close()
            async with client(broker, PLUG1, "plug-1-status") as dev:
                await dev.publish(status, b"fence", qos=1)
            assert [p for _, p, _, _ in await until(hub, status, b"fence")] == [b"fence"]

    run(scenario)


def test_keepalive_expiry_closes_the_connection_and_sends_the_will(tmp_path: Path) -> None:
    # amqtt 0.12.1 never closes such a connection: a half-open device stays
    # "connected" forever and its will never goes out.
    status = "aiot/v1/plug-1/status"

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe(status, qos=1)
            reader, writer, rc = await raw_connect(
                broker, PLUG1, "plug-1", keepalive=1, will=(status, b"offline", 1, True)
            )
            assert rc == 0
            # Silent from here on, socket open (as after a power cut on the far side).
            assert [p for _, p, _, _ in await until(hub, status, b"offline")] == [b"offline"]
            assert await closed_by_peer(reader)
            writer.close()

    run(scenario)


def test_a_will_on_another_devices_topic_is_dropped(tmp_path: Path) -> None:
    # amqtt 0.12.1 publishes (and retains) a will without the ACL check.
    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            _, writer, rc = await raw_connect(
                broker, PLUG1, "plug-1", will=("aiot/v1/plug-2/status", b"forged", 1, True)
            )
            assert rc == 0  # accepted, as by Mosquitto; the will is not kept
            assert broker.stats["denied will"] == 1
            writer.transport.abort()
            await disconnected(broker, "plug-1")
            async with client(broker, PLUG2) as dev:
                await dev.publish("aiot/v1/plug-2/status", b"fence", qos=1)
            assert [p for _, p, _, _ in await until(hub, "aiot/v1/plug-2/status", b"fence")] == [
                b"fence"
            ]
            async with client(broker, HUB, "hub-late") as late:
                await late.subscribe("aiot/v1/plug-2/status", qos=1)
                await late.publish("aiot/v1/plug-2/status", b"fence-2", qos=1)
                got = await until(late, "aiot/v1/plug-2/status", b"fence-2")
                assert [p for _, p, _, _ in got] == [b"fence-2"]  # nothing was retained

    run(scenario)


def test_persistent_session_gets_what_was_queued_while_away(tmp_path: Path) -> None:
    down = "aiot/v1/plug-1/down"

    async def scenario() -> None:
        async with running(tmp_path) as broker:
            async with client(broker, PLUG1, clean_session=False) as dev:
                await dev.subscribe(down, qos=1)
            async with client(broker, HUB) as hub:
                for i in range(3):
                    await hub.publish(down, b"while away %d" % i, qos=1)
            # Back, without subscribing again: the broker kept the session.
            async with client(broker, PLUG1, clean_session=False) as dev:
                got = await until(dev, down, b"while away 2")
                # In order, at QoS 1, RETAIN 0 (amqtt 0.12.1 sets RETAIN on these).
                assert got == [(down, b"while away %d" % i, False, 1) for i in range(3)]
                async with client(broker, HUB) as hub:
                    await hub.publish(down, b"live", qos=1)
                assert (await until(dev, down, b"live")) == [(down, b"live", False, 1)]

    run(scenario)


def test_resumed_session_gets_no_foreign_retained_messages(tmp_path: Path) -> None:
    # amqtt 0.12.1, on a persistent session's reconnect, sends the retained
    # messages matching every filter any client subscribed, unchecked.
    down = "aiot/v1/plug-1/down"

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            async with client(broker, PLUG2) as other:
                await other.publish("aiot/v1/plug-2/status", b"p2 online", qos=1, retain=True)
            async with client(broker, PLUG1, clean_session=False) as dev:
                await dev.subscribe(down, qos=1)
            async with client(broker, PLUG1, clean_session=False) as dev:
                await hub.publish(down, b"fence", qos=1)
                assert [(t, p) for t, p, _, _ in await until(dev, down, b"fence")] == [
                    (down, b"fence")
                ]

    run(scenario)


def test_an_offline_sessions_queue_is_capped(tmp_path: Path) -> None:
    down = "aiot/v1/plug-1/down"

    async def scenario() -> None:
        broker = EmbeddedBroker(
            tmp_path / "b", Address("127.0.0.1", free_port()), USERS, max_queued=3
        )
        await broker.start()
        try:
            async with client(broker, PLUG1, clean_session=False) as dev:
                await dev.subscribe(down, qos=1)
            async with client(broker, HUB) as hub:
                for i in range(5):
                    await hub.publish(down, b"%d" % i, qos=1)
            await eventually(lambda: broker.stats["queue full"] == 2, "2 messages refused")
            async with client(broker, PLUG1, clean_session=False) as dev:
                async with client(broker, HUB) as hub:
                    await hub.publish(down, b"live", qos=1)
                got = await until(dev, down, b"live")
            assert [p for _, p, _, _ in got] == [b"0", b"1", b"2", b"live"]  # the oldest kept
        finally:
            await broker.stop()

    run(scenario)


def test_a_connection_without_connect_is_closed(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = EmbeddedBroker(
            tmp_path / "b", Address("127.0.0.1", free_port()), USERS, connect_timeout_s=0.2
        )
        await broker.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.bind.port)
            assert await closed_by_peer(reader)
            writer.close()
            async with client(broker, PLUG1) as dev:  # a client in time is served
                await dev.publish("aiot/v1/plug-1/up", b"x", qos=1)
        finally:
            await broker.stop()

    run(scenario)


def test_someone_elses_client_id_gets_nothing_queued_for_it(tmp_path: Path) -> None:
    down = "aiot/v1/plug-1/down"

    async def scenario() -> None:
        async with running(tmp_path) as broker:
            async with client(broker, PLUG1, clean_session=False) as dev:
                await dev.subscribe(down, qos=1)
            async with client(broker, HUB) as hub:
                await hub.publish(down, b"for plug-1 only", qos=1)
            # plug-2, with its own valid password, takes plug-1's client id.
            async with client(broker, PLUG2, "plug-1", clean_session=False) as thief:
                await thief.subscribe("aiot/v1/plug-2/down", qos=1)
                async with client(broker, HUB) as hub:
                    await hub.publish("aiot/v1/plug-2/down", b"fence", qos=1)
                got = await until(thief, "aiot/v1/plug-2/down", b"fence")
                assert [p for _, p, _, _ in got] == [b"fence"]

    run(scenario)


def test_a_wrong_password_cannot_touch_a_devices_session(tmp_path: Path) -> None:
    # amqtt 0.12.1 deletes the session named by the client id before it
    # checks the password.
    down = "aiot/v1/plug-1/down"

    async def scenario() -> None:
        async with (
            running(tmp_path) as broker,
            client(broker, PLUG1, clean_session=False) as dev,
        ):
            await dev.subscribe(down, qos=1)
            await refused(
                broker,
                username="plug-1",
                password="guess",
                identifier="plug-1",
                clean_session=True,
            )
            async with client(broker, HUB) as hub:
                await hub.publish(down, b"still subscribed", qos=1)
            assert (await until(dev, down, b"still subscribed"))[0][1] == b"still subscribed"

    run(scenario)


@pytest.mark.parametrize("clean", [True, False])
def test_a_second_connection_with_the_same_client_id_takes_over(
    tmp_path: Path, clean: bool
) -> None:
    # amqtt 0.12.1: with a persistent session the new connection received
    # nothing and its own will was published; with a clean one the old
    # connection stayed open, its will armed.
    status, down = "aiot/v1/plug-1/status", "aiot/v1/plug-1/down"

    async def scenario() -> None:
        async with running(tmp_path) as broker, client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            old = client(broker, PLUG1, clean_session=clean, will=aiomqtt.Will(status, b"old"))
            await old.__aenter__()
            await old.subscribe(down, qos=1)
            will = aiomqtt.Will(status, b"new", qos=1, retain=True)
            async with client(broker, PLUG1, clean_session=clean, will=will) as new:
                with pytest.raises(aiomqtt.MqttError):  # the old one is closed
                    await asyncio.wait_for(until(old, "never", b""), WAIT)
                if clean:
                    await new.subscribe(down, qos=1)
                await hub.publish(down, b"to the new one", qos=1)
                assert (await until(new, down, b"to the new one"))[0][1] == b"to the new one"
                await new.publish(status, b"fence", qos=1)
                got = await until(hub, status, b"fence")  # no will, old or new
                assert [(t, p) for t, p, _, _ in got] == [
                    (down, b"to the new one"),
                    (status, b"fence"),
                ]
            with contextlib.suppress(aiomqtt.MqttError):
                await old.__aexit__(None, None, None)

    run(scenario)


# -- lifecycle --------------------------------------------------------------------------


def test_stop_closes_everything_and_frees_the_port(tmp_path: Path) -> None:
    async def scenario() -> None:
        before = asyncio.all_tasks()
        broker = EmbeddedBroker(tmp_path / "b", Address("127.0.0.1", free_port()), USERS)
        await broker.start()
        assert broker.pid is None
        task = asyncio.create_task(broker.supervise())
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", broker.bind.port)
        dev_r, dev_w, _ = await raw_connect(broker, PLUG1, "plug-1")  # connected, silent
        async with client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            await broker.stop()
            await asyncio.wait_for(task, WAIT)
            with pytest.raises(aiomqtt.MqttError):
                await asyncio.wait_for(until(hub, "never", b""), WAIT)
        assert await closed_by_peer(idle_r) and await closed_by_peer(dev_r)
        idle_w.close()
        dev_w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", broker.bind.port)
        assert asyncio.all_tasks() <= before  # nothing left running
        # The same port again, at once.
        again = EmbeddedBroker(tmp_path / "b", broker.bind, USERS)
        await again.start()
        async with client(again, PLUG1) as dev:
            await dev.publish("aiot/v1/plug-1/up", b"again", qos=1)
        await again.stop()
        assert asyncio.all_tasks() <= before  # nothing left running

    run(scenario)


def test_a_port_in_use_is_a_broker_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            broker = EmbeddedBroker(tmp_path / "b", Address("127.0.0.1", port), USERS)
            with pytest.raises(BrokerError, match=r"embedded broker on 127\.0\.0\.1:"):
                await broker.start()
            await broker.supervise()  # never started: returns at once
            await broker.stop()

    run(scenario)


def test_a_failed_broker_is_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = EmbeddedBroker(
            tmp_path / "b", Address("127.0.0.1", free_port()), USERS, backoff_s=0.05
        )
        await broker.start()
        task = asyncio.create_task(broker.supervise())
        try:
            inner = broker._broker
            assert inner is not None
            inner._broadcast_task.cancel()  # amqtt's message router dies
            await eventually(lambda: broker.restarts == 1, "a restart")
            assert broker._broker is not inner
            async with client(broker, HUB) as hub, client(broker, PLUG1) as dev:
                await hub.subscribe("aiot/v1/+/up", qos=1)
                await dev.publish("aiot/v1/plug-1/up", b"after restart", qos=1)
                await until(hub, "aiot/v1/plug-1/up", b"after restart")
        finally:
            await broker.stop()
            await asyncio.wait_for(task, WAIT)

    run(scenario)


# -- the edge client (edge/mqtt.py) ------------------------------------------------------

MPY = pytest.mark.micropython
RUNTIMES = [pytest.param("micropython", marks=MPY), "cpython"]


@pytest.fixture(autouse=True)
def _micropython(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("micropython"):
        micropython()


def edge_config(user: BrokerUser, port: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client_id": user.name,
        "servers": [["127.0.0.1", port]],
        "user": user.name,
        "password": user.password,
        "keepalive": 5,
        "timeout_s": 5,
        "ack_timeout_s": 5,
        "backoff_s": 0.1,
        "backoff_max_s": 0.5,
        "mode": "connect",
    }
    cfg.update(kw)
    return cfg


def run_edge(tmp_path: Path, scenario: Callable[[Lab, EmbeddedBroker], Awaitable[None]]) -> None:
    async def with_broker(lab: Lab) -> None:
        async with running(tmp_path) as broker:
            try:
                await scenario(lab, broker)
            finally:
                await lab.close()
                lab.devices.clear()

    run_lab(with_broker)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_edge_client_round_trips_and_confinement(tmp_path: Path, runtime: str) -> None:
    down = "aiot/v1/plug-1/down"

    async def scenario(lab: Lab, broker: EmbeddedBroker) -> None:
        port = broker.bind.port
        async with client(broker, HUB) as hub:
            await hub.subscribe("aiot/v1/#", qos=1)
            dev = await lab.device(runtime, edge_config(PLUG1, port, subs=[[down, 1]]))
            assert (await dev.wait("sub_done", id=down))["rc"] == 1
            dev.send(op="sub", id="foreign", topic="aiot/v1/plug-2/down", qos=1)
            assert "refused" in (await dev.wait("sub_error", id="foreign"))["error"]
            dev.send(op="pub", id=1, topic="aiot/v1/plug-2/up", hex="ee", qos=1)
            await dev.wait("pub_done", id=1)  # PUBACKed, and dropped (as Mosquitto)
            dev.send(op="pub", id=2, topic="aiot/v1/plug-1/up", hex="0102", qos=1)
            await dev.wait("pub_done", id=2)
            got = await until(hub, "aiot/v1/plug-1/up", b"\x01\x02")
            assert [t for t, _, _, _ in got] == ["aiot/v1/plug-1/up"]
            await hub.publish(down, b"ack-7", qos=1)
            msg = await dev.wait("msg", topic=down)
            assert msg["hex"] == b"ack-7".hex() and msg["retained"] is False
            await dev.stop()
        bad = edge_config(PLUG1, port, client_id="intruder", password="wrong")
        failed = await (await lab.device(runtime, bad)).wait("connect_failed")
        assert "CONNACK 5" in failed["error"]

    run_edge(tmp_path, scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_edge_client_persistent_session(tmp_path: Path, runtime: str) -> None:
    down = "aiot/v1/plug-1/down"

    async def scenario(lab: Lab, broker: EmbeddedBroker) -> None:
        cfg = edge_config(PLUG1, broker.bind.port, subs=[[down, 1]])
        dev = await lab.device(runtime, cfg)
        await dev.wait("sub_done")
        await dev.stop()  # clean DISCONNECT; the session stays (clean_session=False)
        async with client(broker, HUB) as hub:
            for i in range(3):
                await hub.publish(down, b"while-away-%d" % i, qos=1)
        again = await lab.device(runtime, dict(cfg, subs=[]))
        assert (await again.wait("up"))["session_present"] is True
        for i in range(3):
            msg = await again.wait("msg")
            assert bytes.fromhex(msg["hex"]) == b"while-away-%d" % i
            assert msg["retained"] is False
        await again.stop()

    run_edge(tmp_path, scenario)


@MPY
def test_edge_client_last_will_on_kill(tmp_path: Path) -> None:
    status = "aiot/v1/plug-1/status"

    async def scenario(lab: Lab, broker: EmbeddedBroker) -> None:
        async with client(broker, HUB) as hub:
            await hub.subscribe(status, qos=1)
            cfg = edge_config(PLUG1, broker.bind.port, will=[status, b"offline".hex(), 1, True])
            dev = await lab.device("micropython", cfg)
            await dev.wait("up")
            dev.send(op="pub", id=1, topic=status, hex=b"online".hex(), qos=1, retain=True)
            await until(hub, status, b"online")
            assert isinstance(dev, MicroPythonDevice)
            dev.kill()  # SIGKILL: no DISCONNECT
            assert [p for _, p, _, _ in await until(hub, status, b"offline")] == [b"offline"]

    run_edge(tmp_path, scenario)
