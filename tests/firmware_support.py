"""Helpers for the firmware tests: a bundle server, a board that reboots,
devices registered with the ota.update capability."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from hub.core import auth
from hub.http.firmware import make_router
from hub.http.principal import AdminTokens
from hub.http.serializers import capability_json
from protocol.profiles import PLUG_CAPABILITIES
from tools.base.paths import ROOT
from tools.base.ports import free_port
from tools.firmware.virtual import VirtualBoard

SECRET = "firmware-test-cluster-secret-0123456789abcdef"
TOKEN = auth.admin_token(SECRET, 86_400)

# What a flashed device declares: the plug's actions and over-the-air updates.
OTA_CAPABILITY = {
    "action": "ota.update",
    "params": [
        {"name": "url", "kind": "text", "min": 12.0, "max": 200.0},
        {"name": "sha256", "kind": "text", "min": 64.0, "max": 64.0},
        {"name": "allow_downgrade", "kind": "bool", "min": 0.0, "max": 1.0},
        {"name": "release", "kind": "text", "min": 2.0, "max": 512.0},
        {"name": "signature", "kind": "text", "min": 128.0, "max": 128.0},
    ],
}


def updatable_capabilities() -> list[dict[str, Any]]:
    caps = [capability_json(c) for c in PLUG_CAPABILITIES]
    return [c for c in caps if c["action"] != "ota.update"] + [OTA_CAPABILITY]


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a thread; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test HTTP server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def bundle_server(root: Path) -> Iterator[str]:
    """hub/http/firmware.py's endpoints over ``root``, as a hub node serves them."""
    app = FastAPI()
    app.state.admin_tokens = AdminTokens(SECRET, auth.MAX_ADMIN_TTL_S, lambda _: None)
    app.include_router(make_router(root))
    with serve(app) as url:
        yield url


class RebootingBoard:
    """A virtual board that is powered on again whenever its firmware ends
    (a reset, a crash), until stop(): the loader counts each start as a boot."""

    def __init__(self, board: VirtualBoard, heap: str = "256k") -> None:
        self.board = board
        self.heap = heap
        self.exits: list[int] = []
        self.outputs: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RebootingBoard:
        self._thread.start()
        return self

    @property
    def boots(self) -> int:
        return len(self.exits) + (1 if self._proc is not None else 0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = self.board.power_on(self.heap)
            out, _ = self._proc.communicate()
            with self._lock:
                self.exits.append(self._proc.returncode)
                self.outputs.append(out)
                self._proc = None

    def stop(self, timeout: float = 30.0) -> str:
        """Ctrl-C the running firmware; returns what it printed (its counters)."""
        self._stop.set()
        with self._lock:
            proc = self._proc
            if proc is not None:
                proc.send_signal(signal.SIGINT)
        self._thread.join(timeout)
        return self.outputs[-1] if self.outputs else ""


def source_tree(root: Path, version: str, broken: bool = False) -> Path:
    """A copy of edge/ and firmware/ with another version (and a main that raises)."""
    for package in ("edge", "firmware"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    node = root / "edge" / "node.py"
    node.write_text(node.read_text().replace('FIRMWARE = "0.1.0"', f'FIRMWARE = "{version}"'))
    if broken:
        main = root / "firmware" / "main.py"
        main.write_text(
            main.read_text().replace(
                "def main(ota=None):\n",
                'def main(ota=None):\n    raise RuntimeError("broken on purpose")\n',
            )
        )
    return root
