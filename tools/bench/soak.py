"""`aiot bench soak --minutes M`: the whole system under steady load for a long
while, watching each hub for leaks.

What runs (everything on loopback, as `aiot bench ingest` runs it):

- a 3-node LocalCluster (tools/lab/cluster.py): three `aiot hub run` processes,
  each with its own Mosquitto, the hub's default election timeouts, and the
  shipped energy rules loaded, so that the leader's decision engine sees every
  applied reading;
- the CPython load generator of tools/bench/generator.py (``devices`` simulated
  devices, each with its own credentials, signed 32-reading batches, a window
  of 4 unacknowledged batches as the edge keeps), paced at ``rate`` readings
  per second: half of the maximum ingest rate, measured first with a short
  closed-loop run on the same cluster unless ``--rate`` gives it. The
  generator here frees the frames of acknowledged batches as it goes and
  builds new ones ahead of the schedule, so that its own memory stays flat;
- ``micropython_devices`` real firmware processes (firmware/main.py on the
  MicroPython unix port; CPython when the interpreter is missing) simulating
  smart plugs at 5 samples a second, with an overconsumption event every
  minute that the rules answer with a relay command.

Every ``sample_s`` seconds it reads, from /proc, each hub's resident memory
(VmRSS, and its parts RssAnon: the heap; RssFile: mapped files, mostly the
LMDB map's pages) and its open file descriptors (/proc/<pid>/fd), the same for
each hub's Mosquitto and the generator, and what the cluster committed since
the last sample.

At the end: the load stops, the devices stop, and the soak waits for every
hub to report the same content hash (``converged``), then checks that every
reading a device saw acknowledged is stored on every hub.

Figures, per hub, over the samples taken after ``warmup_s``:

- ``rss_growth_pct``: (last - first) / first VmRSS, in percent; bar for a
  30-minute run: at most 10;
- ``rss_anon_growth_pct``: the same for RssAnon;
- ``rss_slope_mib_per_h``: the least-squares slope of VmRSS over time;
- ``fd_growth``: last - first open descriptors; bar: at most 0.

A run shorter than 30 minutes reports the same figures, and says that the
bars are stated for 30 minutes (``bars.run_long_enough``).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.base.hubclient import HubError
from tools.base.paths import ROOT
from tools.bench import generator, rig
from tools.bench.codec import BenchError
from tools.bench.figures import percentile
from tools.bench.frames import BATCH_READINGS
from tools.bench.generator import Generator, SimDevice
from tools.bench.leaks import proc_fds, proc_memory, summarize
from tools.bench.load import WINDOW, Generators, batches_for, closed_loop, total_stats
from tools.bench.watch import CpuMeter, machine
from tools.lab.cluster import ClusterError, LocalCluster
from tools.lab.device import Device, edge_runtime

SOAK_BAR_MINUTES: Final = 30.0
RSS_GROWTH_BAR_PCT: Final = 10.0
FD_GROWTH_BAR: Final = 0
CALIBRATE_WARMUP_S: Final = 5.0
CALIBRATE_S: Final = 15.0
CALIBRATE_MAX_RATE: Final = 80_000.0  # frames are built for up to this rate
AHEAD_S: Final = 60.0  # frames built ahead of the schedule
CONVERGE_TIMEOUT_S: Final = 180.0
# The MicroPython plugs: a reading of three channels every 200 ms, batches
# flushed every second, an overconsumption event every minute.
DEVICE_TUNING: Final[dict[str, Any]] = {
    "sample_ms": 200,
    "flush_ms": 1000,
    "status_ms": 5000,
    "keepalive_s": 10,
    "ack_timeout_ms": 3000,
    "failover_after_ms": 10000,
    "event_every_s": 60,
}
NOTE: Final = (
    "rss: VmRSS from /proc/<pid>/status (rss_anon: RssAnon, the heap; RssFile is mostly "
    "the LMDB map's pages); growth = (last - first) / first over the samples after "
    "warmup_s; fd: entries of /proc/<pid>/fd; converged: equal content hashes on every "
    "hub after the load stopped; acked_readings_missing: readings below a device's "
    "acknowledged watermark that some hub does not hold; cpu_cores.other_processes: "
    "what else ran on the machine meanwhile"
)
NO_FD_FIGURE: Final = 10**9  # a hub without an fd_growth figure: worse than any bar


# -- the generator, with frames freed once acknowledged -----------------------------------


class _SoakDev(SimDevice):
    """A generator device whose per-batch arrays hold one entry per batch
    built: ``SimDevice.build`` extends them from a bytes object, which adds
    eight entries per batch (harmless in a one-minute benchmark, hundreds of
    MiB over a long soak); the extra entries, never read, are cut off."""

    def build(self, total: int) -> None:
        super().build(total)
        n = len(self.packets)
        for value in vars(self).values():
            if isinstance(value, array.array) and len(value) > n:
                del value[n:]


class SoakGenerator(Generator):
    """tools/bench/generator.py's Generator with one more command, ``trim``:
    free the frames of acknowledged batches (a device never sends below its
    watermark again), and hand over what was committed since the last trim."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        for dev in self.devs:
            dev.__class__ = _SoakDev
        self.trimmed = [0] * len(self.devs)

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "trim":
            return self._trim()
        return await super().command(cmd)

    def _trim(self) -> dict[str, Any]:
        freed = 0
        for i, dev in enumerate(self.devs):
            upto = min(dev.acked, len(dev.packets))
            for k in range(self.trimmed[i], upto):
                dev.packets[k] = b""
            freed += max(0, upto - self.trimmed[i])
            self.trimmed[i] = max(self.trimmed[i], upto)
        out = {
            "readings": int(sum(self.ev_n)),
            "latency": self.lat.tolist(),
            "freed": freed,
            "unacked_batches": sum(d.next - d.acked for d in self.devs),
            "exhausted": sum(d.exhausted for d in self.devs),
            "acked": {d.id: d.acked * self.n for d in self.devs},
            "disconnects": sum(d.stats["disconnects"] for d in self.devs),
        }
        self._reset_log()
        return out


