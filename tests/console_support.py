"""Helpers for the tests of `aiot device run`: the `aiot` command run as a
user runs it, from a folder of their own, and a long-running one whose output
is read as it comes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from tools.base.paths import ROOT

# The lines `aiot device run` prints when the device connects or fails over.
LINK_LINE = re.compile(r"^\d\d:\d\d:\d\d (\S+) (connected to|failed over to) 127\.0\.0\.1:(\d+) ")


def aiot_env() -> dict[str, str]:
    """The `aiot` command as an installed one runs: the checkout importable,
    the working directory elsewhere, no hub named by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOT_")}
    return {**env, "PYTHONPATH": str(ROOT)}


def aiot(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env=aiot_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


class Running:
    """`aiot device run` as a process, its output read as it comes."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "device", "run", *args],
            cwd=cwd,
            env=aiot_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(s, into), daemon=True)
            for s, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: IO[str], into: list[str]) -> None:
        with stream:
            for line in stream:
                into.append(line.rstrip("\n"))

    def links(self) -> list[tuple[str, int]]:
        """(what, broker port) of each connection line so far."""
        found = (LINK_LINE.match(ln) for ln in list(self.out))
        return [(m.group(2), int(m.group(3))) for m in found if m]

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # its device gets SIGTERM (die_with_parent)
            self.proc.wait(10)
        for t in self._threads:
            t.join(10)

    def device_pids(self) -> list[int]:
        """The firmware processes this one started that are still running."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids
