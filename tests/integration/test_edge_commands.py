"""Commands through the real path: a signed command published on the device's
down topic by a hub-like client, executed by the firmware on MicroPython,
answered on the ack topic; duplicates, replays and forgeries refused."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from protocol import messages as m
from protocol import topics, wire
from tests.device import Device
from tests.integration.test_edge_device import KEY, device_config
from tests.support import wait_until
from tools.base.ports import free_port
from tools.lab.mosquitto import running_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython]


def publish(port: int, frames: list[bytes]) -> None:
    async def go() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="test-hub-commands") as c:
            for frame in frames:
                await c.publish(topics.topic("plug-1", "down"), frame, qos=1)

    asyncio.run(go())


def command(seq: int, term: int, cid: str, on: bool, key: bytes = KEY) -> bytes:
    now = int(time.time() * 1000)
    cmd = m.Command(cid, "plug-1", seq, term, "relay.set", (m.Param("on", on),), now, now + 60_000)
    return wire.seal(wire.encode(cmd), key)


def test_relay_command_runs_once_and_refusals_carry_reasons(tmp_path: Path) -> None:
    from tools.lab.acker import Acker

    port = free_port()
    acker = Acker({"plug-1": KEY}, [port])
    cfg = device_config([port], stop_after=4_500, exit_when_done=True)
    dev = Device(tmp_path / "dev", cfg)
    with running_mosquitto(tmp_path / "broker", port), acker:
        dev.start()
        try:
            # The first ack syncs the device clock; deadlines need it.
            acker.wait_for("plug-1", 300, timeout=60)
            off = command(1, 2, "c-2-1", on=False)
            publish(port, [off])
            wait_until(lambda: len(acker.results) >= 1, timeout=30, what="the first result")
            publish(
                port,
                [
                    off,  # duplicate delivery
                    command(1, 2, "c-2-0", on=True),  # replay of an older seq, other id
                    command(2, 1, "c-1-9", on=True),  # a stale term
                    command(3, 2, "c-2-3", on=True, key=bytes(32)),  # forged HMAC
                    b"\x00" * 50,  # malformed
                ],
            )
            wait_until(lambda: len(acker.results) >= 5, timeout=30, what="five results")
            stats = dev.wait(timeout=90)
        finally:
            dev.stop()
    first = acker.results[0]
    assert (first.command_id, first.status, first.reason) == (
        "c-2-1",
        m.CommandStatus.DONE,
        m.Reason.NONE,
    )
    answers = {(r.command_id, r.status, r.reason) for r in acker.results[1:]}
    assert ("c-2-1", m.CommandStatus.DONE, m.Reason.NONE) in answers  # the stored answer
    assert ("c-2-0", m.CommandStatus.REJECTED, m.Reason.DUPLICATE) in answers
    assert ("c-1-9", m.CommandStatus.REJECTED, m.Reason.STALE_TERM) in answers
    assert ("c-2-3", m.CommandStatus.REJECTED, m.Reason.BAD_SIGNATURE) in answers
    cmds = stats["commands"]
    assert cmds["executed"] == 1 and cmds["duplicates"] == 1
    # The 50 zero bytes fail the HMAC too, but carry no command id to answer.
    assert cmds["rejected"] == {"DUPLICATE": 1, "STALE_TERM": 1, "BAD_SIGNATURE": 2}
    assert cmds["unanswered"] == 1
    assert stats["relay_on"] is False and stats["unacked"] == 0
    # The relay really went off: power readings after the result are 0 W.
    log = acker.logs["plug-1"]
    done_at = first.executed_at_ms
    after = [v for s, ts, v in log.values.values() if s == 0 and ts > done_at + 100]
    assert after and all(v == 0.0 for v in after)