class SoakGenerators(Generators):
    """tools/bench/load.py's Generators, with the processes running SoakGenerator."""

    MODULE = "tools.bench.soak"

    def __enter__(self) -> SoakGenerators:
        return self


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """The parameters of one soak (`aiot bench soak`'s options)."""

    minutes: float
    rate: float | None  # None: half of the maximum, measured first
    devices: int
    micropython_devices: int
    sample_s: float
    warmup_s: float | None  # None: a fifth of the run, at most 2 minutes
    generators: int

    @property
    def duration(self) -> float:
        return self.minutes * 60

    @property
    def warmup(self) -> float:
        return min(120.0, self.duration / 5) if self.warmup_s is None else self.warmup_s

    def __post_init__(self) -> None:
        if (
            self.minutes <= 0
            or self.devices < 1
            or self.sample_s <= 0
            or self.generators < 1
            or self.micropython_devices < 0
        ):
            raise BenchError("minutes, devices, sample_s and generators must be positive")
        if self.rate is not None and self.rate <= 0:
            raise BenchError("rate must be positive")
        if self.warmup >= self.duration:
            raise BenchError("the warm-up must be shorter than the run")


@dataclass(frozen=True, slots=True)
class Ending:
    """What the soak found once the load and the plugs had stopped."""

    stops: list[dict[str, Any]]  # the generators' answers to `stop`
    acked: dict[str, int]  # readings acknowledged per generator device
    plug_marks: dict[str, int]  # the same per plug
    plug_errors: list[str]
    after: dict[str, Any]  # rig.hub_counters
    converged: bool
    hashes: dict[str, str]
    convergence_s: float
    missing: int  # acknowledged readings some hub does not hold
    store_bytes: dict[str, int]  # per hub, its data directory


