"""Firmware end to end: `aiot firmware build` against a 3-node hub cluster,
`aiot firmware flash` into a virtual board over socket://, the firmware
started from that board's .mpy files, its readings acknowledged by the
cluster; a second flash copies only what changed. A generic bundle built
before any hub runs, flashed with the config `aiot device add --out` wrote,
runs the same way; `aiot firmware provision` writes another device's config
from the hub's registry."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.cluster.hubs import DEVICE_TUNING, assert_exactly_once, running_cluster, watermark
from tests.support import micropython, need_tool, wait_until
from tools.base.paths import ROOT
from tools.cli import app as aiot_app
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]


def run(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    cli_firmware.register(app)
    res = CliRunner().invoke(app, ["firmware", *args])
    return res.exit_code, res.output


def power_on_until_acked(
    vb: VirtualBoard, cluster: LocalCluster, device: str
) -> tuple[str, dict[str, Any]]:
    """Boot the flashed firmware until the cluster acknowledged 200 of its
    readings, then Ctrl-C: what it printed, and its counters. Each reading
    it saw acknowledged is stored once on every node. The hub's watermark
    runs ahead of what the device has seen acknowledged (the commit-ack is
    on its way), so the wait goes a hundred readings further than 200."""
    dev = vb.power_on()
    try:
        wait_until(lambda: watermark(cluster, 0, device) > 300, 90, "acknowledged readings")
    finally:
        dev.send_signal(signal.SIGINT)
        out_text, _ = dev.communicate(timeout=30)
    stats = json.loads([ln for ln in out_text.splitlines() if ln.startswith("{")][-1])
    assert stats["watermark"] > 200 and stats["dropped"] == 0
    assert_exactly_once(cluster, {device: stats["watermark"]})
    return out_text, stats


def test_build_flash_run_and_reflash_one_changed_file(tmp_path: Path) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(DEVICE_TUNING))
    bundle = tmp_path / "bundle"
    with running_cluster(tmp_path) as cluster:
        cfg = str(cluster.configs[1])
        # An id the registry does not know: one line, non-zero.
        code, out = run("build", "--board", "unix", "--device", "plug-x", "-c", cfg)
        assert code == 1 and len(out.strip().splitlines()) == 1, out
        assert "device 'plug-x' is not registered on the hub at http://127.0.0.1:" in out
        assert "aiot device add plug-x" in out

        cluster.add_device("plug-f")
        code, out = run(
            "build",
            "--board",
            "unix",
            "--device",
            "plug-f",
            "-c",
            cfg,
            "-o",
            str(bundle),
            "--settings",
            str(settings),
        )
        assert code == 0, out
        assert "built unix bundle for plug-f" in out
        registry = cluster.client(0).get("/v1/devices/plug-f/config")
        config = json.loads((bundle / "board" / "config.json").read_text())
        assert {k: config[k] for k in registry} == registry  # hubs in the device's order

        with VirtualBoard(tmp_path / "board") as vb:
            code, out = run("flash", "--port", vb.url, "--out", str(bundle))
            assert code == 0, out
            files = json.loads((bundle / "bundle.json").read_text())["files"]
            assert f"{len(files)} file(s) copied" in out and "not reset" in out
            code, out = run("verify", "--port", vb.url, "--out", str(bundle))
            assert code == 0, out
            assert json.loads(out[out.index("{") :])["matches"] is True

            # Power on: the loader, then the app, from .mpy files only.
            fs = tmp_path / "board"
            assert not list(fs.rglob("*.py"))
            out_text, stats = power_on_until_acked(vb, cluster, "plug-f")
            assert stats["ota"]["firmware"] == "0.1.0+a"
            assert out_text.startswith("loader: app a\n")

            # One source file changes: the second flash copies that .mpy alone.
            src = tmp_path / "src"
            for package in ("edge", "firmware"):
                shutil.copytree(ROOT / package, src / package)
            sensors = src / "edge" / "sensors.py"
            sensors.write_text(sensors.read_text() + "\n_REBUILT = 1\n")
            build(BOARDS["unix"], registry, bundle, overrides=DEVICE_TUNING, root=src)
            code, out = run("flash", "--port", vb.url, "--out", str(bundle))
            assert code == 0, out
            assert "flashed socket://" in out and ": 1 file(s) copied" in out
            assert "  copied app_a/edge/sensors.mpy" in out
            assert [ln for ln in out.splitlines() if ln.startswith("  copied")] == [
                "  copied app_a/edge/sensors.mpy"
            ]


def test_a_generic_bundle_built_offline_runs_once_flashed_with_a_device_config(
    tmp_path: Path,
) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(DEVICE_TUNING))
    bundle = tmp_path / "generic"
    # Before any hub runs: the board's app and loader, no device.
    code, out = run("build", "--board", "unix", "-o", str(bundle))
    assert code == 0 and "built a generic unix bundle" in out, out
    with running_cluster(tmp_path) as cluster:
        cfg = str(cluster.configs[1])
        device_config = tmp_path / "plug-g.json"
        res = CliRunner().invoke(
            aiot_app, ["device", "add", "plug-g", "-c", cfg, "--out", str(device_config)]
        )
        assert res.exit_code == 0, res.output
        with VirtualBoard(tmp_path / "board") as vb:
            code, out = run(
                "flash",
                "--port",
                vb.url,
                "--out",
                str(bundle),
                "--device-config",
                str(device_config),
                "--settings",
                str(settings),
            )
            assert code == 0 and "  copied config.json" in out, out
            power_on_until_acked(vb, cluster, "plug-g")

            # Provisioning from the hub's registry: another device on the same board.
            cluster.add_device("plug-k")
            code, out = run("provision", "--port", vb.url, "--device", "plug-k", "-c", cfg)
            assert code == 0 and f"provisioned {vb.url} as plug-k" in out, out
            registry = cluster.client(0).get("/v1/devices/plug-k/config")
            config = json.loads((tmp_path / "board" / "config.json").read_text())
            assert {k: config[k] for k in registry} == registry
            code, out = run("provision", "--port", vb.url, "--device", "plug-x", "-c", cfg)
            assert code == 1 and "device 'plug-x' is not registered on the hub" in out
