"""edge/mqtt.py on the wire, against a scripted fake broker.

The client runs under the real MicroPython interpreter (edge/mqtt.py compiled
by mpy-cross, in a 96 KB heap, as on the firmware) and, for the same
scenarios, under CPython asyncio in this process. Every packet it writes is
compared with bytes computed by hand from the MQTT 3.1.1 specification.
"""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.micropython.mqtt_harness import (
    CONNACK_OK,
    WAIT,
    Device,
    Lab,
    puback,
    run_lab,
    suback,
)
from tests.support import free_port
from tools.base.mqttwire import publish

RUNTIMES = [
    pytest.param("micropython", marks=pytest.mark.micropython),
    pytest.param("cpython", marks=pytest.mark.unit),
]
# edge/mqtt.py imported as source (compiled on the device), in a bigger heap.
WITH_SOURCE = [*RUNTIMES, pytest.param("micropython-source", marks=pytest.mark.micropython)]

DISCONNECT = b"\xe0\x00"
PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


def config(*ports: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client_id": "dev-1",
        "servers": [["127.0.0.1", p] for p in ports],
        "keepalive": 0,  # no PINGREQ in the middle of exact sequences
        "timeout_s": 5,
        "ack_timeout_s": 60,
        "backoff_s": 0.05,
        "backoff_max_s": 0.2,
    }
    cfg.update(kw)
    return cfg