@dataclass(frozen=True, slots=True)
class Run:
    """What a soak measured, before it is reported."""

    rate: float
    measured: float | None  # the maximum rate, when measured
    runtime: str  # where the plugs ran: micropython or cpython
    plugs: int
    before: dict[str, Any]  # rig.hub_counters
    sampled: dict[str, Any]  # _load's result
    end: Ending


def soak(
    minutes: float = 30.0,
    rate: float | None = None,
    devices: int = 48,
    micropython_devices: int = 3,
    sample_s: float = 10.0,
    warmup_s: float | None = None,
    generators: int = 1,
    say: rig.Say = rig.quiet,
) -> dict[str, Any]:
    """Run the soak; one JSON-ready dict."""
    rig.require_mosquitto()
    s = Settings(minutes, rate, devices, micropython_devices, sample_s, warmup_s, generators)
    run = rig.on_cluster(
        "aiot-bench-soak-",
        s.devices,
        say,
        lambda cluster, work, creds: _run(cluster, work, creds, s, say),
        extra=_rules_extra(),
        with_what=", with the energy rules",
        timeout=120,
    )
    return report(s, run)


def _rules_extra() -> str:
    rules = ROOT / "models" / "rules" / "energy.toml"
    return f'[rules]\nfiles = ["{rules}"]\n'


def _run(
    cluster: LocalCluster, work: Path, creds: list[dict[str, Any]], s: Settings, say: rig.Say
) -> Run:
    """The soak, with the plugs killed however it ends."""
    plugs: list[Device] = []
    try:
        return _soak(cluster, work, creds, plugs, s, say)
    finally:
        for p in plugs:
            with contextlib.suppress(Exception):
                p.kill()


def _soak(
    cluster: LocalCluster,
    work: Path,
    creds: list[dict[str, Any]],
    plugs: list[Device],
    s: Settings,
    say: rig.Say,
) -> Run:
    """Start the plugs (into ``plugs``) and the generators, find the rate,
    soak, and look at what the hubs hold."""
    runtime = _start_plugs(cluster, work, s.micropython_devices, plugs, say)
    n = BATCH_READINGS
    with SoakGenerators(work, creds, s.generators, n, WINDOW) as gens:
        gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
        before = rig.hub_counters(cluster)
        measured, rate = _rate(gens, s, say)
        gens.call({"cmd": "trim"})
        per_dev_rate = rate / n / s.devices  # batches per second per device
        ahead = math.ceil(per_dev_rate * (AHEAD_S + 3 * s.sample_s)) + 2 * WINDOW
        gens.call({"cmd": "build", "batches": ahead, "more": True}, timeout=600)
        say(
            f"soak: {rate:,.0f} readings/s over {s.devices} devices and "
            f"{len(plugs)} plugs for {s.minutes:g} min, a sample every {s.sample_s:g} s"
        )
        sampled = _load(cluster, gens, plugs, rate, s, ahead, say)
        end = _end(cluster, gens, plugs, say)
    return Run(rate, measured, runtime, len(plugs), before, sampled, end)


def _start_plugs(
    cluster: LocalCluster, work: Path, count: int, plugs: list[Device], say: rig.Say
) -> str:
    """``count`` plugs running the firmware, added to ``plugs``; where they run."""
    runtime = edge_runtime()
    if count:
        say(f"starting {count} simulated plugs running the firmware on {runtime}")
    for k in range(1, count + 1):
        secrets_cfg = cluster.add_device(f"plug-soak-{k}", limit_w=2000.0, owner="soak")
        dev = Device(
            work / "plugs" / f"plug-soak-{k}", {**secrets_cfg, **DEVICE_TUNING}, runtime=runtime
        )
        plugs.append(dev.start())
    return runtime


def _rate(gens: SoakGenerators, s: Settings, say: rig.Say) -> tuple[float | None, float]:
    """(the maximum rate measured, or None if ``s.rate`` gives the rate; the rate)."""
    if s.rate is not None:
        return None, s.rate
    measured = _max_rate(gens, s.devices, say)
    return measured, measured / 2


