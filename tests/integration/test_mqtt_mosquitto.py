"""edge/mqtt.py against real Mosquitto brokers.

The device is tests/micropython/mqtt_device.py under the real MicroPython
interpreter (edge/mqtt.py compiled by mpy-cross, 96 KB heap), or the same
runner on CPython asyncio; the other side is aiomqtt, the hub's MQTT library.
Brokers are stopped and started again on the same port to play failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.micropython.mqtt_harness import WAIT, Lab, MicroPythonDevice, run_lab
from tests.support import micropython, need_tool
from tools.base.ports import free_port
from tools.lab.mosquitto import INSTALL_HINT, find_mosquitto, running_mosquitto

pytestmark = pytest.mark.integration

MPY = pytest.mark.micropython
RUNTIMES = [pytest.param("micropython", marks=MPY), "cpython"]
_ids = itertools.count()


@pytest.fixture(autouse=True)
def _tools(request: pytest.FixtureRequest) -> None:
    if find_mosquitto() is None:
        need_tool("mosquitto", INSTALL_HINT)
    if request.node.get_closest_marker("micropython"):
        micropython()


class Broker:
    """Mosquitto on a fixed port, stopped and started from async code."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.users = users
        self.port = free_port()
        self._cm: contextlib.AbstractContextManager[int] | None = None

    async def start(self) -> Broker:
        self._cm = running_mosquitto(self.workdir, self.port, users=self.users)
        await asyncio.to_thread(self._cm.__enter__)
        return self

    async def stop(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await asyncio.to_thread(cm.__exit__, None, None, None)


@contextlib.contextmanager
def brokers(tmp_path: Path, n: int, users: dict[str, str] | None = None) -> Iterator[list[Broker]]:
    made = [Broker(tmp_path / f"broker{i}", users) for i in range(n)]
    try:
        yield made
    finally:
        for b in made:
            if b._cm is not None:
                b._cm.__exit__(None, None, None)


class Observer:
    """An aiomqtt client that records every message it receives."""

    def __init__(self, port: int, *subs: str, **kw: Any) -> None:
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=f"obs-{next(_ids)}", **kw)
        self.subs = subs
        self.got: list[tuple[str, bytes, bool]] = []
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        await self.client.__aenter__()
        for s in self.subs:
            await self.client.subscribe(s, qos=1)
        self.task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)

    async def _collect(self) -> None:
        async for m in self.client.messages:
            self.got.append((str(m.topic), bytes(m.payload), m.retain))
            self.changed.set()

    async def wait(self, topic: str, payload: bytes, timeout: float = WAIT) -> None:
        async def find() -> None:
            while not any(t == topic and p == payload for t, p, _ in self.got):
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            raise AssertionError(f"{topic} {payload!r} never arrived; got {self.got}") from None

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=1, retain=retain)


def config(cid: str, *ports: int, **kw: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "client_id": cid,
        "servers": [["127.0.0.1", p] for p in ports],
        "keepalive": 5,
        "timeout_s": 5,
        "ack_timeout_s": 5,
        "backoff_s": 0.1,
        "backoff_max_s": 0.5,
        "mode": "start",
    }
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_credentials_subscribe_and_qos1_round_trips(tmp_path: Path, runtime: str) -> None:
    users = {"dev-1": "devpass", "hub": "hubpass"}

    async def scenario(lab: Lab) -> None:
        with brokers(tmp_path, 1, users) as (b,):
            await b.start()
            async with Observer(b.port, "aiot/v1/+/up", username="hub", password="hubpass") as hub:
                cfg = config(
                    "dev-1",
                    b.port,
                    user="dev-1",
                    password="devpass",
                    mode="connect",
                    subs=[["aiot/v1/dev-1/down", 1], ["loop/dev-1", 1]],
                )
                dev = await lab.device(runtime, cfg)
                await dev.wait("sub_done", id="aiot/v1/dev-1/down")
                await dev.wait("sub_done", id="loop/dev-1")
                # device -> broker -> hub
                dev.send(op="pub", id=1, topic="aiot/v1/dev-1/up", hex="0102", qos=1)
                await dev.wait("pub_done", id=1)
                await hub.wait("aiot/v1/dev-1/up", b"\x01\x02")
                # hub -> broker -> device
                await hub.publish("aiot/v1/dev-1/down", b"ack-7")
                msg = await dev.wait("msg", topic="aiot/v1/dev-1/down")
                assert msg["hex"] == b"ack-7".hex()
                # device -> broker -> device, QoS 1 both ways
                dev.send(op="pub", id=2, topic="loop/dev-1", hex="ff" * 300, qos=1)
                await dev.wait("pub_done", id=2)
                assert (await dev.wait("msg", topic="loop/dev-1"))["hex"] == "ff" * 300
                await dev.stop()

                bad = dict(cfg, client_id="dev-2", password="wrong")
                intruder = await lab.device(runtime, bad)
                failed = await intruder.wait("connect_failed")
                assert "broker refused connection" in failed["error"]
                assert "CONNACK 5" in failed["error"] or "CONNACK 4" in failed["error"]
            await b.stop()

    run_lab(scenario)


