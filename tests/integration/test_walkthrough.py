"""A MicroPython device's signed batch through real Mosquitto and its ack back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import micropython, need_tool
from tools.lab.mosquitto import INSTALL_HINT, find_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython]


def test_walkthrough_delivers_a_batch_and_the_device_verifies_the_ack() -> None:
    if find_mosquitto() is None:
        need_tool("mosquitto", INSTALL_HINT)
    micropython()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "protocol", "walkthrough", "--device-seconds", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    device = summary.pop("device")
    assert summary == {
        "broker": "mosquitto",
        "edge_runtime": "micropython",
        "frame_bytes": 380,
        "readings": 32,
        "acked_watermark": 32,
        "ok": True,
    }
    assert device["ok"] and device["command_done"] and device["readings_acked"] > 0
    assert device["status_messages"] > 0
    # After the relay-off command, the plug reports 0 W.
    done = next(i for i, line in enumerate(lines) if "device executed walkthrough-1: DONE" in line)
    assert any("power     0.0 W" in line for line in lines[done:])
    assert any(line.startswith("hub: HMAC ok") for line in lines)
    assert any("verified the CommitAck, watermark 32" in line for line in lines)