async def status(dev: Device, **match: Any) -> dict[str, Any]:
    """Ask for the status until it matches (the client gets there on its own)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        dev.send(op="status")
        st = await dev.wait("status")
        if all(st.get(k) == v for k, v in match.items()):
            return st
        if loop.time() > deadline:
            raise AssertionError(f"status never matched {match}: {st}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("runtime", WITH_SOURCE)
def test_connect_carries_will_user_password_and_keepalive(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        cfg = config(
            broker.port,
            user="u",
            password="p",
            keepalive=300,
            will=["aiot/v1/dev-1/status", "006f6666", 1, True],
        )
        dev = await lab.device(runtime, cfg)
        conn, connect = await broker.client()
        # Fixed header 0x10, remaining length 51 (10 + 7 + 22 + 6 + 3 + 3), then
        # protocol name "MQTT", level 4, flags 0xEC (user, password, will
        # retain, will QoS 1, will; no clean session), keepalive 300 = 0x012C,
        # and length-prefixed client id, will topic, will payload, user, password.
        assert connect == bytes.fromhex(
            "10 33 0004 4d515454 04 ec 012c"
            " 0005 6465762d31"
            " 0014 61696f742f76312f6465762d312f737461747573"
            " 0004 006f6666"
            " 0001 75"
            " 0001 70"
        )
        await conn.send(b"\x20\x02\x01\x00")  # accepted, session present
        up = await dev.wait("up")
        assert up["server"] == 0 and up["session_present"] is True
        dev.send(op="stop")
        await conn.expect(DISCONNECT)  # a clean goodbye: the broker drops the will
        await conn.closed()
        await dev.wait("stopped")
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_clean_session_connect_without_will_or_credentials(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, client_id="abc", clean_session=True))
        conn, connect = await broker.client()
        # Remaining length 15: 10 bytes of variable header + 2 + 3; flags 0x02.
        assert connect == bytes.fromhex("10 0f 0004 4d515454 04 02 0000 0003 616263")
        await conn.send(CONNACK_OK)
        assert (await dev.wait("up"))["session_present"] is False
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", WITH_SOURCE)
def test_subscribe_publish_and_puback_bytes(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, subs=[["a/b", 1]]))
        conn = await broker.accept()
        # SUBSCRIBE: 0x82, length 8, packet id 1, topic filter "a/b", QoS 1.
        await conn.expect(bytes.fromhex("82 08 0001 0003 612f62 01"))
        await conn.send(suback(1, 1))
        assert (await dev.wait("sub_done", id="a/b"))["rc"] == 1

        dev.send(op="pub", id=1, topic="a/b", hex="6869", qos=0)
        await conn.expect(bytes.fromhex("30 07 0003 612f62 6869"))  # QoS 0: no packet id
        await dev.wait("pub_done", id=1)

        dev.send(op="pub", id=2, topic="a/b", hex="6869", qos=1)
        await conn.expect(bytes.fromhex("32 09 0003 612f62 0002 6869"))  # packet id 2
        await conn.nothing_for(0.2)
        await conn.send(puback(2))
        await dev.wait("pub_done", id=2)

        dev.send(op="pub", id=3, topic="a/b", hex="", qos=1, retain=True)
        await conn.expect(bytes.fromhex("33 07 0003 612f62 0003"))  # retained, empty
        await conn.send(puback(3))
        await dev.wait("pub_done", id=3)

        # 205 bytes of remaining length take two bytes: 0xCD 0x01.
        dev.send(op="pub", id=4, topic="a/b", hex="ab" * 200, qos=0, retain=True)
        await conn.expect(bytes.fromhex("31 cd01 0003 612f62") + b"\xab" * 200)
        await dev.wait("pub_done", id=4)

        # Incoming QoS 1: delivered as (str, bytes, retained), then PUBACKed.
        await conn.send(publish(b"a/b", b"\x01\x02", qos=1, pid=0x1234))
        msg = await dev.wait("msg")
        assert (msg["topic"], msg["hex"], msg["retained"], msg["type"]) == (
            "a/b",
            "0102",
            False,
            "bytes",
        )
        await conn.expect(bytes.fromhex("40 02 1234"))
        # Incoming QoS 0, retained: delivered, never acknowledged.
        await conn.send(publish(b"a/b", b"r", retain=True))
        assert (await dev.wait("msg"))["retained"] is True
        await status(dev, inflight=0, connects=1)
        dev.send(op="stop")
        await conn.expect(DISCONNECT)
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pingreq_keeps_the_link_and_a_silent_broker_loses_it(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, keepalive=1))
        conn = await broker.accept()
        for _ in range(3):  # answered pings keep the link up
            await conn.expect(PINGREQ)
            await conn.send(PINGRESP)
        await status(dev, up=True, connects=1)
        # Unanswered: within the keepalive window the client gives up on the
        # link, closes it and connects again.
        await conn.expect(PINGREQ)
        await conn.closed()
        down = await dev.wait("down")
        assert "keepalive" in down["error"]
        conn2 = await broker.accept()
        await dev.wait("up", connects=2)
        await conn2.expect(PINGREQ)
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_refused_subscription_raises_and_is_not_sent_again(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, subs=[["ok", 1]]))
        conn = await broker.accept()
        await conn.expect(bytes.fromhex("82 07 0001 0002 6f6b 01"))
        await conn.send(suback(1, 1))
        await dev.wait("sub_done", id="ok")
        dev.send(op="sub", id="no", topic="no", qos=0)
        await conn.expect(bytes.fromhex("82 07 0002 0002 6e6f 00"))
        await conn.send(suback(2, 0x80))
        err = await dev.wait("sub_error", id="no")
        assert "subscription refused: no" in err["error"]
        await conn.close()
        conn2 = await broker.accept()
        await conn2.expect(bytes.fromhex("82 07 0003 0002 6f6b 01"))  # only "ok" again
        await conn2.send(suback(3, 1))
        await dev.wait("up", connects=2)
        await conn2.nothing_for(0.2)

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_subscribing_before_the_first_connection_sends_one_subscribe(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, mode="start", subs=[["d", 1]]))
        conn = await broker.accept()
        await conn.expect(bytes.fromhex("82 06 0001 0001 64 01"))
        await conn.send(suback(1, 0))
        assert (await dev.wait("sub_done", id="d"))["rc"] == 0
        await conn.nothing_for(0.2)

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_missing_puback_resends_with_dup(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, ack_timeout_s=0.3))
        conn = await broker.accept()
        dev.send(op="pub", id=1, topic="t", hex="01", qos=1)
        await conn.expect(bytes.fromhex("32 06 0001 74 0001 01"))
        # No PUBACK: the same message again, with DUP (0x08) set.
        await conn.expect(bytes.fromhex("3a 06 0001 74 0001 01"))
        await conn.expect(bytes.fromhex("3a 06 0001 74 0001 01"))
        await conn.send(puback(1))
        await dev.wait("pub_done", id=1)
        await status(dev, inflight=0)
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_reconnect_resubscribes_then_resends_before_new_messages(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, subs=[["s/t", 1]]))
        conn = await broker.accept()
        await conn.expect(bytes.fromhex("82 08 0001 0003 732f74 01"))
        await conn.send(suback(1))
        await dev.wait("sub_done")
        dev.send(op="pub", id="A", topic="x/a", hex="0a", qos=1)
        await conn.expect(bytes.fromhex("32 08 0003 782f61 0002 0a"))
        dev.send(op="pub", id="B", topic="x/b", hex="0b", qos=1)
        await conn.expect(bytes.fromhex("32 08 0003 782f62 0003 0b"))
        await conn.close()  # no PUBACK for either
        await dev.wait("down")

        # The client is back, but held before CONNACK while C is published.
        conn2, _ = await broker.client()
        dev.send(op="pub", id="C", topic="x/c", hex="0c", qos=1)
        await status(dev, inflight=3)
        await conn2.send(CONNACK_OK)
        # Subscription first, then A and B again with DUP, then C (never sent
        # before, so no DUP), all before the client reports itself up.
        await conn2.expect(bytes.fromhex("82 08 0005 0003 732f74 01"))
        await conn2.send(suback(5))
        await conn2.expect(bytes.fromhex("3a 08 0003 782f61 0002 0a"))
        await conn2.expect(bytes.fromhex("3a 08 0003 782f62 0003 0b"))
        await conn2.expect(bytes.fromhex("32 08 0003 782f63 0004 0c"))
        for pid, name in ((2, "A"), (3, "B"), (4, "C")):
            await conn2.send(puback(pid))
            await dev.wait("pub_done", id=name)
        up = await dev.wait("up", connects=2)
        assert up["reconnects"] == 1
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_inflight_is_bounded_and_publish_waits_for_a_slot(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, max_inflight=2))
        conn = await broker.accept()
        for i in range(3):
            dev.send(op="pub", id=i, topic="t", hex="%02x" % i, qos=1)
        await conn.expect(bytes.fromhex("32 06 0001 74 0001 00"))
        await conn.expect(bytes.fromhex("32 06 0001 74 0002 01"))
        await status(dev, inflight=2)
        await conn.nothing_for(0.3)  # the third waits for a free slot
        await conn.send(puback(1))
        await dev.wait("pub_done", id=0)
        await conn.expect(bytes.fromhex("32 06 0001 74 0003 02"))
        await conn.send(puback(2) + puback(3))
        await dev.wait("pub_done", id=1)
        await dev.wait("pub_done", id=2)
        await dev.stop()

    run_lab(scenario)


BAD = [
    ("remaining length over 4 bytes", b"\x30\xff\xff\xff\xff\x01", "bad remaining length"),
    ("PUBACK of length 3", b"\x40\x03\x00\x01\x00", "bad packet 0x40, length 3"),
    ("reserved packet type", b"\xf0\x00", "bad packet 0xf0"),
    ("QoS 2 PUBLISH", b"\x34\x07\x00\x03a/b\x00\x01", "bad packet 0x34"),
    ("topic longer than packet", b"\x30\x03\x00\x05a", "bad PUBLISH"),
    ("PINGRESP with a body", b"\xd0\x01\x00", "bad packet 0xd0"),
    ("second CONNACK", CONNACK_OK, "bad packet 0x20"),
    ("QoS 1 PUBLISH with packet id 0", publish(b"a/b", b"x", qos=1, pid=0), "bad PUBLISH"),
    ("topic not UTF-8", b"\x30\x04\x00\x02\xff\xfe", None),
    ("cut short", b"\x30\x0a\x00\x03a/b", "closed by broker"),
]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_malformed_packets_drop_the_link_and_the_client_carries_on(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port))
        for name, data, error in BAD:
            conn = await broker.accept()
            await dev.wait("up")
            await conn.send(data)
            if name == "cut short":
                await conn.close()
            else:
                await conn.closed()  # the client hangs up
            down = await dev.wait("down")
            if error is not None:
                assert error in down["error"], (name, down)
        conn = await broker.accept()
        await conn.send(publish(b"ok", b"fine"))
        assert (await dev.wait("msg"))["hex"] == b"fine".hex()
        st = await status(dev, up=True)
        assert st["connects"] == len(BAD) + 1
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_oversized_publish_is_skipped_acked_and_counted(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        # 200 KB in a 96 KB heap: delivering it would need it allocated.
        dev = await lab.device(runtime, config(broker.port, max_payload=64))
        conn = await broker.accept()
        await conn.send(publish(b"big", bytes(range(256)) * 800, qos=1, pid=7))
        await conn.expect(puback(7))  # acknowledged, or it would come back forever
        await conn.send(publish(b"big", b"\x00" * 65))  # QoS 0, one byte over
        await conn.send(publish(b"t" * 300, b"x", qos=1, pid=8))  # topic over 256 bytes
        await conn.expect(puback(8))
        await conn.send(publish(b"fits", b"\x11" * 64, qos=1, pid=9))  # exactly the limit
        msg = await dev.wait("msg")
        assert (msg["topic"], msg["hex"]) == ("fits", "11" * 64)
        await conn.expect(puback(9))
        st = await status(dev, dropped=3)
        assert st["connects"] == 1 and st["up"] is True  # same link throughout
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("code", "reason"), [(4, "bad user name or password"), (5, "not authorized")]
)
def test_refused_connack_is_a_clear_oserror(runtime: str, code: int, reason: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, mode="connect"))
        await broker.accept(connack=bytes([0x20, 2, 0, code]))
        failed = await dev.wait("connect_failed")
        assert reason in failed["error"] and f"CONNACK {code}" in failed["error"]
        assert await dev.exited() == 0

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_connect_gives_up_on_a_broker_that_never_answers(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dead = free_port()  # nothing listens here
        dev = await lab.device(runtime, config(dead, broker.port, mode="connect", timeout_s=0.5))
        await broker.client()  # CONNECT arrives; no CONNACK ever
        failed = await dev.wait("connect_failed")
        assert "timeout: CONNACK" in failed["error"]
        assert await dev.exited() == 0

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_callback_exception_is_counted_and_the_message_still_acked(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device(runtime, config(broker.port, cb_raise=True))
        conn = await broker.accept()
        await conn.send(publish(b"t", b"1", qos=1, pid=3))
        await dev.wait("msg")
        await conn.expect(puback(3))
        st = await status(dev, cb_errors=1)
        assert st["connects"] == 1 and st["up"] is True
        await dev.stop()

    run_lab(scenario)


@pytest.mark.micropython
def test_puback_waits_for_the_callback_to_return(tmp_path: Path) -> None:
    gate = tmp_path / "gate"

    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device("micropython", config(broker.port, cb_gate=str(gate)))
        conn = await broker.accept()
        await conn.send(publish(b"cmd", b"go", qos=1, pid=9))
        await dev.wait("msg")  # the callback is running, and blocks the device
        await conn.nothing_for(0.3)
        gate.write_text("")
        await conn.expect(puback(9))
        await dev.stop()

    run_lab(scenario)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_failover_next_server_and_return_to_the_preferred(runtime: str) -> None:
    async def scenario(lab: Lab) -> None:
        preferred = free_port()  # down at first
        second = await lab.broker()
        cfg = config(preferred, second.port, mode="start", return_after_s=0.5, probe_s=0.1)
        dev = await lab.device(runtime, cfg)
        conn = await second.accept()
        assert (await dev.wait("up"))["server"] == 1

        first = await lab.broker(preferred)  # the preferred server comes back
        await conn.expect(DISCONNECT)  # after return_after_s of good probes
        conn0 = await first.accept()
        up = await dev.wait("up", server=0)
        assert up["reconnects"] == 1

        dev.send(op="next")  # the application gives up on this broker
        await conn0.expect(DISCONNECT)
        await second.accept()
        await dev.wait("up", server=1)
        # ... and returns to the preferred one again once it has been up long enough.
        await first.accept()
        await dev.wait("up", server=0, reconnects=3)
        await dev.stop()

    run_lab(scenario)


@pytest.mark.micropython
def test_memory_after_a_busy_link_fits_the_budget() -> None:
    async def scenario(lab: Lab) -> None:
        broker = await lab.broker()
        dev = await lab.device("micropython", config(broker.port, subs=[["down", 1]]))
        conn = await broker.accept()
        await conn.expect(bytes.fromhex("82 09 0001 0004 646f776e 01"))
        await conn.send(suback(1))
        for i in range(4):
            dev.send(op="pub", id=i, topic="up", hex="ab" * 400, qos=1)
        for pid in range(2, 6):
            await conn.packet()
            await conn.send(puback(pid))
        await conn.send(publish(b"down", b"\x5a" * 4096, qos=1, pid=1))  # the largest accepted
        msg = await dev.wait("msg")
        assert (msg["len"], msg["crc"]) == (4096, zlib.crc32(b"\x5a" * 4096))
        await conn.expect(puback(1))
        dev.send(op="mem")
        mem = await dev.wait("mem")
        # The firmware has 96 KB for everything: codec, slots, uplink, executor
        # and this client. Measured here: about 16 KB of code, 33 KB in all
        # with the runner, the link and a grown receive buffer.
        assert mem["module"] < 20 * 1024, mem
        assert mem["total"] < 40 * 1024, mem
        await dev.stop()

    run_lab(scenario)
