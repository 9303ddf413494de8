"""Free TCP ports on 127.0.0.1 for local brokers, hubs and boards.

A port is chosen now and bound later by another process (Mosquitto, a hub),
so between the two anything else may take it. The kernel hands out the
ports of its ephemeral range (``net.ipv4.ip_local_port_range``) to every
outgoing connection too, so ports are chosen below that range, where only
an explicit bind lands. Under pytest-xdist each worker (and every process it
starts, which inherits its environment) chooses from a slice of its own, so
two workers never choose the same port; and a process does not hand out the
same port twice within ``REUSE_AFTER_S``.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from pathlib import Path
from typing import Final

LOWEST: Final = 15_000
EPHEMERAL: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
REUSE_AFTER_S: Final = 600.0
MIN_SPAN: Final = 500  # a narrower slice falls back to the kernel's choice

_given: dict[int, float] = {}  # port -> when this process handed it out
_lock = threading.Lock()
_rng = random.SystemRandom()


def port_range(env: dict[str, str] | None = None) -> range | None:
    """The ports this process chooses from: below the ephemeral range, the
    xdist worker's slice of it; None when that is too narrow to use."""
    env = dict(os.environ) if env is None else env
    try:
        top = int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32_768
    lo, hi = LOWEST, min(top, 65_536)
    worker, count = env.get("PYTEST_XDIST_WORKER", ""), env.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 0:
        k, n = int(worker[2:]), int(count)
        span = (hi - lo) // n
        lo, hi = lo + k * span, lo + (k + 1) * span
    return range(lo, hi) if hi - lo >= MIN_SPAN else None


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket stays bound until all are chosen."""
    span = port_range()
    with contextlib.ExitStack() as stack:
        if span is None:
            socks = [stack.enter_context(socket.socket()) for _ in range(n)]
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return [int(s.getsockname()[1]) for s in socks]
        with _lock:
            now = time.monotonic()
            for p in [p for p, t in _given.items() if now - t > REUSE_AFTER_S]:
                del _given[p]
            out: list[int] = []
            start = _rng.randrange(len(span))
            for i in range(len(span)):
                port = span[(start + i) % len(span)]
                if port in _given:
                    continue
                s = stack.enter_context(socket.socket())
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                out.append(port)
                if len(out) == n:
                    break
            if len(out) < n:
                raise OSError(f"no {n} free ports in {span.start}-{span.stop - 1}")
            for p in out:
                _given[p] = now
            return out
