"""`aiot hub install-service` with relative paths writes a unit that systemd
takes: every path in it absolute, checked by `systemd-analyze verify` (Debian's
systemd package; it needs no running systemd)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.core import config as hub_config
from tests.support import ROOT, need_tool

pytestmark = pytest.mark.unit


def install(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "hub", "install-service", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def settings(unit: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[:1].isalpha()
    )


def test_relative_paths_give_a_unit_systemd_verifies(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "sudo apt-get install -y systemd")
    here = tmp_path / "work"
    here.mkdir()
    out = install(
        here,
        "--config",
        "etc/hub.toml",
        "--env-file",
        "etc/aiot.env",
        "--unit-dir",
        "units",
        "--data-root",
        "../state/aiot",
        "--node-id",
        "pi-1",
        "--plain",
    )
    assert out.returncode == 0, out.stderr
    unit_file = here / "units" / "aiot-hub.service"
    s = settings(unit_file.read_text())
    assert s["EnvironmentFile"] == str(here / "etc" / "aiot.env")
    assert s["WorkingDirectory"] == str(tmp_path / "state" / "aiot")
    assert s["ReadWritePaths"] == str(tmp_path / "state" / "aiot")
    assert s["ExecStart"].endswith(f" hub run --config {here / 'etc' / 'hub.toml'}")
    verify = subprocess.run(
        [analyze, "verify", str(unit_file)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert "not absolute" not in verify.stderr and "bad unit file" not in verify.stderr
    # The sample config's data directory is where --data-root said, not
    # somewhere under the config's folder.
    secret = (here / "etc" / "aiot.env").read_text().split("AIOT_CLUSTER_SECRET=", 1)[1].strip()
    cfg = hub_config.load(here / "etc" / "hub.toml", env={"AIOT_CLUSTER_SECRET": secret})
    assert cfg.data_dir == tmp_path / "state" / "aiot" / "hub"
    assert f"the same AIOT_CLUSTER_SECRET in {here / 'etc' / 'aiot.env'}" in out.stdout


@pytest.mark.parametrize("option", ["--data-root", "--env-file", "--config", "--tls-dir"])
def test_a_path_systemd_would_misread_is_refused(tmp_path: Path, option: str) -> None:
    out = install(tmp_path, "--dry-run", option, "my files/x")
    assert out.returncode == 2
    assert out.stderr.startswith(f"aiot: {option} 'my files/x': a path in a systemd unit")
    assert "# ---" not in out.stdout
