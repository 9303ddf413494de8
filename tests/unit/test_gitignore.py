""".gitignore covers what the README's paths create when followed from the
repository's root (a cluster's secrets, device configs with their keys, a
device's data, build output), and none of the repository's own files."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tools.base.paths import ROOT

pytestmark = pytest.mark.unit

# What the commands leave in the working directory, by the command.
CREATED = [
    # aiot cluster init ./cluster --nodes 3; aiot hub run --config cluster/hub-1.toml
    "cluster/cluster.secret",
    "cluster/hub-1.toml",
    "cluster/README.txt",
    "cluster/hub-1/raft.journal",
    "cluster/hub-1/store/data.mdb",
    "cluster/hub-1/broker/mosquitto.conf",
    # aiot device add plug-1 --config cluster/hub-1.toml --out plug-1.json
    "plug-1.json",
    "plug-12.json",
    # aiot device run plug-1.json
    "plug-1.data/config.json",
    "plug-1.data/device.log",
    "plug-1.data/run.lock",
    "plug-1.data/data/slot.a",
    # the firmware started by hand from here, with no data_dir in its config
    "aiot-data/slot.a",
    # aiot firmware build (default --out build/firmware), --out build/plug-1
    "build/firmware/bundle.json",
    "build/firmware/board/app_a/edge/node.mpy",
    "build/plug-1/board/config.json",
    # Wi-Fi secrets for the build; aiot demo's state
    "firmware/wifi.json",
    ".aiot-demo/demo.json",
]

# The repository's own files that look like those.
KEPT = [
    "tests/cluster/hubs.py",
    "tests/cluster/test_device_run.py",
    "firmware/config_template.json",
    "firmware/wifi_template.json",
    "tools/cli/device.py",
    "tools/lab/cluster.py",
    "models/anomaly/anomaly.json",
]


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module", autouse=True)
def in_a_clone() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git clone: .gitignore is not in force")


def ignored(paths: list[str]) -> set[str]:
    out = git("check-ignore", "--", *paths)
    assert out.returncode in (0, 1), out.stderr  # 1: none of them is ignored
    return set(out.stdout.splitlines())


def test_what_the_readme_creates_is_ignored() -> None:
    assert ignored(CREATED) == set(CREATED)


def test_the_repository_files_are_not() -> None:
    assert ignored(KEPT) == set()
    tracked_but_ignored = git("ls-files", "--cached", "--ignored", "--exclude-standard")
    assert tracked_but_ignored.returncode == 0, tracked_but_ignored.stderr
    assert tracked_but_ignored.stdout == ""
