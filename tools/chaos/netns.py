"""Network namespaces for a chaos campaign: one per hub, so that a partition
cuts the hub off the network instead of stopping it.

    netns = Netns(hubs=3)
    netns.up()                  # a bridge here, a namespace and a veth pair per hub
    netns.ip(0)                 # '10.123.45.10': where hub-1 binds
    netns.gateway               # '10.123.45.1': this side of the bridge
    netns.cut(0); netns.heal(0) # hub-1's veth down, and up again
    netns.down()

A campaign that was killed leaves its namespaces, veths and bridge behind;
``up`` first removes those of every campaign whose process is gone
(``sweep``).

Needs root and ``ip`` (iproute2); netns_available() says whether this process
has both.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

from tools.chaos import ChaosError


def netns_available() -> bool:
    """True if this process can create network namespaces (``ip netns``)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    name = f"aiotprobe{os.getpid()}"
    ok = _ip("netns", "add", name)
    if ok:
        _ip("netns", "del", name)
    return ok


def _ip(*args: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _ip_or_fail(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ChaosError(f"{' '.join(argv)}: {proc.stderr.strip()}")


_OWNED = re.compile(r"^ach(\d+)[bnv]\d*i?$")  # ach<pid>b, ach<pid>n<i>, ach<pid>v<i>


def sweep() -> list[str]:
    """Remove the namespaces and links of earlier campaigns whose process no
    longer runs (a reused pid keeps its campaign's: nothing of a live
    process is touched). Returns the names removed."""
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30
    ).stdout
    link_names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    removed = []
    for kind, names in (("netns", namespaces), ("link", link_names)):
        for name in names:
            m = _OWNED.match(name)
            if m is None or Path(f"/proc/{m.group(1)}").exists():
                continue
            if _ip(*(("netns", "del") if kind == "netns" else ("link", "del")), name):
                removed.append(name)
    return removed


class Netns:
    """A bridge in this namespace and one namespace per hub, joined by a veth
    pair: the hub's processes (and its broker) run inside, everything else
    reaches them over the bridge. Cutting a hub off = its veth going down."""

    def __init__(self, hubs: int) -> None:
        pid = os.getpid()
        self.tag = f"ach{pid % 1_000_000}"
        self.bridge = f"{self.tag}b"
        self.names = [f"{self.tag}n{i}" for i in range(hubs)]
        self.veths = [f"{self.tag}v{i}" for i in range(hubs)]
        self.prefix = self._free_prefix(pid)
        self.up_done = False

    @staticmethod
    def _free_prefix(pid: int) -> str:
        routes = subprocess.run(
            ["ip", "-4", "route", "show"], capture_output=True, text=True, timeout=30
        ).stdout
        rng = random.Random(pid)
        for _ in range(200):
            prefix = f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}"
            if f"{prefix}." not in routes:
                return prefix
        raise ChaosError("no free 10.x.y.0/24 for the hub network")

    def ip(self, i: int) -> str:
        return f"{self.prefix}.{10 + i}"

    @property
    def gateway(self) -> str:
        """The bridge's address: where the hubs reach this namespace (the cloud)."""
        return f"{self.prefix}.1"

    def up(self) -> None:
        self.down()  # leftovers of an earlier run with the same pid
        sweep()  # and of campaigns that were killed
        self.up_done = True
        _ip_or_fail("link", "add", self.bridge, "type", "bridge")
        _ip_or_fail("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        _ip_or_fail("link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.names, self.veths, strict=True)):
            inside = f"{veth}i"
            _ip_or_fail("netns", "add", ns)
            _ip_or_fail("link", "add", veth, "type", "veth", "peer", "name", inside)
            _ip_or_fail("link", "set", inside, "netns", ns)
            _ip_or_fail("link", "set", veth, "master", self.bridge, "up")
            _ip_or_fail("addr", "add", f"{self.ip(i)}/24", "dev", inside, netns=ns)
            _ip_or_fail("link", "set", inside, "up", netns=ns)
            _ip_or_fail("link", "set", "lo", "up", netns=ns)

    def cut(self, i: int) -> None:
        _ip_or_fail("link", "set", self.veths[i], "down")

    def heal(self, i: int) -> None:
        _ip_or_fail("link", "set", self.veths[i], "up")

    def down(self) -> None:
        for ns in self.names:
            _ip("netns", "del", ns)
        for veth in self.veths:
            _ip("link", "del", veth)
        _ip("link", "del", self.bridge)