def _max_rate(gens: SoakGenerators, devices: int, say: rig.Say) -> float:
    """The maximum rate on this cluster: a short closed-loop run."""
    n = BATCH_READINGS
    per_dev = batches_for(CALIBRATE_MAX_RATE, CALIBRATE_WARMUP_S + CALIBRATE_S, devices, n)
    gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
    say(
        f"measuring the maximum rate: closed loop, {CALIBRATE_WARMUP_S:g} s "
        f"warm-up + {CALIBRATE_S:g} s"
    )
    measured = float(closed_loop(gens, CALIBRATE_WARMUP_S, CALIBRATE_S, {})["rate"])
    if measured <= 0:
        raise BenchError("nothing was committed while measuring the maximum rate")
    return measured


def _load(
    cluster: LocalCluster,
    gens: SoakGenerators,
    plugs: list[Device],
    rate: float,
    s: Settings,
    ahead: int,
    say: rig.Say,
) -> dict[str, Any]:
    """The paced load for ``s.duration`` seconds, sampled every ``s.sample_s``."""
    pids = {k: v for k, v in rig.node_pids(cluster).items() if v}
    for i, pid in enumerate(gens.pids):
        pids[f"generator-{i}"] = pid
    series: dict[str, list[dict[str, Any]]] = {k: [] for k in pids}
    samples: list[dict[str, Any]] = []
    latency = array.array("d")
    committed = 0
    exhausted = 0
    hub_exits: list[str] = []
    plug_errors: list[str] = []
    cpu = CpuMeter(dict(pids), [cluster.node_id(i) for i in range(cluster.n)])
    gens.call({"cmd": "start", "rate": rate, "reset": False})
    t0 = time.monotonic()
    next_at = t0
    while True:
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(next_at - now, 1.0))
            continue
        t = now - t0
        parts = gens.call({"cmd": "trim"})
        got = sum(p["readings"] for p in parts)
        committed += got
        for p in parts:
            latency.extend(x * 1000 for x in p["latency"])
        exhausted = max(exhausted, sum(p["exhausted"] for p in parts))
        gens.call({"cmd": "build", "batches": ahead, "more": True}, timeout=600)
        row: dict[str, Any] = {"t": round(t, 1), "committed_per_s": round(got / s.sample_s, 1)}
        _sample(pids, t, series, row, hub_exits)
        samples.append(row)
        _restart_exited(plugs, plug_errors)
        _say_sample(cluster, row, t, got / s.sample_s, say)
        if hub_exits:
            raise BenchError(f"a hub exited during the soak: {', '.join(hub_exits)}")
        if t >= s.duration:
            break
        next_at += s.sample_s
    return {
        "series": series,
        "samples": samples,
        "seconds": time.monotonic() - t0,
        "committed": committed,
        "latency_ms": latency.tolist(),
        "exhausted": exhausted,
        "hub_exits": hub_exits,
        "plug_errors": plug_errors,
        "cpu": cpu.read(),
    }


def _sample(
    pids: dict[str, int],
    t: float,
    series: dict[str, list[dict[str, Any]]],
    row: dict[str, Any],
    hub_exits: list[str],
) -> None:
    """One sample of every process into ``series``; the hubs' also into
    ``row``, and a hub that is gone into ``hub_exits``."""
    for name, pid in pids.items():
        mem = proc_memory(pid)
        fds = proc_fds(pid)
        series[name].append(
            {
                "t": t,
                "rss_kib": None if mem is None else mem["VmRSS"],
                "anon_kib": None if mem is None else mem.get("RssAnon", 0),
                "file_kib": None if mem is None else mem.get("RssFile", 0),
                "fds": fds,
            }
        )
        if name.startswith("hub-") and "-" not in name[4:]:
            row[name] = {
                "rss_mib": None if mem is None else round(mem["VmRSS"] / 1024, 1),
                "anon_mib": None if mem is None else round(mem.get("RssAnon", 0) / 1024, 1),
                "fds": fds,
            }
            if mem is None and name not in hub_exits:
                hub_exits.append(name)


