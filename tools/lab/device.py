"""Run the real firmware (firmware/main.py) under MicroPython as a device process.

Used by the tests, the benchmarks and the walkthrough: each device gets its
own config file and data directory, and prints its counters as JSON when it
exits (``exit_when_done``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hub.core.procs import die_with_parent
from tools.base.paths import ROOT, NotInstalled, micropython_binary
from tools.base.procs import stop_process

MAIN = ROOT / "firmware" / "main.py"


def edge_runtime() -> str:
    """Where device processes run here: "micropython" when the unix port is
    installed, else "cpython" (the same edge/ code, without the heap limit)."""
    try:
        micropython_binary()
    except NotInstalled:
        return "cpython"
    return "micropython"


class Device:
    """One device process on the unix port, with its own config and data dir."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        heap: str = "256k",
        romfs: Path | None = None,
        runtime: str = "micropython",
        new_session: bool = False,
        main: Path = MAIN,
    ) -> None:
        """``romfs``: run the firmware from this ROMFS image (tools/firmware/romfs.py), as
        boards do, instead of from source. ``new_session``: start it in its own
        session, out of reach of a terminal's Ctrl-C (`aiot demo` stops its
        plugs itself), and stopped if its starter dies without stopping it.
        ``main``: the script run from source (firmware/main.py; the chaos
        campaign runs the firmware through tools/mpy/chaos_device.py)."""
        self.new_session = new_session
        self.main = main
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = {"data_dir": str(workdir / "data"), **config}
        self.heap = heap
        self.romfs = romfs
        self.runtime = runtime  # "cpython": the same firmware on this Python
        self.proc: subprocess.Popen[str] | None = None
        self.log = workdir / "device.log"
        self._log_file: Any = None

    def start(self) -> Device:
        path = self.workdir / "config.json"
        path.write_text(json.dumps(self.config))
        env = dict(os.environ, MICROPYPATH=f"{ROOT}:.frozen", PYTHONPATH=str(ROOT))
        if self.runtime == "cpython":
            argv = [sys.executable, str(self.main)]
        elif self.romfs is None:
            argv = [micropython_binary(), "-X", f"heapsize={self.heap}", str(self.main)]
        else:
            micropython_binary()  # fail early if the interpreter is missing
            argv = [sys.executable, "-m", "tools.firmware.romfs", "run", "--image", str(self.romfs)]
            argv += ["--heap", self.heap, "--", "-m", "firmware.main"]
        self._close_log()
        self._log_file = self.log.open("a")
        self.proc = subprocess.Popen(
            [*argv, "--config", str(path)],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            start_new_session=self.new_session,
            preexec_fn=die_with_parent if self.new_session else None,
        )
        return self

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for a device with exit_when_done to finish; return its stats."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=timeout)
        self._close_log()
        if self.proc.returncode != 0:
            raise AssertionError(f"device exited {self.proc.returncode}: {self.log.read_text()}")
        stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return stats

    def interrupt(self, timeout: float = 30.0) -> dict[str, Any]:
        """Ctrl-C: the firmware closes its store and prints its counters."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=timeout)
        self._close_log()
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
        if not lines:
            raise AssertionError(f"device printed no counters: {self.log.read_text()[-2000:]}")
        stats: dict[str, Any] = json.loads(lines[-1])
        return stats

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """A power cut: SIGKILL, no chance to flush or close."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._close_log()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self._finish()

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
