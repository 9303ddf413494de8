"""`aiot bench soak --minutes M`: the whole system under steady load for a long
while, watching each hub for leaks.

What runs (everything on loopback, as `aiot bench ingest` runs it):

- a 3-node LocalCluster (tools/lab/cluster.py): three `aiot hub run` processes,
  each with its own Mosquitto, the hub's default election timeouts, and the
  shipped energy rules loaded, so that the leader's decision engine sees every
  applied reading;
- the CPython load generator of tools/bench/hub.py (``devices`` simulated
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
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from tools.base.paths import ROOT
from tools.bench import hub as bh
from tools.bench.codec import BenchError

SOAK_BAR_MINUTES: Final = 30.0
RSS_GROWTH_BAR_PCT: Final = 10.0
FD_GROWTH_BAR: Final = 0
CALIBRATE_WARMUP_S: Final = 5.0
CALIBRATE_S: Final = 15.0
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

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# -- /proc ---------------------------------------------------------------------------------


def proc_memory(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile of a process, in KiB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0])
    return out if "VmRSS" in out else None


def proc_fds(pid: int) -> int | None:
    """Open file descriptors of a process; None once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def growth(first: float, last: float) -> float:
    return 0.0 if first <= 0 else round((last - first) / first * 100, 2)


def slope_per_hour(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``times`` (seconds), per hour."""
    n = len(times)
    if n < 2:
        return None
    mt, mv = sum(times) / n, sum(values) / n
    den = sum((t - mt) ** 2 for t in times)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / den * 3600


FD_WINDOW: Final = 6  # samples at each end whose fewest descriptors are compared


def fd_growth(fds: Sequence[int]) -> int | None:
    """The fewest descriptors over the last FD_WINDOW samples minus the fewest
    over the first ones: a leak raises both ends' floor, while a descriptor
    open at the moment of one sample (a snapshot file being written, a peer
    reconnecting) does not."""
    if len(fds) < 2:
        return None
    w = max(1, min(FD_WINDOW, len(fds) // 2))
    return min(fds[-w:]) - min(fds[:w])


def summarize(series: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Growth figures of one process from its samples (t, rss, anon, file in
    KiB, fds), over the samples taken at or after ``warmup_s``."""
    after = [s for s in series if s["t"] >= warmup_s and s["rss_kib"] is not None]
    if len(after) < 2:
        return {"samples_after_warmup": len(after)}
    first, last = after[0], after[-1]
    fds = [s["fds"] for s in after if s["fds"] is not None]
    times = [s["t"] for s in after]
    slope = slope_per_hour(times, [s["rss_kib"] / 1024 for s in after])
    half = after[len(after) // 2 :]
    anon_slope = slope_per_hour([s["t"] for s in half], [s["anon_kib"] / 1024 for s in half])
    return {
        "samples_after_warmup": len(after),
        "rss_mib_first": round(first["rss_kib"] / 1024, 1),
        "rss_mib_last": round(last["rss_kib"] / 1024, 1),
        "rss_mib_max": round(max(s["rss_kib"] for s in after) / 1024, 1),
        "rss_growth_pct": growth(first["rss_kib"], last["rss_kib"]),
        "rss_anon_mib_first": round(first["anon_kib"] / 1024, 1),
        "rss_anon_mib_last": round(last["anon_kib"] / 1024, 1),
        "rss_anon_growth_pct": growth(first["anon_kib"], last["anon_kib"]),
        "rss_file_mib_first": round(first["file_kib"] / 1024, 1),
        "rss_file_mib_last": round(last["file_kib"] / 1024, 1),
        "rss_slope_mib_per_h": None if slope is None else round(slope, 2),
        "rss_anon_slope_mib_per_h_second_half": None
        if anon_slope is None
        else round(anon_slope, 2),
        "fds_first": first["fds"],
        "fds_last": last["fds"],
        "fds_min": min(fds) if fds else None,
        "fds_max": max(fds) if fds else None,
        "fd_last_minus_first": None
        if first["fds"] is None or last["fds"] is None
        else last["fds"] - first["fds"],
        "fd_growth": fd_growth(fds),
    }


# -- the generator, with frames freed once acknowledged -----------------------------------


class _SoakDev(bh._Dev):
    """A generator device whose per-batch arrays hold one entry per batch
    built: bench_hub's ``_Dev.build`` extends them from a bytes object, which
    adds eight entries per batch (harmless in a one-minute benchmark, hundreds
    of MiB over a long soak); the extra entries, never read, are cut off."""

    def build(self, total: int) -> None:
        super().build(total)
        n = len(self.packets)
        for value in vars(self).values():
            if isinstance(value, array.array) and len(value) > n:
                del value[n:]


class SoakGenerator(bh.Generator):
    """tools/bench/hub.py's Generator with one more command, ``trim``: free
    the frames of acknowledged batches (a device never sends below its
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


class SoakGenerators(bh.Generators):
    """bench_hub.Generators, with the processes running SoakGenerator."""

    MODULE = "tools.bench.soak"

    def __enter__(self) -> SoakGenerators:
        return self


# -- the run ---------------------------------------------------------------------------------


def _rules_extra() -> str:
    rules = ROOT / "models" / "rules" / "energy.toml"
    return f'[rules]\nfiles = ["{rules}"]\n'


def _start_cluster(work: Path, say: Say) -> Any:
    from tools.lab.cluster import ClusterError, LocalCluster

    cluster = LocalCluster(
        work / "cluster", bh.NODES, election_ms=bh._election_ms(), extra=_rules_extra()
    )
    say(f"starting {bh.NODES} hub nodes, each with its own Mosquitto, with the energy rules")
    try:
        cluster.start(120)
    except ClusterError as exc:
        cluster.stop()
        raise BenchError(f"the cluster did not start: {exc}") from None
    return cluster


def _start_plugs(cluster: Any, work: Path, count: int, say: Say) -> tuple[list[Any], str]:
    from tools.lab.device import Device, edge_runtime

    runtime = edge_runtime()
    plugs = []
    if count:
        say(f"starting {count} simulated plugs running the firmware on {runtime}")
    for k in range(1, count + 1):
        secrets_cfg = cluster.add_device(f"plug-soak-{k}", limit_w=2000.0, owner="soak")
        dev = Device(
            work / "plugs" / f"plug-soak-{k}", {**secrets_cfg, **DEVICE_TUNING}, runtime=runtime
        )
        plugs.append(dev.start())
    return plugs, runtime


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def _wait_converged(cluster: Any, timeout: float) -> tuple[bool, dict[str, str], float]:
    from tools.base.hubclient import HubError
    from tools.lab.cluster import ClusterError

    t0 = time.monotonic()
    hashes: dict[str, str] = {}
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(HubError, ClusterError, KeyError):
            hashes = cluster.hashes()
            if len(hashes) == cluster.n and len(set(hashes.values())) == 1:
                return True, hashes, round(time.monotonic() - t0, 2)
        time.sleep(1.0)
    return False, hashes, round(time.monotonic() - t0, 2)


def soak(
    minutes: float = 30.0,
    rate: float | None = None,
    devices: int = 48,
    micropython_devices: int = 3,
    sample_s: float = 10.0,
    warmup_s: float | None = None,
    generators: int = 1,
    say: Say = _quiet,
) -> dict[str, Any]:
    """Run the soak; one JSON-ready dict."""
    from hub.link.broker import INSTALL_HINT, find_mosquitto

    if find_mosquitto() is None:
        raise BenchError(f"mosquitto is not installed; run: {INSTALL_HINT}")
    if minutes <= 0 or devices < 1 or sample_s <= 0 or generators < 1 or micropython_devices < 0:
        raise BenchError("minutes, devices, sample_s and generators must be positive")
    if rate is not None and rate <= 0:
        raise BenchError("rate must be positive")
    duration = minutes * 60
    warmup = min(120.0, duration / 5) if warmup_s is None else warmup_s
    if warmup >= duration:
        raise BenchError("the warm-up must be shorter than the run")
    n = bh.BATCH_READINGS
    work = Path(tempfile.mkdtemp(prefix="aiot-bench-soak-"))
    plugs: list[Any] = []
    try:
        cluster = _start_cluster(work, say)
        try:
            creds = bh._register(cluster, devices, say)
            plugs, runtime = _start_plugs(cluster, work, micropython_devices, say)
            with SoakGenerators(work, creds, generators, n, bh.WINDOW) as gens:
                gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
                before = bh._hub_counters(cluster)
                measured = None
                if rate is None:
                    per_dev = bh._batches_for(80_000, CALIBRATE_WARMUP_S + CALIBRATE_S, devices, n)
                    gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
                    say(
                        f"measuring the maximum rate: closed loop, {CALIBRATE_WARMUP_S:g} s "
                        f"warm-up + {CALIBRATE_S:g} s"
                    )
                    p = bh._closed_loop(gens, CALIBRATE_WARMUP_S, CALIBRATE_S, {})
                    measured = p["rate"]
                    if measured <= 0:
                        raise BenchError("nothing was committed while measuring the maximum rate")
                    rate = measured / 2
                gens.call({"cmd": "trim"})
                per_dev_rate = rate / n / devices  # batches per second per device
                ahead = math.ceil(per_dev_rate * (AHEAD_S + 3 * sample_s)) + 2 * bh.WINDOW
                gens.call({"cmd": "build", "batches": ahead, "more": True}, timeout=600)
                say(
                    f"soak: {rate:,.0f} readings/s over {devices} devices and "
                    f"{len(plugs)} plugs for {minutes:g} min, a sample every {sample_s:g} s"
                )
                result = _run(cluster, gens, plugs, rate, duration, warmup, sample_s, ahead, say)
                stops = gens.call({"cmd": "stop"}, timeout=120)
                tail = gens.call({"cmd": "trim"})
                acked = {k: v for part in tail for k, v in part["acked"].items()}
                say("stopping the plugs")
                plug_marks, plug_errors = _stop_plugs(plugs)
                after = bh._hub_counters(cluster)
                say("waiting for every hub to hold the same content")
                converged, hashes, took = _wait_converged(cluster, CONVERGE_TIMEOUT_S)
                missing = _missing(cluster, {**acked, **plug_marks})
                lmdb = {
                    cluster.node_id(i): _dir_bytes(cluster.data_dir(i)) for i in range(cluster.n)
                }
        finally:
            for p in plugs:
                with contextlib.suppress(Exception):
                    p.kill()
            cluster.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    hubs = {
        name: summarize(s, warmup)
        for name, s in result["series"].items()
        if name.startswith("hub-") and not name.endswith("-mosquitto")
    }
    brokers = {
        name: summarize(s, warmup)
        for name, s in result["series"].items()
        if name.endswith("-mosquitto")
    }
    others = {
        name: summarize(s, warmup)
        for name, s in result["series"].items()
        if name.startswith("generator")
    }
    rss_max = max((h.get("rss_growth_pct", math.inf) for h in hubs.values()), default=math.inf)
    anon_max = max(
        (h.get("rss_anon_growth_pct", math.inf) for h in hubs.values()), default=math.inf
    )
    fd_max = max(
        (h["fd_growth"] if h.get("fd_growth") is not None else 10**9 for h in hubs.values()),
        default=10**9,
    )
    lat = result["latency_ms"]
    stats: dict[str, int] = {}
    for s in stops:
        for k, v in s["stats"].items():
            stats[k] = stats.get(k, 0) + v
    return {
        "bench": "soak",
        "minutes": minutes,
        "duration_s": round(result["seconds"], 1),
        "offered_readings_per_s": round(rate, 1),
        "rate_source": "given" if measured is None else "half of the measured maximum",
        "max_readings_per_s_measured": None if measured is None else round(measured, 1),
        "committed_readings_per_s": round(result["committed"] / result["seconds"], 1),
        "ack_latency_ms_p50": None if not lat else round(bh.percentile(lat, 50), 1),
        "ack_latency_ms_p99": None if not lat else round(bh.percentile(lat, 99), 1),
        "rss_growth_pct_max": None if math.isinf(rss_max) else rss_max,
        "rss_anon_growth_pct_max": None if math.isinf(anon_max) else anon_max,
        "fd_growth_max": None if fd_max == 10**9 else fd_max,
        "converged": converged,
        "convergence_s": took,
        "acked_readings_missing": missing,
        "bars": {
            "rss_growth_pct_at_most_10": rss_max <= RSS_GROWTH_BAR_PCT,
            "fd_growth_at_most_0": fd_max <= FD_GROWTH_BAR,
            "converged": converged,
            "nothing_acked_missing": missing == 0,
            "stated_for_minutes": SOAK_BAR_MINUTES,
            "run_long_enough": minutes >= SOAK_BAR_MINUTES,
        },
        "hubs": hubs,
        "brokers": brokers,
        "generator": others,
        "content_hashes": hashes,
        "store_bytes_at_end": lmdb,
        "readings_acked_by_generator": sum(acked.values()),
        "plugs": {
            "count": len(plugs),
            "runtime": runtime,
            "readings_acked": sum(plug_marks.values()),
            "errors": plug_errors + result["plug_errors"],
        },
        "devices": devices,
        "nodes": bh.NODES,
        "sample_s": sample_s,
        "warmup_s": warmup,
        "generator_stats": {
            "batches_published": stats.get("published", 0),
            "disconnects": stats.get("disconnects", 0),
            "reconnects": stats.get("reconnects", 0),
            "devices_out_of_frames": result["exhausted"],
            "unacked_batches_at_end": sum(s["unacked_batches"] for s in stops),
        },
        "rejects": bh._diff(after["rejected"], before["rejected"]),
        "failures": bh._diff(after["failed"], before["failed"]),
        "raft_term_increase": after["term"] - before["term"],
        "hub_restarts": result["hub_exits"],
        "cpu_cores": result["cpu"],
        "samples": result["samples"],
        "machine": bh.machine(),
        "note": (
            "rss: VmRSS from /proc/<pid>/status (rss_anon: RssAnon, the heap; RssFile is mostly "
            "the LMDB map's pages); growth = (last - first) / first over the samples after "
            "warmup_s; fd: entries of /proc/<pid>/fd; converged: equal content hashes on every "
            "hub after the load stopped; acked_readings_missing: readings below a device's "
            "acknowledged watermark that some hub does not hold; cpu_cores.other_processes: "
            "what else ran on the machine meanwhile"
        ),
    }


def _run(
    cluster: Any,
    gens: SoakGenerators,
    plugs: list[Any],
    rate: float,
    duration: float,
    warmup: float,
    sample_s: float,
    ahead: int,
    say: Say,
) -> dict[str, Any]:
    """The paced load for ``duration`` seconds, sampled every ``sample_s``."""
    pids: dict[str, int] = {}
    for i in range(cluster.n):
        name = cluster.node_id(i)
        pids[name] = cluster.procs[i].pid
        broker = cluster.status(i)["broker"]["pid"]
        if broker:
            pids[f"{name}-mosquitto"] = int(broker)
    for i, pid in enumerate(gens.pids):
        pids[f"generator-{i}"] = pid
    series: dict[str, list[dict[str, Any]]] = {k: [] for k in pids}
    samples: list[dict[str, Any]] = []
    latency = array.array("d")
    committed = 0
    exhausted = 0
    hub_exits: list[str] = []
    plug_errors: list[str] = []
    cpu = bh.CpuMeter(dict(pids), [cluster.node_id(i) for i in range(cluster.n)])
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
        row: dict[str, Any] = {"t": round(t, 1), "committed_per_s": round(got / sample_s, 1)}
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
        samples.append(row)
        for p in plugs:
            if p.proc is not None and p.proc.poll() is not None:
                plug_errors.append(f"{p.config['device_id']} exited {p.proc.returncode}")
                p.start()  # it reboots; its flash is intact
        hubs = [row.get(cluster.node_id(i), {}) for i in range(cluster.n)]
        say(
            f"  t={t:6.0f}s  committed {got / sample_s:8,.0f}/s  "
            + "  ".join(
                f"{cluster.node_id(i)} {h.get('rss_mib')} MiB {h.get('fds')} fds"
                for i, h in enumerate(hubs)
            )
        )
        if hub_exits:
            raise BenchError(f"a hub exited during the soak: {', '.join(hub_exits)}")
        if t >= duration:
            break
        next_at += sample_s
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


def _stop_plugs(plugs: list[Any]) -> tuple[dict[str, int], list[str]]:
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


def _missing(cluster: Any, acked: dict[str, int]) -> int:
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


def main(argv: list[str]) -> int:
    """Entry point of the generator processes: `generate`."""
    if argv[:1] == ["generate"]:
        # bench_hub's generator loop, with this module's Generator.
        bh.Generator = SoakGenerator  # type: ignore[misc]
        asyncio.run(bh._generator_main())
        return 0
    print("usage: python -m tools.bench_soak generate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