def _restart_exited(plugs: list[Device], errors: list[str]) -> None:
    for p in plugs:
        if p.proc is not None and p.proc.poll() is not None:
            errors.append(f"{p.config['device_id']} exited {p.proc.returncode}")
            p.start()  # it reboots; its flash is intact


def _say_sample(
    cluster: LocalCluster, row: dict[str, Any], t: float, rate: float, say: rig.Say
) -> None:
    hubs = [row.get(cluster.node_id(i), {}) for i in range(cluster.n)]
    say(
        f"  t={t:6.0f}s  committed {rate:8,.0f}/s  "
        + "  ".join(
            f"{cluster.node_id(i)} {h.get('rss_mib')} MiB {h.get('fds')} fds"
            for i, h in enumerate(hubs)
        )
    )


def _end(cluster: LocalCluster, gens: SoakGenerators, plugs: list[Device], say: rig.Say) -> Ending:
    """Stop the load and the plugs; wait for the hubs to converge and check
    that they hold every reading a device saw acknowledged."""
    stops = gens.call({"cmd": "stop"}, timeout=120)
    tail = gens.call({"cmd": "trim"})
    acked = {k: v for part in tail for k, v in part["acked"].items()}
    say("stopping the plugs")
    plug_marks, plug_errors = _stop_plugs(plugs)
    after = rig.hub_counters(cluster)
    say("waiting for every hub to hold the same content")
    converged, hashes, took = _wait_converged(cluster, CONVERGE_TIMEOUT_S)
    return Ending(
        stops=stops,
        acked=acked,
        plug_marks=plug_marks,
        plug_errors=plug_errors,
        after=after,
        converged=converged,
        hashes=hashes,
        convergence_s=took,
        missing=_missing(cluster, {**acked, **plug_marks}),
        store_bytes={cluster.node_id(i): _dir_bytes(cluster.data_dir(i)) for i in range(cluster.n)},
    )


def _stop_plugs(plugs: list[Device]) -> tuple[dict[str, int], list[str]]:
    marks: dict[str, int] = {}
    errors: list[str] = []
    for p in plugs:
        try:
            stats = p.interrupt(30)
            marks[p.config["device_id"]] = int(stats.get("watermark", 0))
        except Exception as exc:  # a plug that cannot say is an error to report, not a crash
            errors.append(f"{p.config['device_id']}: {exc}")
            p.kill()
    return marks, errors


def _wait_converged(cluster: LocalCluster, timeout: float) -> tuple[bool, dict[str, str], float]:
    t0 = time.monotonic()
    hashes: dict[str, str] = {}
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(HubError, ClusterError, KeyError):
            hashes = cluster.hashes()
            if len(hashes) == cluster.n and len(set(hashes.values())) == 1:
                return True, hashes, round(time.monotonic() - t0, 2)
        time.sleep(1.0)
    return False, hashes, round(time.monotonic() - t0, 2)


def _missing(cluster: LocalCluster, acked: dict[str, int]) -> int:
    """Readings below each device's acknowledged watermark that a hub lacks
    (a hub's watermark below what the device saw acknowledged)."""
    missing = 0
    for i in range(cluster.n):
        if not cluster.alive(i):
            continue
        client = cluster.client(i)
        for device_id, mark in acked.items():
            stored = int(client.get(f"/v1/devices/{device_id}")["watermark"])
            missing += max(0, mark - stored)
    return missing


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


# -- the report ------------------------------------------------------------------------------


