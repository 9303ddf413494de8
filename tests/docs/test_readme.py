"""The README's "A hub cluster by hand" runs as written: from a folder outside
the checkout and from a clone's root, both at once (the clone's in a network
namespace of its own, since the README's ports are fixed). The cluster it
builds switches a plug over its limit off by itself, and what it leaves
behind in a clone is all git-ignored."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def aiot(cwd: Path, on: list[str], *args: str) -> Any:
    out = subprocess.run(
        [*on, "aiot", *args, "--config", "cluster/hub-1.toml"],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


@contextlib.contextmanager
def own_network() -> Iterator[list[str]]:
    """An argv prefix that runs a command in a network namespace of its own,
    loopback only (the README's ports are fixed, so a second cluster needs its
    own 127.0.0.1); [] where none can be made (not root, no `ip`)."""
    ip = shutil.which("ip")
    if os.geteuid() != 0 or ip is None:
        yield []
        return
    name = f"aiot-readme-{os.getpid()}"
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        on = [ip, "netns", "exec", name]
        subprocess.run([*on, ip, "link", "set", "lo", "up"], check=True)
        yield on
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


def by_hand(kind: str, tmp_path: Path, on: list[str]) -> float:
    """The section's block from a reader's folder of this ``kind`` (``on``: an
    argv prefix it runs under); the seconds from its end to the rules'
    switch-off of plug-1."""
    (script,) = blocks(README, SECTION)
    cwd = reader_folder(kind, tmp_path, ROOT)
    assert ROOT not in cwd.resolve().parents and cwd.resolve() != ROOT
    with running(script, cwd, on=on) as ran:
        assert ran.returncode == 0, ran.output
        assert "no decisions" in ran.output or "plug-over-limit" in ran.output
        t0 = time.monotonic()
        found: dict[str, Any] = {}

        def off() -> bool:
            hit = switched_off_by_a_rule(functools.partial(aiot, cwd, on))
            if hit is not None:
                found.update(hit)
            return hit is not None

        wait_until(off, SWITCH_OFF_S, f"{kind}: a rule switching plug-1 off, its command DONE")
        took = time.monotonic() - t0
        assert found["decision"]["rule"] == "plug-over-limit", found
        assert found["command"]["result"]["payload"]["detail"] == "relay off"
        log = (cwd / "cluster" / "plug-1.log").read_text()
        assert "plug-1 connected to" in log, log
    if kind == "clone root":
        status = untracked(cwd)
        assert status == "", f"the README left files git does not ignore:\n{status}"
    return took


def test_the_cluster_by_hand_runs_as_written_and_decides(tmp_path: Path) -> None:
    """From a folder outside the checkout and from a clone's root at once, the
    clone's in a network namespace of its own; one after the other where no
    namespace can be made."""
    need_mosquitto()
    micropython()
    kinds = ("outside", "clone root")
    with own_network() as net:
        if net:
            with ThreadPoolExecutor(2) as pool:
                runs = [
                    pool.submit(by_hand, k, tmp_path, [] if k == "outside" else net) for k in kinds
                ]
                took = [r.result() for r in runs]
        else:
            took = [by_hand(k, tmp_path, []) for k in kinds]
    for kind, seconds in zip(kinds, took, strict=True):
        print(f"{kind}: switched off by the rules {seconds:.1f} s after the block returned")
