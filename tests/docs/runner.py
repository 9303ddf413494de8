"""Run a document's shell blocks as a reader would: bash, in a folder, with the
venv's `aiot` on PATH, the background jobs they start stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass
class Ran:
    """What a block printed, and the session its background jobs live in."""

    returncode: int
    output: str
    pgid: int


def environment() -> dict[str, str]:
    """A reader's shell: the venv first on PATH, and no test-only settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOT_", "PYTEST"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextlib.contextmanager
def running(script: str, cwd: Path, timeout: float = 300) -> Iterator[Ran]:
    """Run ``script`` with ``bash -euo pipefail`` in ``cwd``; yield once bash
    exits, while what it left running in the background still runs; then
    stop every process of its session (SIGTERM, then SIGKILL). Its output
    goes to a file: background jobs keep their copies of it open."""
    log = cwd.parent / f"{cwd.name}.block.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    try:
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = -1
        yield Ran(code, log.read_text(), proc.pid)
    finally:
        stop_session(proc.pid)


def stop_session(pgid: int, grace: float = 20.0) -> None:
    """SIGTERM every process of the group, wait for them, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
