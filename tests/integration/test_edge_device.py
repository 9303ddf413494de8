"""The real firmware on MicroPython against real Mosquitto, with a test-side
acker playing the hub: broker restarts, failover and return, silent hubs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.meta import Meta
from tests.device import Device
from tests.support import wait_until
from tools.base.ports import free_port
from tools.lab.acker import Acker
from tools.lab.mosquitto import INSTALL_HINT, find_mosquitto, running_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython]

KEY = bytes(range(32))


@pytest.fixture(autouse=True)
def _need_mosquitto() -> None:
    if find_mosquitto() is None:
        from tests.support import need_tool

        need_tool("mosquitto", INSTALL_HINT)


def device_config(ports: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "device_id": "plug-1",
        "key": KEY.hex(),
        "hubs": [["127.0.0.1", p] for p in ports],
        "sample_ms": 10,
        "flush_ms": 100,
        "offline_flush_ms": 1000,
        "status_ms": 1000,
        "keepalive_s": 2,
        "slot_capacity": 256 * 1024,
        "record_bytes": 512,
        "ack_timeout_ms": 1500,
        **extra,
    }


def test_10000_readings_survive_three_broker_restarts(tmp_path: Path) -> None:
    port = free_port()
    total = 10_000
    acker = Acker({"plug-1": KEY}, [port])
    dev = Device(tmp_path / "dev", device_config([port], stop_after=total, exit_when_done=True))
    restarts = 0
    try:
        for stage, until in enumerate((2_000, 4_500, 7_000, total)):
            with running_mosquitto(tmp_path / "broker", port):
                if stage == 0:
                    acker.__enter__()
                    dev.start()
                acker.wait_for("plug-1", until, timeout=90)
                if until == total:
                    stats = dev.wait(timeout=60)
                else:
                    restarts += 1  # leaving the block kills the broker
    finally:
        dev.stop()
        acker.__exit__(None, None, None)
    assert restarts == 3
    assert acker.received("plug-1") == set(range(1, total + 1))
    assert acker.watermark("plug-1") == total
    assert stats["unacked"] == 0 and stats["watermark"] == total
    assert stats["sampled"] == total and stats["dropped"] == 0
    assert stats["reconnects"] >= 3
    assert acker.rejected == []


def test_failover_to_the_second_broker_and_back(tmp_path: Path) -> None:
    a, b = free_port(), free_port()
    total = 6_000
    acker = Acker({"plug-1": KEY}, [a, b])
    cfg = device_config([a, b], stop_after=total, exit_when_done=True, return_after_s=2)
    dev = Device(tmp_path / "dev", cfg)
    with running_mosquitto(tmp_path / "b", b):
        try:
            with running_mosquitto(tmp_path / "a", a):
                acker.__enter__()
                dev.start()
                acker.wait_for("plug-1", 1_000, timeout=60)
                on_a = acker.logs["plug-1"].by_port.get(a, 0)
                assert on_a > 0 and acker.logs["plug-1"].by_port.get(b, 0) == 0
            # A is gone: the device carries on through B.
            mark = acker.watermark("plug-1")
            acker.wait_for("plug-1", mark + 1_000, timeout=60)
            assert acker.logs["plug-1"].by_port.get(b, 0) > 0
            with running_mosquitto(tmp_path / "a", a):
                # A is back: after return_after_s the device goes home.
                before = acker.logs["plug-1"].by_port.get(a, 0)
                wait_until(
                    lambda: acker.logs["plug-1"].by_port.get(a, 0) > before + 5,
                    timeout=60,
                    what="batches on the preferred broker again",
                )
                stats = dev.wait(timeout=90)
        finally:
            dev.stop()
            acker.__exit__(None, None, None)
    assert acker.received("plug-1") == set(range(1, total + 1))
    assert stats["unacked"] == 0 and stats["hub_index"] == 0
    assert stats["reconnects"] >= 2


def test_a_silent_hub_behind_a_live_broker_is_left(tmp_path: Path) -> None:
    # Broker A answers, but nothing behind it acknowledges: the device must
    # move to B after failover_after_ms and deliver everything there.
    a, b = free_port(), free_port()
    total = 1_500
    silent = Acker({"plug-1": KEY}, [a], ack=False)
    acker = Acker({"plug-1": KEY}, [b])
    cfg = device_config(
        [a, b],
        stop_after=total,
        exit_when_done=True,
        failover_after_ms=3000,
        return_after_s=3600,
    )
    dev = Device(tmp_path / "dev", cfg)
    with (
        running_mosquitto(tmp_path / "a", a),
        running_mosquitto(tmp_path / "b", b),
        silent,
        acker,
    ):
        dev.start()
        try:
            stats = dev.wait(timeout=90)
        finally:
            dev.stop()
    assert silent.logs["plug-1"].batches > 0  # it did try A first
    assert acker.received("plug-1") == set(range(1, total + 1))
    assert stats["failovers"] >= 1 and stats["hub_index"] == 1 and stats["unacked"] == 0


def test_readings_dropped_offline_are_declared_and_the_watermark_moves_on(
    tmp_path: Path,
) -> None:
    # Offline with small slots and drop_oldest: the device loses its oldest
    # readings, then declares them (lost_before) when a broker appears, so the
    # hub's watermark can reach the end and nothing stays unacknowledged.
    port = free_port()
    total = 3_000
    cfg = device_config(
        [port],
        stop_after=total,
        exit_when_done=True,
        sample_ms=2,
        slot_capacity=2048,
        record_bytes=512,
        offline_flush_ms=100,
    )
    dev = Device(tmp_path / "dev", cfg)
    dev.start()
    try:
        # Nothing listens yet: wait until the device has dropped its oldest
        # slot (the metadata on its flash says so).
        data = str(tmp_path / "dev" / "data")
        wait_until(lambda: Meta(data).dropped > 0, timeout=60, what="an offline drop")
        acker = Acker({"plug-1": KEY}, [port])
        with running_mosquitto(tmp_path / "broker", port), acker:
            stats = dev.wait(timeout=120)
    finally:
        dev.stop()
    dropped = stats["dropped"]
    assert dropped > 0 and stats["unacked"] == 0
    assert acker.watermark("plug-1") == total
    # It may drop again while the first batches go out (it samples fast into
    # tiny slots), so the declarations can be several; each moved the hub on.
    # A later declaration may also name readings the hub already acknowledged
    # (erased, not dropped), so lost_before is not bounded by the drops. A
    # later drop takes the oldest slot not yet sent, which may come after
    # readings already received, so the missing ones need not be a prefix.
    # What holds: no more are missing than were dropped, and each missing one
    # was declared (it is below the highest lost_before).
    lost_before = acker.logs["plug-1"].lost_before
    assert 0 < lost_before <= total + 1
    missing = set(range(1, total + 1)) - acker.received("plug-1")
    assert len(missing) <= dropped, (len(missing), dropped)
    assert not missing or max(missing) < lost_before, (max(missing), lost_before)
