"""A virtual board: the MicroPython unix port behind socat, in a directory.

    socat TCP-LISTEN:PORT,bind=127.0.0.1,reuseaddr,fork EXEC:"micropython -i",pty,raw,echo=0

run in the board's directory behaves as a board with a raw REPL that mpremote
(and `aiot firmware flash`) reaches at ``socket://127.0.0.1:PORT``; what is
flashed lands in that directory, which is the board's file system. Each
connection gets a fresh interpreter, as a board would after a reset.

Powering the board on runs the flashed firmware from that directory, from
its .mpy files only (the repository is not on the path)::

    MICROPYPATH=.:.frozen micropython -m loader --config config.json

    with VirtualBoard(tmp / "board") as vb:
        flash(vb.url, bundle, reset=False)
        proc = vb.power_on()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tools.base.errors import ToolError
from tools.base.paths import micropython_binary
from tools.base.ports import free_port
from tools.base.procs import stop_process

SOCAT_HINT = "socat is missing: sudo apt-get install -y socat"


class VirtualBoardError(ToolError):
    """socat or MicroPython is missing, or the board did not come up."""


def socat_binary() -> str:
    found = shutil.which("socat")
    if found is None:
        raise VirtualBoardError(SOCAT_HINT)
    return found


class VirtualBoard:
    def __init__(self, directory: Path, port: int | None = None, heap: str = "512k") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ, MICROPYPATH=".:.frozen")
        env.pop("PYTHONPATH", None)
        return env

    def start(self, timeout: float = 10.0) -> VirtualBoard:
        socat = socat_binary()
        mp = micropython_binary()
        if " " in mp:
            raise VirtualBoardError(f"socat cannot run an interpreter whose path has spaces: {mp}")
        self.proc = subprocess.Popen(
            [
                socat,
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork",
                f"EXEC:{mp} -X heapsize={self.heap} -i,pty,raw,echo=0",
            ],
            cwd=self.dir,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VirtualBoardError(f"socat exited with status {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise VirtualBoardError(f"the virtual board did not listen on port {self.port}")

    def power_on(
        self, heap: str = "256k", log: Path | None = None, args: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        """Boot the flashed firmware (the loader, then the app) from .mpy files."""
        out = (log or self.dir / "device.log").open("a")
        try:
            return subprocess.Popen(
                [
                    micropython_binary(),
                    "-X",
                    f"heapsize={heap}",
                    "-m",
                    "loader",
                    "--config",
                    "config.json",
                    *args,
                ],
                cwd=self.dir,
                env=self.env(),
                stdout=subprocess.PIPE,
                stderr=out,
                text=True,
            )
        finally:
            out.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