def report(s: Settings, run: Run) -> dict[str, Any]:
    """The JSON-ready result of a soak."""
    sampled, end = run.sampled, run.end
    hubs, brokers, others = _summaries(sampled["series"], s.warmup)
    rss_max = max((h.get("rss_growth_pct", math.inf) for h in hubs.values()), default=math.inf)
    anon_max = max(
        (h.get("rss_anon_growth_pct", math.inf) for h in hubs.values()), default=math.inf
    )
    fd_max = max(
        (h["fd_growth"] if h.get("fd_growth") is not None else NO_FD_FIGURE for h in hubs.values()),
        default=NO_FD_FIGURE,
    )
    lat = sampled["latency_ms"]
    before, after = run.before, end.after
    return {
        "bench": "soak",
        "minutes": s.minutes,
        "duration_s": round(sampled["seconds"], 1),
        "offered_readings_per_s": round(run.rate, 1),
        "rate_source": "given" if run.measured is None else "half of the measured maximum",
        "max_readings_per_s_measured": None if run.measured is None else round(run.measured, 1),
        "committed_readings_per_s": round(sampled["committed"] / sampled["seconds"], 1),
        "ack_latency_ms_p50": None if not lat else round(percentile(lat, 50), 1),
        "ack_latency_ms_p99": None if not lat else round(percentile(lat, 99), 1),
        "rss_growth_pct_max": None if math.isinf(rss_max) else rss_max,
        "rss_anon_growth_pct_max": None if math.isinf(anon_max) else anon_max,
        "fd_growth_max": None if fd_max == NO_FD_FIGURE else fd_max,
        "converged": end.converged,
        "convergence_s": end.convergence_s,
        "acked_readings_missing": end.missing,
        "bars": {
            "rss_growth_pct_at_most_10": rss_max <= RSS_GROWTH_BAR_PCT,
            "fd_growth_at_most_0": fd_max <= FD_GROWTH_BAR,
            "converged": end.converged,
            "nothing_acked_missing": end.missing == 0,
            "stated_for_minutes": SOAK_BAR_MINUTES,
            "run_long_enough": s.minutes >= SOAK_BAR_MINUTES,
        },
        "hubs": hubs,
        "brokers": brokers,
        "generator": others,
        "content_hashes": end.hashes,
        "store_bytes_at_end": end.store_bytes,
        "readings_acked_by_generator": sum(end.acked.values()),
        "plugs": {
            "count": run.plugs,
            "runtime": run.runtime,
            "readings_acked": sum(end.plug_marks.values()),
            "errors": end.plug_errors + sampled["plug_errors"],
        },
        "devices": s.devices,
        "nodes": rig.NODES,
        "sample_s": s.sample_s,
        "warmup_s": s.warmup,
        "generator_stats": _generator_report(end.stops, sampled["exhausted"]),
        "rejects": rig.diff(after["rejected"], before["rejected"]),
        "failures": rig.diff(after["failed"], before["failed"]),
        "raft_term_increase": after["term"] - before["term"],
        "hub_restarts": sampled["hub_exits"],
        "cpu_cores": sampled["cpu"],
        "samples": sampled["samples"],
        "machine": machine(),
        "note": NOTE,
    }


def _summaries(
    series: dict[str, list[dict[str, Any]]], warmup: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """leaks.summarize for the hubs, their brokers and the generators."""
    hubs = {
        name: summarize(x, warmup)
        for name, x in series.items()
        if name.startswith("hub-") and not name.endswith("-mosquitto")
    }
    brokers = {
        name: summarize(x, warmup) for name, x in series.items() if name.endswith("-mosquitto")
    }
    others = {
        name: summarize(x, warmup) for name, x in series.items() if name.startswith("generator")
    }
    return hubs, brokers, others


def _generator_report(stops: list[dict[str, Any]], exhausted: int) -> dict[str, Any]:
    stats = total_stats(stops)
    return {
        "batches_published": stats.get("published", 0),
        "disconnects": stats.get("disconnects", 0),
        "reconnects": stats.get("reconnects", 0),
        "devices_out_of_frames": exhausted,
        "unacked_batches_at_end": sum(x["unacked_batches"] for x in stops),
    }


def main(argv: list[str]) -> int:
    """Entry point of the generator processes: `generate`."""
    if argv[:1] == ["generate"]:
        asyncio.run(generator.serve(SoakGenerator))
        return 0
    print("usage: python -m tools.bench.soak generate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
