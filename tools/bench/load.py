"""Driving the load generator processes (tools/bench/generator.py) from a benchmark.

``Generators`` starts them (``python -m <MODULE> generate``, the devices split
over them), sends each command to every one and collects their answers; a
paced rate is shared out in proportion to their devices. ``closed_loop`` is
the measurement the ingest and soak benchmarks share: every device sends
whenever its window has room, warm up, then the readings committed over the
measured window, with the CPU the named processes used meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.base.paths import ROOT
from tools.bench.codec import BenchError
from tools.bench.figures import committed, merge_events, per_second, percentile
from tools.bench.rig import child_env
from tools.bench.watch import CpuMeter

WINDOW: Final = 4  # edge/uplink.py's default window


@dataclass(frozen=True, slots=True)
class Fleet:
    """The simulated devices of a benchmark, and how many generator processes run them."""

    devices: int
    batch_readings: int  # readings per batch
    window: int  # unacknowledged batches per device
    generators: int

    def batches_for(self, rate: float, seconds: float) -> int:
        """Frames per device for ``seconds`` at ``rate`` readings/s (see batches_for)."""
        return batches_for(rate, seconds, self.devices, self.batch_readings)

    def start(
        self, work: Path, creds: list[dict[str, Any]], ack_timeout_s: float | None = None
    ) -> Generators:
        """The generator processes for the devices ``creds``."""
        return Generators(
            work, creds, self.generators, self.batch_readings, self.window, ack_timeout_s
        )


class Generators:
    """The generator processes, driven line by line."""

    MODULE = "tools.bench.hub"  # whose `generate` entry point the processes run

    def __init__(
        self,
        work: Path,
        devices: list[dict[str, Any]],
        procs: int,
        batch_readings: int,
        window: int,
        ack_timeout_s: float | None = None,
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        self.shares: list[float] = []
        groups = [devices[i::procs] for i in range(procs)]
        for i, group in enumerate(grp for grp in groups if grp):
            log = work / f"generator-{i}.log"
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", self.MODULE, "generate"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=ROOT,
                    env=child_env(),
                )
            self.procs.append(proc)
            self.logs.append(log)
            self.shares.append(len(group) / len(devices))
            self._send(
                proc,
                {
                    "cmd": "init",
                    "devices": group,
                    "batch_readings": batch_readings,
                    "window": window,
                    "ack_timeout_s": ack_timeout_s,
                },
            )
        for i in range(len(self.procs)):
            self._answer(i, 60)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _send(self, proc: subprocess.Popen[str], cmd: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()

    def _answer(self, i: int, timeout: float) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            tail = self.logs[i].read_text(errors="replace").strip().splitlines()[-5:]
            what = "timed out" if not ready else f"exited ({proc.poll()})"
            raise BenchError(f"load generator {i} {what}: {' | '.join(tail)}")
        doc: dict[str, Any] = json.loads(line)
        if not doc.get("ok"):
            raise BenchError(f"load generator {i}: {doc.get('error')}")
        return doc

    def call(self, cmd: dict[str, Any], timeout: float = 120.0) -> list[dict[str, Any]]:
        for i, proc in enumerate(self.procs):
            one = dict(cmd)
            if cmd.get("rate"):
                one["rate"] = cmd["rate"] * self.shares[i]
            self._send(proc, one)
        return [self._answer(i, timeout) for i in range(len(self.procs))]

    def events(self, since: float) -> dict[str, list[float]]:
        return merge_events(self.call({"cmd": "events", "since": since}))

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                self._send(proc, {"cmd": "exit"})
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Generators:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def total_stats(stops: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The counters (published, disconnects, ...) summed over the generators' `stop` answers."""
    stats: dict[str, int] = {}
    for s in stops:
        for k, v in s["stats"].items():
            stats[k] = stats.get(k, 0) + v
    return stats


def batches_for(rate: float, seconds: float, devices: int, batch_readings: int) -> int:
    """Frames per device for ``seconds`` at ``rate`` readings/s, and two windows more."""
    return math.ceil(rate * seconds / batch_readings / devices) + 2 * WINDOW


def closed_loop(
    gens: Generators,
    warmup_s: float,
    duration_s: float,
    pids: dict[str, int | None],
    main_threads: Sequence[str] = (),
) -> dict[str, Any]:
    """Closed loop: warm up, measure, stop. The rate over the measured window."""
    gens.call({"cmd": "start", "rate": None, "reset": True})
    time.sleep(warmup_s)
    cpu = CpuMeter(pids, main_threads)
    w0 = time.monotonic()
    time.sleep(duration_s)
    w1 = time.monotonic()
    usage = cpu.read()
    stops = gens.call({"cmd": "stop"}, timeout=60)
    events = merge_events([s["events"] for s in stops])
    n = committed(events, w0, w1)
    bins = per_second(events, w0, w1)
    stats = total_stats(stops)
    lat = [
        x
        for s in stops
        for t, x in zip(s["latency"]["pub"], s["latency"]["lat"], strict=True)
        if w0 <= t < w1
    ]
    return {
        "w0": w0,
        "readings": n,
        "seconds": w1 - w0,
        "rate": n / (w1 - w0),
        "per_second_min": min(bins) if bins else 0,
        "per_second_max": max(bins) if bins else 0,
        "latency_ms_p50": round(percentile(lat, 50) * 1000, 1) if lat else None,
        "latency_ms_p99": round(percentile(lat, 99) * 1000, 1) if lat else None,
        "cpu": usage,
        "stats": stats,
        "unacked_at_end": sum(s["unacked_batches"] for s in stops),
        "exhausted": sum(s["exhausted"] for s in stops),
    }
