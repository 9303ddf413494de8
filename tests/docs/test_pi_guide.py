"""docs/deploy-raspberry-pi.md: the systemd units it shows are valid.

`systemd-analyze verify` (Debian's systemd package; it needs no running
systemd) checks the backup service and timer as the guide writes them, under
the file names their first comment line gives. The unit `aiot hub
install-service` writes is checked by tests/unit/test_install_service_paths.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.docs.blocks import blocks
from tests.support import ROOT, need_tool

pytestmark = pytest.mark.docs

GUIDE = ROOT / "docs" / "deploy-raspberry-pi.md"


def test_the_backup_service_and_timer_verify(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze", "apt-get install -y systemd")
    units = []
    for text in blocks(GUIDE, "8. Backups", "ini"):
        first = text.splitlines()[0]
        assert first.startswith("# /etc/systemd/system/"), first
        path = tmp_path / first.rsplit("/", 1)[1]
        path.write_text(text)
        units.append(path)
    assert sorted(p.name for p in units) == ["aiot-backup.service", "aiot-backup.timer"]
    out = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if "aiot-backup" in line and "aiot-hub.service" not in line
    ]
    assert out.returncode == 0 or not problems, out.stdout + out.stderr
    assert not problems, "\n".join(problems)
