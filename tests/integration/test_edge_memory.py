"""The whole device within the firmware's heap budget: -X heapsize=96k on the
64-bit unix port, with at least 16 KB free at peak (gc.mem_free() after a
collection, sampled by the node once a second)."""

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
from tools.firmware.romfs import build_image
from tools.lab.acker import Acker
from tools.lab.mosquitto import running_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("rom") / "firmware.romfs")


def test_device_scenario_runs_in_96k_with_16k_free(tmp_path: Path, image: Path) -> None:
    port = free_port()
    acker = Acker({"plug-1": KEY}, [port])
    # The firmware's own defaults for buffers and batches; only the pace is
    # quickened so the scenario fits in a test.
    cfg = device_config([port], stop_after=3_000, exit_when_done=True)
    for key in ("slot_capacity", "record_bytes"):
        cfg.pop(key)
    dev = Device(tmp_path / "dev", cfg, heap="96k", romfs=image)
    with running_mosquitto(tmp_path / "broker", port), acker:
        dev.start()
        try:
            acker.wait_for("plug-1", 600, timeout=60)

            async def commands() -> None:
                now = int(time.time() * 1000)
                async with aiomqtt.Client("127.0.0.1", port, identifier="memtest-hub") as c:
                    for seq, on in ((1, False), (2, True)):
                        cmd = m.Command(
                            f"c-1-{seq}",
                            "plug-1",
                            seq,
                            1,
                            "relay.set",
                            (m.Param("on", on),),
                            now,
                            now + 60_000,
                        )
                        frame = wire.seal(wire.encode(cmd), KEY)
                        await c.publish(topics.topic("plug-1", "down"), frame, qos=1)

            asyncio.run(commands())
            wait_until(lambda: len(acker.results) >= 2, timeout=30, what="two command results")
            stats = dev.wait(timeout=120)
        finally:
            dev.stop()
    assert stats["sampled"] == 3_000 and stats["unacked"] == 0
    assert stats["commands"]["executed"] == 2
    assert acker.received("plug-1") == set(range(1, 3_001))
    assert stats["min_free"] is not None
    print(f"lowest free heap after a collection: {stats['min_free']} of 96 KiB")
    assert stats["min_free"] >= 16 * 1024, f"only {stats['min_free']} bytes free at peak"