@MPY
def test_persistent_session_delivers_what_was_sent_while_away(tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        with brokers(tmp_path, 1) as (b,):
            await b.start()
            down = "aiot/v1/persist-1/down"
            cfg = config("persist-1", b.port, subs=[[down, 1]])
            dev = await lab.device("micropython", cfg)
            await dev.wait("sub_done")
            await dev.stop()  # clean DISCONNECT; the session stays (clean_session=False)
            async with Observer(b.port) as hub:
                for i in range(3):
                    await hub.publish(down, b"while-away-%d" % i)
            # Back, with no subscription of its own: the broker kept the session.
            again = await lab.device("micropython", dict(cfg, subs=[]))
            assert (await again.wait("up"))["session_present"] is True
            for i in range(3):
                msg = await again.wait("msg")
                assert bytes.fromhex(msg["hex"]) == b"while-away-%d" % i
            await again.stop()
            await b.stop()

    run_lab(scenario)


@MPY
def test_last_will_on_kill_but_not_after_a_clean_disconnect(tmp_path: Path) -> None:
    online, offline = b"online".hex(), b"offline".hex()

    async def scenario(lab: Lab) -> None:
        with brokers(tmp_path, 1) as (b,):
            await b.start()
            # Clean disconnect: the retained "online" stays, no will.
            t1 = "aiot/v1/w-1/status"
            dev = await lab.device(
                "micropython", config("w-1", b.port, will=[t1, offline, 1, True])
            )
            dev.send(op="pub", id=1, topic=t1, hex=online, qos=1, retain=True)
            await dev.wait("pub_done", id=1)
            await dev.stop()
            async with Observer(b.port, t1) as late:
                await late.wait(t1, b"online")
                assert all(p != b"offline" for _, p, _ in late.got)

            # Killed: the broker publishes the will.
            t2 = "aiot/v1/w-2/status"
            async with Observer(b.port, t2) as hub:
                dev2 = await lab.device(
                    "micropython", config("w-2", b.port, will=[t2, offline, 1, True])
                )
                dev2.send(op="pub", id=1, topic=t2, hex=online, qos=1, retain=True)
                await hub.wait(t2, b"online")
                assert isinstance(dev2, MicroPythonDevice)
                dev2.kill()  # SIGKILL: no DISCONNECT
                await hub.wait(t2, b"offline")
            await b.stop()

    run_lab(scenario)


@MPY
def test_broker_restart_on_the_same_port(tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        with brokers(tmp_path, 1) as (b,):
            await b.start()
            down = "aiot/v1/r-1/down"
            dev = await lab.device(
                "micropython", config("r-1", b.port, keepalive=2, subs=[[down, 1]])
            )
            await dev.wait("sub_done")
            await dev.wait("up", connects=1)
            await b.stop()
            await dev.wait("down")
            await b.start()  # same port, empty: no sessions, no subscriptions
            up = await dev.wait("up", connects=2)
            assert up["reconnects"] == 1 and up["server"] == 0
            async with Observer(b.port, "aiot/v1/r-1/up") as hub:
                dev.send(op="pub", id=1, topic="aiot/v1/r-1/up", hex="aa", qos=1)
                await dev.wait("pub_done", id=1)
                await hub.wait("aiot/v1/r-1/up", b"\xaa")
                # The subscription was sent again on reconnect.
                await hub.publish(down, b"after-restart")
                msg = await dev.wait("msg", topic=down)
                assert msg["hex"] == b"after-restart".hex()
            await dev.stop()
            await b.stop()

    run_lab(scenario)


@MPY
def test_failover_to_the_second_broker_and_back_to_the_preferred(tmp_path: Path) -> None:
    async def scenario(lab: Lab) -> None:
        with brokers(tmp_path, 2) as (p, s):
            await p.start()
            await s.start()
            up_topic = "aiot/v1/f-1/up"
            cfg = config("f-1", p.port, s.port, keepalive=2, return_after_s=1, probe_s=0.2, subs=[])
            dev = await lab.device("micropython", cfg)
            assert (await dev.wait("up"))["server"] == 0

            await p.stop()  # the broker in use dies
            await dev.wait("up", server=1)
            async with Observer(s.port, up_topic) as hub:
                dev.send(op="pub", id=1, topic=up_topic, hex="01", qos=1)
                await dev.wait("pub_done", id=1)
                await hub.wait(up_topic, b"\x01")

            await p.start()  # the preferred one is back on its port
            up = await dev.wait("up", server=0)
            assert up["reconnects"] == 2
            async with Observer(p.port, up_topic) as hub:
                dev.send(op="pub", id=2, topic=up_topic, hex="02", qos=1)
                await dev.wait("pub_done", id=2)
                await hub.wait(up_topic, b"\x02")
            await dev.stop()
            await p.stop()
            await s.stop()

    run_lab(scenario)
