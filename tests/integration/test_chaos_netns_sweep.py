"""A chaos campaign that was killed leaves its network namespaces, veths and
bridge behind; the next campaign's ``up`` removes them, and never touches
those of a campaign that still runs (tools/chaos/netns.py)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tools.chaos.netns import netns_available, sweep

pytestmark = pytest.mark.integration


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def exists(kind: str, name: str) -> bool:
    """Whether the namespace or link ``name`` exists."""
    if kind == "netns":
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        return name in out.stdout.split()
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def dead_pid() -> int:
    """A pid that no process has now."""
    pid = 999_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_leftovers_of_a_killed_campaign_go_and_a_live_ones_stay() -> None:
    if not netns_available():
        pytest.skip("needs root and ip (apt-get install -y iproute2)")
    dead, live = f"ach{dead_pid()}", f"ach{os.getpid()}"
    try:
        for tag in (dead, live):
            ip("netns", "add", f"{tag}n0")
            ip("link", "add", f"{tag}b", "type", "bridge")
            ip("link", "add", f"{tag}v0", "type", "veth", "peer", "name", f"{tag}v0i")
        removed = sweep()
        assert {f"{dead}n0", f"{dead}b"} <= set(removed), removed
        assert {f"{dead}v0", f"{dead}v0i"} & set(removed), removed  # one end takes both
        for kind, name in (("netns", "n0"), ("link", "b"), ("link", "v0"), ("link", "v0i")):
            assert not exists(kind, f"{dead}{name}"), name
        assert exists("netns", f"{live}n0") and exists("link", f"{live}b")
        assert not any(name.startswith(live) for name in removed), removed
    finally:
        for tag in (dead, live):
            subprocess.run(["ip", "netns", "del", f"{tag}n0"], capture_output=True)
            for link in (f"{tag}b", f"{tag}v0"):
                subprocess.run(["ip", "link", "del", link], capture_output=True)
