"""Run a document's shell blocks as a reader would: bash, in a folder, with the
venv's `aiot` on PATH, the background jobs they start stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def reader_folder(kind: str, tmp_path: Path, repository: Path) -> Path:
    """Where a reader runs a document's commands: ``outside`` a checkout (a
    fresh folder), or at the root of a fresh ``clone`` of ``repository``."""
    if kind == "outside":
        home = tmp_path / "newcomer"
        home.mkdir()
        return home
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repository), str(clone)], check=True)
    return clone


def untracked(clone: Path) -> str:
    """What git neither tracks nor ignores in ``clone`` (empty: nothing)."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored=no"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@contextlib.contextmanager
def running(
    script: str,
    cwd: Path,
    timeout: float = 300,
    on: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Ran]:
    """Run ``script`` with ``bash -euo pipefail`` in ``cwd`` (``on``: an argv
    prefix that runs it elsewhere, such as another machine's namespaces;
    ``env``: instead of ``environment()``); yield once bash exits, while what
    it left running in the background still runs; then stop every process
    of its session (SIGTERM, then SIGKILL). Its output goes to a file:
    background jobs keep their copies of it open."""
    log = cwd.parent / f"{cwd.name}.block.log"
    file = cwd.parent / f"{cwd.name}.block.sh"
    file.write_text(script)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*(on or []), "bash", "-euo", "pipefail", str(file)],
            cwd=cwd,
            env=env or environment(),
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


def switched_off_by_a_rule(aiot: Callable[..., Any]) -> dict[str, Any] | None:
    """A rules decision about plug-1 whose relay.set on=false ran on the plug,
    with its command; ``aiot(*args)`` runs an ``aiot`` command (with the
    cluster's config or hub) and returns its JSON."""
    for d in aiot("decisions", "list", "--device", "plug-1", "--json"):
        if d["tier"] != "rules" or not d["command_id"]:
            continue
        cmd = aiot("command", "show", d["command_id"], "--json")
        if (
            cmd["action"] == "relay.set"
            and cmd["params"] == {"on": False}
            and cmd["state"] == "DONE"
        ):
            return {"decision": d, "command": cmd}
    return None
