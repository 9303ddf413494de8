"""Run the real firmware (firmware/main.py) under MicroPython as a device process.

Used by the tests, the benchmarks, the walkthrough and `aiot device run`: each
device gets its own config file and data directory, and prints its counters
as JSON when it exits (``exit_when_done``, or Ctrl-C). `Console` follows a
running device for a person: what it prints, and which hub it is connected
to (tools/lab/links.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.core.procs import die_with_parent
from tools.base.paths import ROOT, NotInstalled, micropython_binary
from tools.base.procs import stop_process
from tools.lab.links import LinkEvent, LinkTracker, LinkWatch

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
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the key
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.config))
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
        before = _proc_state(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Say what the process was doing: asleep in a call (wchan) or
            # running (its CPU time grew), and the last of its log.
            after = _proc_state(self.proc.pid)
            raise AssertionError(
                f"device did not stop within {timeout} s of SIGINT; "
                f"before: {before}; after: {after}; log: {self.log.read_text()[-2000:]!r}"
            ) from None
        self._close_log()
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
        if not lines:
            # Say how it ended: a signal (negative code), exit(1), or a clean
            # exit that printed something else.
            raise AssertionError(
                f"device printed no counters; exit code {self.proc.returncode}; "
                f"stdout: {out[-1000:]!r}; log: {self.log.read_text()[-2000:]!r}"
            )
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


def _proc_state(pid: int) -> str:
    """A process's state, CPU ticks (user, system) and wait channel, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError as exc:
        return f"unreadable ({exc})"
    return f"state {fields[0]}, utime {fields[11]}, stime {fields[12]}, wchan {wchan or '-'}"


class Console:
    """A started device as a person follows it: each line it prints, and an
    event each time it connects to a hub, fails over or reconnects (read
    from /proc a few times a second: the firmware itself says nothing)."""

    def __init__(self, device: Device, hold_s: float = 0.5) -> None:
        assert device.proc is not None and device.proc.stdout is not None, "start it first"
        self.device = device
        self.proc = device.proc
        self.watch = LinkWatch(device.proc.pid, device.config["hubs"])
        self.tracker = LinkTracker(hold_s)
        self.counters: dict[str, Any] | None = None  # the JSON it prints on exit
        self.last_line = ""  # the last other line it printed
        self._fd = device.proc.stdout.fileno()  # read raw: select() sees no buffer
        self._partial = b""
        self._eof = False

    def _read(self, wait_s: float, on_line: Callable[[str], None]) -> None:
        """What the device printed within ``wait_s``, line by line; its counters kept."""
        if self._eof:
            time.sleep(wait_s)
            return
        if not select.select([self._fd], [], [], wait_s)[0]:
            return
        chunk = os.read(self._fd, 65536)
        if not chunk:
            self._eof = True
            chunk = b"\n"  # the last line, if it had no newline
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for raw in lines:
            text = raw.decode(errors="replace").rstrip()
            if text.startswith("{"):
                try:
                    self.counters = json.loads(text)
                    continue
                except ValueError:
                    pass
            if text:
                self.last_line = text
                on_line(text)

    def follow(
        self,
        on_event: Callable[[LinkEvent], None],
        on_line: Callable[[str], None],
        on_quiet: Callable[[float], None] = lambda _: None,
        poll_s: float = 0.2,
        quiet_s: float = 10.0,
    ) -> int:
        """Until the device exits: its exit status. ``on_quiet(seconds)`` once
        if no link has held ``quiet_s`` after the start. A KeyboardInterrupt
        (Ctrl-C) ends it early; then `stop`."""
        started = time.monotonic()
        quiet_told = False
        while True:
            self._read(poll_s, on_line)
            status = self.proc.poll()
            if status is not None:
                self._drain(on_line, 5.0)
                return status
            now = time.monotonic()
            event = self.tracker.update(self.watch.link(), now)
            if event is not None:
                on_event(event)
            elif not quiet_told and self.tracker.hub is None and now - started > quiet_s:
                quiet_told = True
                on_quiet(now - started)

    def _drain(self, on_line: Callable[[str], None], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._eof and time.monotonic() < deadline:
            self._read(0.2, on_line)

    def log_line(self, line: str) -> None:
        """Append ``line`` to the device's log (what it printed on its way out:
        MicroPython's traceback of the Ctrl-C, which a person need not see)."""
        with self.device.log.open("a") as f:
            f.write(line + "\n")

    def stop(self, on_line: Callable[[str], None], timeout: float = 30.0) -> int:
        """Ctrl-C to the device: it closes its store and prints its counters
        (``self.counters``); its other lines go to ``on_line`` (`log_line`,
        say). SIGTERM, then SIGKILL, if it takes longer than ``timeout``.
        Its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2, on_line)
        self._drain(on_line, 5.0)
        self.device.stop()
        return self.proc.wait()
