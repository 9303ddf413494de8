"""tools/mpy/chaos_device.py: the firmware with its own history, which the
chaos campaign reads, under the real MicroPython interpreter."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, micropython, run_micropython
from tools.chaos.fleet import chaos_device
from tools.lab.device import Device

pytestmark = pytest.mark.micropython

SCRIPT = """
import sys
sys.path.append(sys.argv[2])
from edge.node import Node
from edge.sensors import SimulatedPlug
from chaos_device import History

d = sys.argv[1]
node = Node({"device_id": "plug-h", "key": "00" * 32, "hubs": [["127.0.0.1", 1]]}, d,
            SimulatedPlug(seed=3))
h = History(node, d)
for i in range(5):
    node.store.add(0, 1000 + i, 1.5)
print("flushed", node.store.flush(), node.store.flush())
ack = {"device_id": "plug-h", "hub_time_ms": 1763700000000}
ack["watermark"] = 3
node.uplink.on_ack(ack)
ack["watermark"] = 2
node.uplink.on_ack(ack)
cmd = {"command_id": "c1", "device_id": "plug-h", "seq": 1, "term": 1, "deadline_ms": 0,
       "action": "relay.set", "params": [{"name": "on", "kind": 2, "int_value": 0}]}
print("status", node.executor.handle(cmd)["status"], node.sensor.relay_on)
node.executor.handle(cmd)  # a redelivery: answered from flash, not run
with open(d + "/clock.jump", "w") as f:
    f.write("-5000")
t = node.clock.now_ms()
print("jump", h.jump_now(), node.clock.now_ms() - t < -4900, h.jump_now())
"""


def test_history_records_flashes_acks_executions_and_jumps(tmp_path: Path) -> None:
    script = tmp_path / "history_case.py"
    script.write_text(SCRIPT)
    data = tmp_path / "data"
    data.mkdir()
    out = run_micropython(script, str(data), str(ROOT / "tools" / "mpy"), heap="256k")
    out = out.split("\n")
    assert "flushed 5 0" in out and "status 1 False" in out and "jump True True False" in out
    lines = (data / "history.log").read_text().splitlines()
    # One execution although the command arrived twice; W only moves forward.
    assert lines == ["B 1 0", "F 1 5", "W 3", "X c1", "J -5000"]
    assert not (data / "clock.jump").exists()


def _device(tmp_path: Path) -> Device:
    micropython()  # skip with a reason that says what to install
    return chaos_device(
        tmp_path / "dev",
        {
            "device_id": "plug-h",
            "key": "11" * 32,
            "hubs": [["127.0.0.1", free_port()]],  # nobody there: the device stays offline
            "sample_ms": 50,
            "offline_flush_ms": 100,
        },
    )


def _wait_lines(path: Path, prefix: str, n: int, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if sum(1 for ln in lines if ln.startswith(prefix)) >= n:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} {prefix!r} lines in {path}")


def test_the_firmware_keeps_its_history_across_power_cuts(tmp_path: Path) -> None:
    on = _device(tmp_path).start()
    log = Path(on.config["data_dir"]) / "history.log"
    try:
        lines = _wait_lines(log, "F ", 3)
        on.kill()  # a power cut: what was logged stays
        kept = log.read_text().splitlines()
        assert kept[: len(lines)] == lines and kept[0] == "B 1 0"
        on.start()
        lines = _wait_lines(log, "B ", 2)
        assert lines[len(kept)].startswith("B 2 ")
        # Records are numbered on: the second boot's first record starts
        # past everything the first one flushed.
        flushed = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("F ")]
        last_first_boot = max(a + n - 1 for a, n in flushed[: sum(1 for x in kept if x[0] == "F")])
        _wait_lines(log, "F ", len(flushed) + 1)
        after = [
            tuple(map(int, ln.split()[1:]))
            for ln in log.read_text().splitlines()[len(kept) + 1 :]
            if ln.startswith("F ")
        ]
        assert after and after[0][0] > last_first_boot
        stats = on.interrupt()  # the firmware's own exit: its counters
    finally:
        on.stop()
    assert stats["sampled"] > 0 and stats["watermark"] == 0


def test_a_device_that_does_not_stop_on_sigint_says_what_it_was_doing(tmp_path: Path) -> None:
    """A frozen process (SIGSTOP: the kernel holds SIGINT for it) fails
    ``interrupt`` with its state and CPU time from /proc, not a bare timeout."""
    dev = _device(tmp_path).start()
    try:
        _wait_lines(Path(dev.config["data_dir"]) / "history.log", "F ", 1)
        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(AssertionError, match=r"did not stop within 1\.0 s .*after: state T"):
            dev.interrupt(timeout=1.0)
        dev.proc.send_signal(signal.SIGCONT)  # the held SIGINT arrives: it stops as usual
        assert dev.proc.wait(30) is not None
    finally:
        dev.stop()
