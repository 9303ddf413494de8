"""`aiot demo --duration --json`: the whole system for a minute, summarized."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.support import ROOT, micropython, wait_until
from tools.base.hubclient import HubClient

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

KEYS = {
    "hubs",
    "devices",
    "broker",
    "edge_runtime",
    "readings_committed",
    "readings_acked_by_devices",
    "commands_executed",
    "commands_executed_by_tier",
    "decisions_by_tier",
    "alerts",
    "metrics",
    "errors",
}
# Counters that must move during the demo: committed readings and acked
# batches (ingest, apply), decisions, commands published and their results.
MOVING = (
    "aiot_ingest_readings_total",
    "aiot_readings_applied_total",
    "aiot_ingest_acked_batches_total",
    "aiot_decisions_total",
    "aiot_command_publications_total",
    "aiot_command_results_total",
)


def test_demo_runs_the_energy_scenario_and_summarizes_it(tmp_path: Path) -> None:
    need_mosquitto()
    micropython()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.cli",
            "demo",
            "--duration",
            # The plugs' loads are seeded by their ids (edge/sensors.py):
            # plug-4's is over the demo's 2000 W limit for the rules' 10 s
            # about 39 s after it starts, the first of the six.
            "55",
            "--json",
            "--fresh",
            "--dir",
            str(tmp_path / "demo"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(summary) == KEYS
    assert summary["broker"] == "mosquitto" and summary["edge_runtime"] == "micropython"
    assert summary["readings_committed"] > 0
    # Every reading a plug saw acknowledged is committed (the count is taken
    # after the plugs stop).
    assert summary["readings_committed"] >= summary["readings_acked_by_devices"]
    assert summary["alerts"] >= 1 and summary["commands_executed"] >= 1, summary
    by_tier = summary["commands_executed_by_tier"]  # each executed command's issuing tier
    assert sum(by_tier.values()) <= summary["commands_executed"] and set(by_tier) <= {
        "rules", "onnx", "llm", "operator",
    }, summary  # fmt: skip
    assert summary["errors"] == []
    # Every hub's /metrics, scraped at the start and the end and parsed with
    # prometheus-client's parser (a failure would be in errors): each counter
    # family's increase, summed over the hubs and the labels.
    metrics = summary["metrics"]
    assert metrics and all(k.endswith("_total") for k in metrics), metrics
    assert all(isinstance(v, int | float) and v >= 0 for v in metrics.values()), metrics
    not_moved = [k for k in MOVING if not metrics.get(k, 0) > 0]
    assert not_moved == [], f"did not move during the demo: {not_moved}; {metrics}"
    doc = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert len(doc["hubs"]) == 3 and doc["monitor"]["user"] == "monitor" and doc["admin_token"]
    # TLS: the API is HTTPS and the plugs connect over MQTT with TLS, the
    # cluster's own CA pinned (they committed readings above).
    assert all(h["http"].startswith("https://") for h in doc["hubs"]), doc["hubs"]
    assert Path(doc["tls"]["ca"]).is_file()
    assert "dashboard:" in out.stderr and "login:" in out.stderr


def _launch(demo: Path, capture: bool) -> subprocess.Popen[str]:
    """`aiot demo --json --fresh` in its own process group, as a shell runs a job."""
    need_mosquitto()
    micropython()
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "demo", "--json", "--fresh", "--dir", str(demo)],
        cwd=ROOT,
        stdout=out,
        stderr=out,
        text=True,
        start_new_session=True,
    )


def test_ctrl_c_on_the_terminal_stops_the_demo_cleanly(tmp_path: Path) -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group.
    # The demo's hubs and plugs run in their own sessions, so only the demo
    # gets it: it stops the plugs and the hubs in order and summarizes.
    demo = tmp_path / "demo"
    proc = _launch(demo, capture=True)
    try:
        wait_until(lambda: (demo / "demo.json").exists(), 180, "the demo's plugs started")
        doc = json.loads((demo / "demo.json").read_text())
        ca = Path(doc["tls"]["ca"])
        with HubClient(doc["hubs"][0]["http"], doc["admin_token"], ca=ca) as hub:

            def flowing() -> bool:  # every plug has readings committed and acked
                rows = {r["device_id"]: r for r in hub.get("/v1/devices")}
                return all(rows.get(d, {}).get("watermark", 0) > 0 for d in doc["devices"])

            wait_until(flowing, 120, "readings of every plug committed")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["readings_committed"] > 0 and summary["readings_acked_by_devices"] > 0
    assert summary["errors"] == [], summary["errors"]


def _processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every process whose command line holds ``text``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found[int(entry.name)] = cmd
    return found


def test_hubs_and_plugs_do_not_outlive_a_killed_demo(tmp_path: Path) -> None:
    # They run in their own sessions (a terminal's Ctrl-C is for the demo
    # alone), so a demo killed with SIGKILL cannot stop them: each is started
    # to get SIGTERM when the demo dies.
    demo = tmp_path / "demo"
    proc = _launch(demo, capture=False)
    try:
        wait_until(lambda: (demo / "demo.json").exists(), 180, "the demo's plugs started")
        children = {
            pid: cmd for pid, cmd in _processes_mentioning(str(demo)).items() if pid != proc.pid
        }
        hubs = [c for c in children.values() if " hub run " in c]
        assert len(hubs) == 3, children
        assert len(children) >= 3 + 6, children  # and the plugs (and the brokers)
        proc.kill()
        proc.wait()
        wait_until(
            lambda: not set(_processes_mentioning(str(demo))) & set(children),
            60,
            "the demo's hubs and plugs to exit",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _processes_mentioning(str(demo)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
