"""Find and run a private Mosquitto broker on 127.0.0.1 (tools and tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from hub.link.broker import find_mosquitto
from tools.base.errors import ToolError
from tools.base.ports import free_port
from tools.base.procs import stop_process

__all__ = ["INSTALL_HINT", "BrokerError", "find_mosquitto", "running_mosquitto"]

INSTALL_HINT = "apt-get update && apt-get install -y mosquitto mosquitto-clients"


class BrokerError(ToolError):
    """Mosquitto is missing or would not start."""


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerError(f"mosquitto exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise BrokerError(f"mosquitto did not listen on port {port} within {timeout}s")


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file for ``users`` (name -> password), via mosquitto_passwd."""
    binary = shutil.which("mosquitto_passwd") or next(
        (
            p
            for p in ("/usr/bin/mosquitto_passwd", "/usr/local/bin/mosquitto_passwd")
            if Path(p).exists()
        ),
        None,
    )
    if binary is None:
        raise BrokerError(f"mosquitto_passwd is not installed; run: {INSTALL_HINT}")
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        proc = subprocess.run(
            [binary, "-b", *create, str(path), user, password], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise BrokerError(f"mosquitto_passwd failed: {proc.stderr.strip()}")
    return path


@contextlib.contextmanager
def running_mosquitto(
    workdir: Path,
    port: int | None = None,
    *,
    users: dict[str, str] | None = None,
    extra_conf: str = "",
) -> Iterator[int]:
    """Start Mosquitto on 127.0.0.1; yield its port; stop it on exit.

    Anonymous access on loopback only: this broker serves a walkthrough or a
    test, never devices on a network. With ``users`` (name -> password) it
    takes only those credentials instead. ``extra_conf`` is appended to the
    generated config as is (for example an ``acl_file`` line).

    Leaving the block and entering a new one with the same ``port`` restarts
    the broker on that port (it has no persistence: sessions start empty).
    """
    binary = find_mosquitto()
    if binary is None:
        raise BrokerError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    if users is None:
        access = "allow_anonymous true\n"
    else:
        passwords = write_password_file(workdir / "passwords", users)
        access = f"allow_anonymous false\npassword_file {passwords}\n"
        if os.geteuid() == 0:
            # As root, Mosquitto drops to the "mosquitto" user before it reads
            # the password file, which a private temporary folder hides.
            access += "user root\n"
    conf.write_text(
        f"listener {port} 127.0.0.1\n{access}persistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n" + extra_conf
    )
    log = (workdir / "mosquitto.log").open("ab")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, proc, 10.0)
        yield port
    finally:
        stop_process(proc, 5.0)
        log.close()
