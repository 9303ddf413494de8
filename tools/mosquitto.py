"""Find and run a private Mosquitto broker on 127.0.0.1 (tools and tests)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "apt-get update && apt-get install -y mosquitto mosquitto-clients"


class BrokerError(RuntimeError):
    """Mosquitto is missing or would not start."""


def find_mosquitto() -> str | None:
    # Debian installs the broker in /usr/sbin, which a non-root PATH lacks.
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"mosquitto exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BrokerError(f"mosquitto did not listen on port {port} within {timeout}s")


@contextlib.contextmanager
def running_mosquitto(workdir: Path, port: int | None = None) -> Iterator[int]:
    """Start Mosquitto on 127.0.0.1; yield its port; stop it on exit.

    Anonymous access on loopback only: this broker serves a walkthrough or a
    test, never devices on a network.
    """
    binary = find_mosquitto()
    if binary is None:
        raise BrokerError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    log = (workdir / "mosquitto.log").open("wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, 10.0)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
