"""Three Raspberry Pis and a workstation on one Linux machine, for running
docs/deploy-raspberry-pi.md as written ("Trying this guide on one machine").

Each Pi is a network namespace ``aiot-hub-N`` on a bridge (the LAN,
192.168.1.0/24, its router 192.168.1.1 in ``aiot-lan``) with the guide's
address 192.168.1.1N, and its own ``/etc`` (a copy of the machine's),
``/opt/aiot``, ``/var/lib/aiot`` and ``/var/backups``, bind-mounted from a
folder of its own for every command it runs; its home is a folder too. The
workstation is ``aiot-workstation`` (192.168.1.2), with the machine's files.
Nothing leaves the namespaces but two empty mount points (/opt/aiot and
/var/lib/aiot), removed again if this made them.

Needs root, ``ip`` (iproute2), ``unshare`` and ``sudo``; a test that cannot
have them skips outside CI and fails in CI (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PIS = ("hub-1", "hub-2", "hub-3")
ADDRESS = {"hub-1": "192.168.1.11", "hub-2": "192.168.1.12", "hub-3": "192.168.1.13"}
WORKSTATION = "workstation"
WORKSTATION_ADDRESS = "192.168.1.2"
ROUTER = "192.168.1.1"
MOUNTS = {  # on a Pi: its folder's part -> where it is mounted
    "etc": "/etc",
    "opt-aiot": "/opt/aiot",
    "var-lib-aiot": "/var/lib/aiot",
    "var-backups": "/var/backups",
}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PI = """#!/bin/bash
# pi NAME COMMAND...: run COMMAND on the Pi NAME, as `ssh NAME COMMAND` does
# (its words joined, run by a shell in the Pi's home). PI_NET=host: with the
# machine's network instead of the Pi's (the installation needs the package index).
set -euo pipefail
name=$1; shift
root="$SITE/$name"
[ -d "$root" ] || { echo "pi: no Pi $name" >&2; exit 255; }
net=(ip netns exec "aiot-$name")
[ "${PI_NET:-}" = host ] && net=()
export JOURNAL="$root/journal" PATH="$SITE/bin:%(path)s"
exec "${net[@]}" unshare --mount --propagation private /bin/bash -c '
root=$1; shift
%(mounts)s
cd "$root/home"
exec /bin/bash -c "$*"' pi "$root" "$@"
"""


def pi_environment() -> dict[str, str]:
    """A root login's environment on a Pi: the system's PATH, no virtualenv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOT_", "PYTEST"))}
    env.pop("VIRTUAL_ENV", None)
    env.update(PATH=SYSTEM_PATH, HOME="/root", USER="root", LOGNAME="root")
    return env


def need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("the Pi guide's run needs root (network namespaces, bind mounts)")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: apt-get install -y iproute2 sudo util-linux")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Site:
    """The folder that holds every Pi's files, and the namespaces."""

    root: Path
    repository: Path
    made: list[Path] = field(default_factory=list)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def pi(self, name: str) -> Path:
        return self.root / name

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """A shell's environment on this site: ``pi`` and ``start-unit`` on PATH."""
        return dict(
            base,
            SITE=str(self.root),
            REPOSITORY=str(self.repository),
            PATH=f"{self.bin}{os.pathsep}{base['PATH']}",
            SUDO_EDITOR="true",  # sudoedit: the reader keeps the sample config as it is
        )

    def on(self, name: str, host_net: bool = False) -> list[str]:
        """The argv prefix that runs a command on ``name`` (a Pi or the workstation)."""
        if name == WORKSTATION:
            return ["ip", "netns", "exec", f"aiot-{WORKSTATION}"]
        return (["env", "PI_NET=host"] if host_net else []) + [str(self.bin / "pi"), name]

    # -- building and tearing down -------------------------------------------------

    def build(self) -> None:
        self.bin.mkdir(parents=True)
        mounts = "\n".join(
            f'mount --bind "$root/{part}" {target}' for part, target in MOUNTS.items()
        )
        pi = self.bin / "pi"
        pi.write_text(_PI % {"mounts": mounts, "path": SYSTEM_PATH})
        start = self.bin / "start-unit"
        start.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "start_unit.py"} "$@"\n')
        for script in (pi, start):
            script.chmod(0o755)
        for target in ("/opt/aiot", "/var/lib/aiot"):
            if not Path(target).exists():
                Path(target).mkdir(parents=True)
                self.made.append(Path(target))
        hosts = "".join(f"{ADDRESS[p]}\t{p}\n" for p in PIS)
        for name in PIS:
            home = self.pi(name)
            for part in MOUNTS:
                if part != "etc":
                    (home / part).mkdir(parents=True)
            (home / "home").mkdir()
            (home / "journal").mkdir()
            shutil.copytree("/etc", home / "etc", symlinks=True)
            with (home / "etc" / "hosts").open("a") as f:
                f.write(hosts)
            (home / "etc" / "hostname").write_text(name + "\n")
            # sudo keeps the site's tools and journal: secure_path and env_keep
            (home / "etc" / "sudoers.d").mkdir(exist_ok=True)
            rule = home / "etc" / "sudoers.d" / "aiot-site"
            rule.write_text(
                f'Defaults secure_path="{self.bin}:{SYSTEM_PATH}"\n'
                'Defaults env_keep += "JOURNAL SITE"\n'
            )
            rule.chmod(0o440)
        self._lan()

    def _lan(self) -> None:
        sh("ip", "netns", "add", "aiot-lan")
        sh("ip", "-n", "aiot-lan", "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", "aiot-lan", "addr", "add", f"{ROUTER}/24", "dev", "br0")
        sh("ip", "-n", "aiot-lan", "link", "set", "br0", "up")
        hosts = {**ADDRESS, WORKSTATION: WORKSTATION_ADDRESS}
        for i, (name, address) in enumerate(hosts.items()):
            ns, port = f"aiot-{name}", f"aiotp{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", port, "netns", "aiot-lan")
            sh("ip", "-n", "aiot-lan", "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", ROUTER)

    def teardown(self) -> None:
        names = [*PIS, WORKSTATION]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for name in names:
                for pid in _pids(f"aiot-{name}"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            end = time.monotonic() + 20
            while time.monotonic() < end and any(_pids(f"aiot-{n}") for n in names):
                time.sleep(0.2)
        for name in [*names, "lan"]:
            subprocess.run(["ip", "netns", "del", f"aiot-{name}"], capture_output=True)
        for path in self.made:
            with contextlib.suppress(OSError):
                path.rmdir()


def _pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@contextlib.contextmanager
def site(root: Path, repository: Path) -> Iterator[Site]:
    need("ip", "unshare", "sudo", "curl")
    for name in (*PIS, WORKSTATION, "lan"):  # left over by a run that was killed
        subprocess.run(["ip", "netns", "del", f"aiot-{name}"], capture_output=True)
    s = Site(root, repository)
    try:
        s.build()
        yield s
    finally:
        s.teardown()
