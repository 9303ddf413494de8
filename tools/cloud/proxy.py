"""TCP proxies in front of the cloud's servers: a site that reaches the cloud
only through them loses it when they stop, and gets it back when they start.

    proxies = Proxies(layout.host, [p.client for p in layout.ports], listen="10.1.2.1")
    proxies.start()          # one socat per server, each on its own port
    proxies.urls             # ['tls://10.1.2.1:41234', ...]: the site's [cloud] servers
    proxies.stop()           # every listener and every connection through it gone
    proxies.start()          # listening again on the same ports

Each proxy is a ``socat`` (Debian's socat, `make socat`) that forks a child
per connection; it runs in its own process group, so that stopping it ends
the connections it carries too. TLS goes through untouched: the servers'
certificates must name the address the site dials (``listen``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Final

from hub.core.procs import die_with_parent
from tools.cloud.cluster import CloudError

INSTALL_HINT: Final = "sudo apt-get install -y socat (make socat)"
START_S: Final = 10.0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 0.5).close()
    except OSError:
        return False
    return True


class Proxies:
    """One TCP proxy per target port on ``host``, each listening on its own
    port of ``listen``."""

    def __init__(self, host: str, targets: Sequence[int], listen: str = "127.0.0.1") -> None:
        binary = shutil.which("socat")
        if binary is None:
            raise CloudError(f"socat is not installed: {INSTALL_HINT}")
        self.binary = binary
        self.host = host
        self.listen = listen
        self.targets = list(targets)
        self.ports = [_free_port(listen) for _ in self.targets]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def urls(self) -> list[str]:
        return [f"tls://{self.listen}:{p}" for p in self.ports]

    @property
    def running(self) -> bool:
        return bool(self.procs)

    def start(self) -> None:
        """Listen on every port (again); return once each accepts."""
        if self.procs:
            return
        for port, target in zip(self.ports, self.targets, strict=True):
            self.procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        f"TCP-LISTEN:{port},bind={self.listen},reuseaddr,fork",
                        f"TCP:{self.host}:{target}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # its forked children are stopped with it
                    preexec_fn=die_with_parent,
                )
            )
        deadline = time.monotonic() + START_S
        for port, proc in zip(self.ports, self.procs, strict=True):
            while not _listening(self.listen, port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise CloudError(f"the proxy on {self.listen}:{port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill every proxy and every connection through it."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.procs.clear()
