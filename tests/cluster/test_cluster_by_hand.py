"""A newcomer's cluster by hand, through the `aiot` command: the configs of
`aiot cluster init` decide with the shipped energy rules, `aiot ask` explains
a switch-off by a rule and by an operator, and every command says what
happened (an empty list, a day without readings, a wait that runs out)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import DEVICE_TUNING, need_mosquitto, running_cluster
from tests.device import Device
from tests.support import ROOT, wait_until
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

# A plug whose appliance events (over 1000 W for 20 s and more) come every few seconds.
PLUG = {**DEVICE_TUNING, "sample_ms": 200, "flush_ms": 200, "event_every_s": 4}


def aiot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIOT_")},
    )


def free_base_port(nodes: int) -> int:
    """A --base-port for `aiot cluster init` whose ports are all free now."""
    for _ in range(100):
        base = random.randrange(20_000, 50_000)
        wanted = [base + off + i for off in (0, 100, 200) for i in range(nodes)]
        with contextlib.ExitStack() as stack:
            try:
                for port in wanted:
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError("no free range of ports")


def test_a_cluster_from_cluster_init_decides_and_ask_explains_it(tmp_path: Path) -> None:
    need_mosquitto()
    root = tmp_path / "cluster"
    out = aiot("cluster", "init", str(root), "--nodes", "1", "--base-port", str(free_base_port(1)))
    assert out.returncode == 0, out.stderr
    cfg = str(root / "hub-1.toml")
    with open(cfg, "a") as f:  # spare the CPU a model per leader; the rules are untouched
        f.write('\n[decisions]\nllm = ""\n')
    cluster = LocalCluster.reopen(root)
    try:
        cluster.start(90)
        plug = tmp_path / "plug-1.json"
        out = aiot(
            "device", "add", "plug-1", "--limit-w", "1000", "--config", cfg, "--out", str(plug)
        )
        assert out.returncode == 0, out.stderr
        secrets = json.loads(plug.read_text())
        with Device(tmp_path / "plug-1", {**secrets, **PLUG}):
            found: dict[str, Any] = {}

            def switched_off() -> bool:
                rows = json.loads(aiot("decisions", "list", "--json", "--config", cfg).stdout)
                acted = [d for d in rows if d["command_id"] and d["rule"] == "plug-over-limit"]
                if acted:
                    found.update(acted[-1])
                    cid = found["command_id"]
                    return bool(cluster.client(0).get(f"/v1/commands/{cid}")["state"] == "DONE")
                return False

            wait_until(switched_off, 120, "the shipped rule to switch plug-1 off")
            out = aiot("ask", "why did plug-1 switch off?", "--json", "--config", cfg)
            answer = json.loads(out.stdout)
            assert answer["sources"] == [found["decision_id"], found["command_id"]]
            assert "plug-over-limit" in answer["answer"]

            # An operator switches it off again: that is the latest answer now.
            out = aiot(
                "command", "send", "plug-1", "relay.set", "on=false", "--wait", "30", "-c", cfg
            )
            assert out.returncode == 0, out.stderr
            cid = json.loads(out.stdout)["command_id"]
            answer = json.loads(
                aiot("ask", "why did plug-1 switch off?", "--json", "--config", cfg).stdout
            )
            assert answer["sources"] == [cid] and "by an operator" in answer["answer"]
            shown = aiot("command", "show", cid, "--config", cfg).stdout
            assert "(hub clock)" in shown and "by the device's clock" in shown

        out = aiot("ask", "why did plug-9 switch off?", "--config", cfg)
        assert out.returncode == 0 and out.stdout == "I know no device plug-9.\n"
    except BaseException:
        print(f"--- hub-1 ---\n{cluster.tail(0, 40)}")
        raise
    finally:
        cluster.stop()


def presence(cluster: LocalCluster, device_id: str) -> str | None:
    p = cluster.client(0).get(f"/v1/devices/{device_id}")["presence"]
    return None if p is None else str(p["state"])


def test_every_command_says_what_happened(tmp_path: Path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    extra = f'[models]\nshipped_dir = "{empty}"\n'
    with running_cluster(tmp_path, nodes=1, extra=extra) as cluster:
        cfg = str(cluster.configs[0])
        for args, said in (
            (("decisions", "list"), "no decisions"),
            (("alerts", "list"), "no alerts"),
            (("alerts", "list", "--unacknowledged"), "no open alerts"),
            (("user", "list"), "no users"),
            (("models", "list"), "no models"),
        ):
            out = aiot(*args, "--config", cfg)
            assert (out.returncode, out.stdout, out.stderr) == (0, "", said + "\n"), args
        assert aiot("decisions", "list", "--json", "--config", cfg).stdout.strip() == "[]"

        secrets = cluster.add_device("plug-1")
        for args, said in (
            (("decisions", "list", "--device", "plug-1"), "no decisions for plug-1"),
            (("alerts", "list", "--device", "plug-1"), "no alerts for plug-1"),
            (("command", "list", "plug-1"), "no commands for plug-1"),
            (("query", "plug-1"), "no readings from plug-1"),
            (
                ("query", "plug-1", "--sensor", "1", "--from", "0"),
                "no readings of sensor 1 from plug-1",
            ),
        ):
            out = aiot(*args, "--config", cfg)
            assert (out.returncode, out.stdout, out.stderr) == (0, "", said + "\n"), args
        out = aiot("query", "plug-1", "--hourly", "--day", "2026-01-01", "--config", cfg)
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 24
        assert out.stderr == "no readings from plug-1 on 2026-01-01 (UTC)\n"
        out = aiot("query", "plug-1", "--day", "2026-01-01", "--config", cfg)
        assert out.returncode == 2 and "--day goes with --hourly" in out.stderr

        def send() -> subprocess.CompletedProcess[str]:
            return aiot(
                "command", "send", "plug-1", "relay.set", "on=false", "--wait", "1", "-c", cfg
            )

        out = send()
        assert out.returncode == 1 and json.loads(out.stdout)["state"] == "PENDING"
        first, second = out.stderr.splitlines()
        assert first.startswith("aiot: command ") and "is still PENDING after 1 s" in first
        assert second == "aiot: plug-1 has not connected to any hub node yet"

        device = Device(tmp_path / "plug-1", {**secrets, **PLUG}).start()
        try:
            wait_until(lambda: presence(cluster, "plug-1") == "ONLINE", 60, "plug-1 online")
        finally:
            device.kill()
        wait_until(lambda: presence(cluster, "plug-1") == "OFFLINE", 60, "plug-1 offline")
        out = send()
        assert out.returncode == 1
        assert "aiot: plug-1 is offline (last seen on hub-1 until 20" in out.stderr
