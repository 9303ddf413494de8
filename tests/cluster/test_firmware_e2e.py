"""Firmware end to end: `aiot firmware build` against a 3-node hub cluster,
`aiot firmware flash` into a virtual board over socket://, the firmware
started from that board's .mpy files, its readings acknowledged by the
cluster; a second flash copies only what changed."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.cluster.hubs import DEVICE_TUNING, assert_exactly_once, running_cluster, watermark
from tests.support import micropython, need_tool, wait_until
from tools.base.paths import ROOT
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]


def run(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    cli_firmware.register(app)
    res = CliRunner().invoke(app, ["firmware", *args])
    return res.exit_code, res.output


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
            dev = vb.power_on()
            try:
                wait_until(
                    lambda: watermark(cluster, 0, "plug-f") > 200, 90, "acknowledged readings"
                )
            finally:
                dev.send_signal(signal.SIGINT)
                out_text, _ = dev.communicate(timeout=30)
            stats = json.loads([ln for ln in out_text.splitlines() if ln.startswith("{")][-1])
            assert stats["watermark"] > 200 and stats["dropped"] == 0
            assert stats["ota"]["firmware"] == "0.1.0+a"
            assert out_text.startswith("loader: app a\n")
            assert_exactly_once(cluster, {"plug-f": stats["watermark"]})

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
