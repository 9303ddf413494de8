"""The README's "A hub cluster by hand" runs as written: from a folder outside
the checkout and from a clone's root. The cluster it builds switches a plug
over its limit off by itself, and what it leaves behind in a clone is all
git-ignored."""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.docs.blocks import blocks
from tests.docs.runner import environment, reader_folder, running, switched_off_by_a_rule, untracked
from tests.support import ROOT, micropython, wait_until

pytestmark = [pytest.mark.docs, pytest.mark.cluster]

README = ROOT / "README.md"
SECTION = "A hub cluster by hand"
SWITCH_OFF_S = 60.0


def aiot(cwd: Path, *args: str) -> Any:
    out = subprocess.run(
        ["aiot", *args, "--config", "cluster/hub-1.toml"],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("kind", ["outside", "clone root"])
def test_the_cluster_by_hand_runs_as_written_and_decides(kind: str, tmp_path: Path) -> None:
    need_mosquitto()
    micropython()
    (script,) = blocks(README, SECTION)
    cwd = reader_folder(kind, tmp_path, ROOT)
    assert ROOT not in cwd.resolve().parents and cwd.resolve() != ROOT
    with running(script, cwd) as ran:
        assert ran.returncode == 0, ran.output
        assert "no decisions" in ran.output or "plug-over-limit" in ran.output
        t0 = time.monotonic()
        found: dict[str, Any] = {}

        def off() -> bool:
            hit = switched_off_by_a_rule(functools.partial(aiot, cwd))
            if hit is not None:
                found.update(hit)
            return hit is not None

        wait_until(off, SWITCH_OFF_S, "a rule switching plug-1 off, its command DONE")
        took = time.monotonic() - t0
        assert found["decision"]["rule"] == "plug-over-limit", found
        assert found["command"]["result"]["payload"]["detail"] == "relay off"
        log = (cwd / "cluster" / "plug-1.log").read_text()
        assert "plug-1 connected to" in log, log
    print(f"{kind}: switched off by the rules {took:.1f} s after the block returned")
    if kind == "clone root":
        status = untracked(cwd)
        assert status == "", f"the README left files git does not ignore:\n{status}"
