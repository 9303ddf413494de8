"""Type-check the device code (edge/, firmware/) against the MicroPython stubs.

    python -m tools.firmware.typecheck            # both ports; installs the stubs once
    python -m tools.firmware.typecheck --port rp2 edge/ota.py

The stubs describe MicroPython's own modules (machine, network, esp32, rp2,
time.ticks_ms, ...) and its reduced standard library, so mypy sees the
device code as the board will run it. Two ports, each with its own stubs
(they cannot share a site-packages: both ship machine.pyi):

    esp32  micropython-esp32-stubs        ESP32 and ESP32-S3 boards
    rp2    micropython-rp2-rpi-pico-w-stubs  the Pico W (rp2.Flash, ...)

Each is installed with pip into ``<venv>/micropython-stubs/<port>/`` and
used as mypy's typeshed. mypy checks the bodies of the unannotated device
functions (check_untyped_defs) for what matters on a board: calls to
modules, functions and attributes that do not exist there, wrong argument
counts and types, missing imports. The inference-heavy codes (assignment,
operator, union-attr, index, var-annotated, has-type) are off: the device
code is deliberately unannotated, and config dicts read as unions. A module
that exists on one port only (esp32, rp2) is ignored in the other's run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.base.paths import ROOT

STUBS = {
    "esp32": "micropython-esp32-stubs==1.29.0.post1",
    "rp2": "micropython-rp2-rpi-pico-w-stubs==1.29.0.post1",
}
OTHER_PORT_MODULES = {"esp32": ["rp2"], "rp2": ["esp32"]}
DISABLED = ["assignment", "operator", "union-attr", "index", "var-annotated", "has-type"]
PATHS = ["edge", "firmware"]


class TypecheckError(RuntimeError):
    pass


def stubs_dir(port: str) -> Path:
    return Path(sys.prefix) / "micropython-stubs" / port


def install(port: str) -> Path:
    """The port's stubs, installed with pip on first use."""
    target = stubs_dir(port)
    marker = target / ".installed"
    spec = STUBS[port]
    if marker.exists() and marker.read_text() == spec:
        return target
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade"]
    proc = subprocess.run(
        [*pip, "--target", str(target), spec],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise TypecheckError(f"pip could not install {spec}: {proc.stderr.strip()[-500:]}")
    marker.write_text(spec)
    return target


def config(port: str, stubs: Path) -> str:
    ignored = ", ".join(OTHER_PORT_MODULES[port])
    return (
        "[mypy]\n"
        "python_version = 3.11\n"
        f"custom_typeshed_dir = {stubs}\n"
        f"mypy_path = {stubs}:{ROOT}\n"
        "explicit_package_bases = True\n"
        "check_untyped_defs = True\n"
        "warn_unused_ignores = False\n"
        f"disable_error_code = {', '.join(DISABLED)}\n"
        "cache_dir = /dev/null\n"
        # The stubs' own findings are not ours.
        "[mypy-_mpy_shed.*,machine,vfs,_io,network,rp2.*,esp32,uasyncio.*,asyncio.*]\n"
        "ignore_errors = True\n"
        f"[mypy-{ignored}]\n"
        "ignore_missing_imports = True\n"
    )


def check(port: str, paths: list[str] | None = None, cwd: Path = ROOT) -> tuple[int, str]:
    """Run mypy for one port; (exit status, mypy's output)."""
    stubs = install(port)
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as f:
        f.write(config(port, stubs))
        ini = f.name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", ini, *(paths or PATHS)],
            capture_output=True,
            text=True,
            cwd=cwd,
        )
    finally:
        Path(ini).unlink()
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", choices=sorted(STUBS), action="append")
    parser.add_argument("paths", nargs="*")
    ns = parser.parse_args(argv)
    status = 0
    for port in ns.port or sorted(STUBS):
        try:
            code, out = check(port, ns.paths or None)
        except TypecheckError as exc:
            print(f"typecheck: {exc}", file=sys.stderr)
            return 2
        print(f"[{port}] {out}")
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
