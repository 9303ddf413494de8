"""The hub's supervised Mosquitto: confinement, reload, restart, dies with its parent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiomqtt
import pytest

from hub.core.config import Address
from hub.link.broker import (
    BrokerUser,
    MosquittoSupervisor,
    find_mosquitto,
    password_line,
    port_open,
)
from tests.support import ROOT, need_tool, wait_until
from tools.base.ports import free_port
from tools.lab.mosquitto import INSTALL_HINT

pytestmark = pytest.mark.integration

USERS = (
    BrokerUser("hub-1", "hub-secret-1", "hub"),
    BrokerUser("monitor", "monitor-secret", "monitor"),
    BrokerUser("plug-1", "plug-1-secret", "device"),
    BrokerUser("plug-2", "plug-2-secret", "device"),
)


@pytest.fixture(autouse=True)
def _need_mosquitto() -> None:
    if find_mosquitto() is None:
        need_tool("mosquitto", INSTALL_HINT)


def test_password_line_is_mosquitto_pbkdf2_format() -> None:
    line = password_line("plug-1", "pw", salt=bytes(12))
    user, _, rest = line.partition(":")
    assert user == "plug-1" and rest.startswith("$7$101$AAAAAAAAAAAAAAAA$")
    with pytest.raises(ValueError):
        BrokerUser("plug/1", "x", "device")


async def _started(tmp_path: Path, users: tuple[BrokerUser, ...] = USERS) -> MosquittoSupervisor:
    sup = MosquittoSupervisor(tmp_path / "broker", Address("127.0.0.1", free_port()), users)
    await sup.start()
    return sup


def _client(sup: MosquittoSupervisor, user: str, password: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        sup.bind.host, sup.bind.port, username=user, password=password, identifier=user
    )


async def _collect(client: aiomqtt.Client, n: int, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []

    async def read() -> None:
        async for msg in client.messages:
            got.append((str(msg.topic), bytes(msg.payload)))  # type: ignore[arg-type]
            if len(got) >= n:
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), seconds)
    return got


def test_devices_are_confined_to_their_own_subtree(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = await _started(tmp_path)
        try:
            async with _client(sup, "hub-1", "hub-secret-1") as hub:
                await hub.subscribe("aiot/v1/#", qos=1)
                async with _client(sup, "plug-1", "plug-1-secret") as dev:
                    await dev.publish("aiot/v1/plug-1/up", b"mine", qos=1)
                    await dev.publish("aiot/v1/plug-2/up", b"forged", qos=1)
                    await dev.publish("aiot/v1/plug-1/down", b"not mine to write", qos=1)
                    got = await _collect(hub, 3, 1.5)
                    assert got == [("aiot/v1/plug-1/up", b"mine")]
            async with _client(sup, "plug-1", "plug-1-secret") as dev:
                # Mosquitto grants the subscriptions and filters on delivery.
                await dev.subscribe("aiot/v1/plug-1/down", qos=1)
                await dev.subscribe("aiot/v1/plug-2/down", qos=1)
                await dev.subscribe("aiot/v1/+/up", qos=1)
                async with _client(sup, "hub-1", "hub-secret-1") as hub:
                    await hub.publish("aiot/v1/plug-1/down", b"cmd", qos=1)
                    await hub.publish("aiot/v1/plug-2/down", b"other", qos=1)
                    await hub.publish("aiot/v1/plug-2/up", b"not for devices", qos=1)
                assert await _collect(dev, 3, 1.5) == [("aiot/v1/plug-1/down", b"cmd")]
            async with _client(sup, "monitor", "monitor-secret") as mon:
                await mon.subscribe("aiot/v1/#", qos=1)
                async with _client(sup, "plug-2", "plug-2-secret") as dev:
                    await dev.publish("aiot/v1/plug-2/status", b"on", qos=1, retain=True)
                assert await _collect(mon, 1, 2.0) == [("aiot/v1/plug-2/status", b"on")]
            with pytest.raises(aiomqtt.MqttError):
                async with _client(sup, "plug-1", "wrong password"):
                    pass
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(sup.bind.host, sup.bind.port, identifier="anon"):
                    pass
        finally:
            await sup.stop()

    asyncio.run(scenario())


def test_new_device_can_connect_after_reload(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = await _started(tmp_path, USERS[:1])
        try:
            with pytest.raises(aiomqtt.MqttError):
                async with _client(sup, "plug-9", "new-secret"):
                    pass
            sup.update_users((*USERS[:1], BrokerUser("plug-9", "new-secret", "device")))
            for _ in range(50):  # SIGHUP is asynchronous
                try:
                    async with _client(sup, "plug-9", "new-secret") as dev:
                        await dev.publish("aiot/v1/plug-9/up", b"hello", qos=1)
                    break
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("plug-9 could not connect after the reload")
            assert sup.reloads == 1
        finally:
            await sup.stop()

    asyncio.run(scenario())


def test_crashed_broker_is_restarted(tmp_path: Path) -> None:
    async def scenario() -> None:
        sup = await _started(tmp_path)
        task = asyncio.create_task(sup.supervise())
        try:
            first = sup.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            for _ in range(200):
                if sup.restarts == 1 and sup.pid != first and port_open(sup.bind):
                    break
                await asyncio.sleep(0.05)
            assert sup.restarts == 1 and sup.pid != first
            async with _client(sup, "plug-1", "plug-1-secret") as dev:
                await dev.publish("aiot/v1/plug-1/up", b"again", qos=1)
        finally:
            await sup.stop()
            await task

    asyncio.run(scenario())


def test_broker_dies_with_the_hub_process(tmp_path: Path) -> None:
    port = free_port()
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from hub.link.broker import BrokerUser, MosquittoSupervisor
        from hub.core.config import Address

        async def main():
            sup = MosquittoSupervisor(Path({str(tmp_path / "b")!r}), Address("127.0.0.1", {port}),
                                      [BrokerUser("hub-1", "secret-secret", "hub")])
            await sup.start()
            print(sup.pid, flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert parent.stdout is not None
        broker_pid = int(parent.stdout.readline())
        assert port_open(Address("127.0.0.1", port))
        parent.kill()  # SIGKILL: no cleanup code runs in the hub
        parent.wait(10)

        def gone() -> bool:
            try:
                os.kill(broker_pid, 0)
            except ProcessLookupError:
                return True
            # A zombie until its (dead) parent's reaper collects it.
            with open(f"/proc/{broker_pid}/stat") as f:
                return f.read().split()[2] == "Z"

        wait_until(gone, timeout=10, what="the orphaned broker to exit")
        assert not port_open(Address("127.0.0.1", port))
    finally:
        parent.kill()
        if parent.stdout is not None:
            parent.stdout.close()
        parent.wait(10)
