"""What the machine did while a benchmark ran: CPU per process, and Raft events.

- ``CpuMeter``: for every process named (hubs, their brokers, generators,
  stand-ins) the CPU seconds it used over a window, in cores (CPU seconds /
  wall seconds), from /proc; and the machine's busy time, so that a figure
  taken while something else ran says so.
- ``RaftWatch``: when a hub took a snapshot or saw its Raft term rise.
- ``machine()``: the CPU, memory, kernel, Python and Mosquitto the figures
  were taken on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.link.broker import find_mosquitto
from tools.base.hubclient import HubError
from tools.lab.cluster import LocalCluster


def _cpu_seconds(pid: int, thread: int | None = None) -> float | None:
    """CPU seconds of a process (all its threads), or of one of its threads."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(parts[:8])
    idle = parts[3] + parts[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


class CpuMeter:
    """CPU used by named processes over a window, in cores. For the names in
    ``main_threads`` also the process's main thread alone (a hub's asyncio
    loop: MQTT, ingest, API; the rest of a hub is pysyncobj's thread: Raft,
    apply, LMDB)."""

    def __init__(self, pids: dict[str, int | None], main_threads: Sequence[str] = ()) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.main = [k for k in main_threads if k in self.pids]
        self.t0 = time.monotonic()
        self.start = {k: _cpu_seconds(v) for k, v in self.pids.items()}
        self.start_main = {k: _cpu_seconds(self.pids[k], self.pids[k]) for k in self.main}
        self.busy0 = machine_busy()

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        out: dict[str, Any] = {}
        for k, pid in self.pids.items():
            a, b = self.start[k], _cpu_seconds(pid)
            out[k] = None if a is None or b is None else round((b - a) / wall, 3)
        threads: dict[str, Any] = {}
        for k in self.main:
            pid = self.pids[k]
            a, b = self.start_main[k], _cpu_seconds(pid, pid)
            threads[f"{k}-main-thread"] = (
                None if a is None or b is None else round((b - a) / wall, 3)
            )
        busy1 = machine_busy()
        busy = (busy1[0] - self.busy0[0]) / wall
        ours = sum(v for v in out.values() if v is not None)
        out["all_of_the_above"] = round(ours, 3)
        out["machine_busy"] = round(busy, 3)
        # Whatever else ran on the machine meanwhile (the kernel's own work on
        # loopback traffic included): a figure taken with this high is suspect.
        out["other_processes"] = round(max(0.0, busy - ours), 3)
        out["machine_cores"] = os.cpu_count()
        out.update(threads)
        return out


def machine() -> dict[str, Any]:
    """What the figures were taken on: CPU model, cores, memory, kernel, Python, Mosquitto."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]) // 1024
    mosq = ""
    binary = find_mosquitto()
    if binary is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5)
            mosq = (out.stdout or out.stderr).splitlines()[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mosquitto": mosq,
    }


class RaftWatch:
    """Polls every running node's status once a second from a thread, and
    keeps when a node took a snapshot or saw its Raft term rise (the moments
    latency tails are made of)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.seen: dict[int, tuple[int, int]] = {}
        self.marks: list[tuple[float, str, str]] = []  # (time.monotonic(), node, what)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raft-watch", daemon=True)

    def __enter__(self) -> RaftWatch:
        self._poll()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._poll()

    def _poll(self) -> None:
        for i in range(self.cluster.n):
            if not self.cluster.alive(i):
                continue
            try:
                raft = self.cluster.status(i)["raft"]
            except (HubError, KeyError):
                continue
            now = (int(raft["snapshots_taken"]), int(raft["term"]))
            before = self.seen.get(i)
            self.seen[i] = now
            if before is None:
                continue
            name = self.cluster.node_id(i)
            if now[0] > before[0]:
                self.marks.append((time.monotonic(), name, "snapshot"))
            if now[1] > before[1]:
                self.marks.append((time.monotonic(), name, f"term {now[1]}"))

    def between(self, t0: float, t1: float) -> list[str]:
        """'<seconds after t0> <node> <what>' for the marks in [t0, t1) (1 s polling)."""
        return [f"{t - t0:.0f} s {n} {w}" for t, n, w in self.marks if t0 <= t < t1]
