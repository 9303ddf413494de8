"""What a hub keeps on disk is private: its data folder is 0700 and every file
the node wrote (LMDB store, Raft journal and dump, its broker's files) gives
its group and others nothing; a backup is 0600 files in a 0700 folder, and a
restored node's folder too. A cluster secret file its group or others can
read gets a warning when the node starts (docs/security.md)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hub.core.fsutil import exposed
from tests.cluster.hubs import running_cluster
from tests.support import ROOT, wait_until
from tools.lab.cluster import write_cluster

pytestmark = pytest.mark.cluster


def loose(root: Path) -> list[str]:
    """Everything below ``root`` (and itself) that its group or others can
    reach. A socket (the broker's, for the node's own session) counts through
    its folder, which ``root``'s checks cover: Mosquitto makes it 0770."""
    out = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or stat.S_ISSOCK(path.lstat().st_mode):
            continue
        if exposed(path):
            out.append(f"{path} {stat.S_IMODE(path.stat().st_mode):04o}")
    return out


def aiot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def test_a_node_and_its_backup_keep_their_files_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # what a shell usually has: the node must not rely on it
    try:
        with running_cluster(tmp_path, nodes=3) as cluster:
            cluster.add_device("plug-1", limit_w=1500)
            wait_until(lambda: cluster.status(0)["raft"]["leader"] is not None, 30, "a leader")
            for i in range(3):
                data = cluster.data_dir(i)
                assert (data / "store").is_dir() and any(data.glob("raft.journal*")), data
                assert loose(data) == [], loose(data)
            backup = tmp_path / "backup"
            out = aiot("backup", str(backup), "--config", str(cluster.configs[0]), "--json")
            assert out.returncode == 0, out.stderr
            assert (backup / "manifest.json").exists()
            assert loose(backup) == [], loose(backup)
    finally:
        os.umask(old)


def load(config: Path) -> str:
    """What loading ``config`` in a fresh process prints on stderr."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from hub.core import config; "
            "config.load(Path(sys.argv[1]))",
            str(config),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_a_readable_secret_file_gets_a_warning(tmp_path: Path) -> None:
    (config,) = write_cluster(tmp_path, 1)
    secret = config.parent / "cluster.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "cluster secret file" not in load(config)
    secret.chmod(0o640)
    err = load(config)
    assert "cluster secret file" in err and "chmod 600" in err, err
