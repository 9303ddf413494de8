"""`aiot bench ingest`: committed readings per second on a hub cluster, and ack latency.

The cluster is tools/bench/rig.py's (three hub nodes on loopback, each with
its own Mosquitto); the load comes from tools/bench/generator.py's processes
(one MQTT connection per device, signed 32-reading batches built before the
clock starts, a window of unacknowledged batches per device). Three phases:

1. ``readings_per_s``: closed loop for ``warmup_s`` + ``duration_s``;
   readings committed during the last ``duration_s`` / ``duration_s``. No
   batch is ever resent: a batch that fails is simply never acknowledged, and
   the rejects and failures the hubs counted are reported.
2. ``ack_latency_ms_p50`` / ``_p99``: paced at half the rate of phase 1 for
   ``latency_s`` (after 2 s of warm-up), from each batch's publish to the
   CommitAck that covers it.
3. ``baseline_readings_per_s``: the cluster is stopped; each node is
   replaced by its stand-in (tools/bench/standin.py: the same Mosquitto
   setup and a plain subscriber that acks every batch). The same generator
   sends the same frames to the same node index, closed loop, timed the same
   way.
4. With ``journal_baseline``: a second cluster whose nodes run with
   ``[raft] durable_journal = false`` (hub/state/journal.py: the Raft journal
   is never synced) goes through phases 1 and 2 with the same settings.
   ``undurable_journal`` holds its figures and ``durable_journal_cost``
   compares: the durable run's throughput over the undurable one's, and the
   ack latency the syncs add. ``raft_journal_flushes`` counts the syncs of
   every node during phases 1 and 2.

CPU: for every process (hubs, their brokers, generators, stand-ins) the CPU
seconds it used during the measured window, in cores (tools/bench/watch.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.bench import rig
from tools.bench.codec import BenchError
from tools.bench.figures import committed, merge_events, percentile, slices
from tools.bench.frames import BATCH_READINGS
from tools.bench.load import WINDOW, Fleet, Generators, closed_loop
from tools.bench.standin import stand_ins
from tools.bench.store import store
from tools.bench.watch import CpuMeter, RaftWatch, machine
from tools.lab.cluster import LocalCluster

LATENCY_WARMUP_S: Final = 2.0
INGEST_BAR: Final = 20_000  # readings/s, 32-reading batches
P99_BAR_MS: Final = 250.0
HUBS: Final = tuple(f"hub-{i + 1}" for i in range(rig.NODES))  # whose main thread is metered too
NOTE: Final = (
    "readings_per_s: readings covered by CommitAck watermarks during the measured "
    "window, closed loop with a window of unacknowledged batches per device, nothing "
    "resent; latency: publish to the covering CommitAck, paced at half that rate; "
    "baseline: the same generator and frames through the same Mosquitto setup to a "
    "plain aiomqtt subscriber that acks every batch (no Raft, store or validation); "
    "cpu_cores: CPU seconds / wall seconds per process over the measured window; "
    "undurable_journal: the same phases 1 and 2 on a cluster with [raft] "
    "durable_journal = false (the Raft journal never synced)"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The parameters of one run (`aiot bench ingest`'s options)."""

    duration_s: float
    latency_s: float
    warmup_s: float
    max_rate: float
    baseline: bool
    fleet: Fleet
    journal_baseline: bool = False

    def __post_init__(self) -> None:
        f = self.fleet
        if f.devices < 1 or f.batch_readings < 1 or f.window < 1 or f.generators < 1:
            raise BenchError("devices, batch readings, window and generators must be at least 1")
        if self.duration_s <= 0 or self.latency_s <= 0 or self.warmup_s < 0:
            raise BenchError("durations must be positive")


@dataclass(frozen=True, slots=True)
class Latency:
    """Phase 2: paced at ``offered`` readings/s, measured over [w0, w1)."""

    offered: float
    committed_rate: float
    w0: float
    w1: float
    lat_ms: list[float]  # per batch published in the window: publish to covering ack
    lat_by_time: list[tuple[float, float]]  # (publish time, latency in ms)
    from_schedule_ms: list[float]  # release by the schedule to covering ack
    unacked: int
    cpu: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Run:
    """What a run measured, before it is reported."""

    throughput: dict[str, Any]  # load.closed_loop's figures for phase 1
    latency: Latency
    baseline: dict[str, Any] | None  # the same for the stand-ins
    before: dict[str, Any]  # rig.hub_counters before phase 1,
    mid: dict[str, Any]  # between phases 1 and 2,
    after: dict[str, Any]  # and after phase 2
    raft_events: tuple[list[str], list[str]]  # RaftWatch marks in phase 1 and 2
    election: dict[str, Any]
    build_s: float


def ingest(
    duration_s: float = 60.0,
    latency_s: float = 30.0,
    devices: int = 48,
    batch_readings: int = BATCH_READINGS,
    window: int = WINDOW,
    warmup_s: float = 5.0,
    generators: int = 1,
    max_rate: float = 80_000.0,
    baseline: bool = True,
    journal_baseline: bool = False,
    say: rig.Say = rig.quiet,
) -> dict[str, Any]:
    """Committed readings per second, ack latency at half that rate, and the
    bare-broker baseline; with ``journal_baseline`` the same on a cluster
    whose Raft journal is never synced. One JSON-ready dict."""
    rig.require_mosquitto()
    fleet = Fleet(devices, batch_readings, window, generators)
    s = Settings(duration_s, latency_s, warmup_s, max_rate, baseline, fleet, journal_baseline)
    run = rig.on_cluster(
        "aiot-bench-ingest-", devices, say, lambda c, work, creds: _run(c, work, creds, s, say)
    )
    result = report(s, run)
    if journal_baseline:
        off = dataclasses.replace(s, baseline=False)
        undurable = rig.on_cluster(
            "aiot-bench-ingest-undurable-",
            devices,
            say,
            lambda c, work, creds: _run(c, work, creds, off, say),
            with_what=", with durable_journal = false",
            durable_journal=False,
        )
        result.update(journal_report(result, undurable))
    # What the readings take in the store: bytes per reading, days of raw
    # data per GiB per plug, a retention step (tools/bench/store.py).
    result.update({f"store_{k}": v for k, v in store(6.0, say=say).items()})
    return result


def _run(
    cluster: LocalCluster, work: Path, creds: list[dict[str, Any]], s: Settings, say: rig.Say
) -> Run:
    """Start the generators and run the three phases."""
    election = rig.election_timing(cluster)
    with s.fleet.start(work, creds) as gens:
        per_dev = s.fleet.batches_for(s.max_rate, s.warmup_s + s.duration_s)
        say(f"pre-building {per_dev * s.fleet.devices} signed frames ({per_dev} per device)")
        built = gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
        build_s = max(b["seconds"] for b in built)
        say("connecting every device to the first hub of its list")
        gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
        before = rig.hub_counters(cluster)
        pids = {**rig.node_pids(cluster), **{f"generator-{i}": p for i, p in enumerate(gens.pids)}}
        with RaftWatch(cluster) as watch:
            p1 = _throughput(gens, pids, s, say)
            mid = rig.hub_counters(cluster)
            p2 = _latency(gens, pids, p1["rate"], s, say)
        after = rig.hub_counters(cluster)
        gens.call({"cmd": "disconnect"})
        cluster.stop()
        base = _baseline(work, cluster, gens, creds, p1["rate"], s, say) if s.baseline else None
    raft_events = (
        watch.between(p1["w0"], p1["w0"] + p1["seconds"]),
        watch.between(p2.w0, p2.w1),
    )
    return Run(p1, p2, base, before, mid, after, raft_events, election, build_s)


def _throughput(
    gens: Generators, pids: dict[str, int | None], s: Settings, say: rig.Say
) -> dict[str, Any]:
    """Phase 1: closed loop, the maximum rate."""
    say(
        f"phase 1: closed loop, window {s.fleet.window}, "
        f"{s.warmup_s:g} s warm-up + {s.duration_s:g} s"
    )
    p1 = closed_loop(gens, s.warmup_s, s.duration_s, pids, HUBS)
    if p1["rate"] <= 0:
        raise BenchError("nothing was committed in phase 1: see the hub logs")
    return p1


def _latency(
    gens: Generators, pids: dict[str, int | None], rate: float, s: Settings, say: rig.Say
) -> Latency:
    """Phase 2: paced at half of ``rate``; the ack latency of every batch
    published in the measured window."""
    half = rate / 2
    more = s.fleet.batches_for(half, LATENCY_WARMUP_S + s.latency_s + 5)
    say(f"phase 2: paced at {half:,.0f} readings/s (half of {rate:,.0f}) for {s.latency_s:g} s")
    gens.call({"cmd": "build", "batches": more, "more": True}, timeout=600)
    gens.call({"cmd": "start", "rate": half, "reset": False})
    time.sleep(LATENCY_WARMUP_S)
    cpu = CpuMeter(pids, HUBS)
    w0 = time.monotonic()
    time.sleep(s.latency_s)
    w1 = time.monotonic()
    usage = cpu.read()
    stops = gens.call({"cmd": "stop"}, timeout=60)
    events = merge_events([x["events"] for x in stops])
    lat_pub = [x for st in stops for x in st["latency"]["pub"]]
    lat = [x for st in stops for x in st["latency"]["lat"]]
    lat_rel = [x for st in stops for x in st["latency"]["rel"]]
    sel = [i for i, t in enumerate(lat_pub) if w0 <= t < w1]
    lat_ms = [lat[i] * 1000 for i in sel]
    if not lat_ms:
        raise BenchError("no batch was acknowledged in phase 2")
    return Latency(
        offered=half,
        committed_rate=committed(events, w0, w1) / (w1 - w0),
        w0=w0,
        w1=w1,
        lat_ms=lat_ms,
        lat_by_time=[(lat_pub[i], lat[i] * 1000) for i in sel],
        from_schedule_ms=[lat_rel[i] * 1000 for i in sel if lat_rel[i] >= 0],
        unacked=sum(st["unacked_batches"] for st in stops),
        cpu=usage,
    )


def _baseline(
    work: Path,
    cluster: LocalCluster,
    gens: Generators,
    creds: list[dict[str, Any]],
    rate: float,
    s: Settings,
    say: rig.Say,
) -> dict[str, Any]:
    """Phase 3: the same frames, closed loop, to the stand-ins in place of the nodes."""
    say("baseline: the same frames through the same Mosquitto setup to a plain subscriber")
    with stand_ins(work, creds, rig.NODES) as (ports, sp, bp):
        by_port = {cluster.ports[i].broker: ports[i] for i in range(rig.NODES)}
        routes = {d["device_id"]: [[h, by_port[int(p)]] for h, p in d["hubs"]] for d in creds}
        # The bare path runs faster: frames for up to 8 times the hub's rate.
        per_dev = s.fleet.batches_for(max(s.max_rate, 8 * rate), s.warmup_s + s.duration_s)
        gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
        gens.call({"cmd": "connect", "hubs": routes})
        bpids: dict[str, int | None] = {
            **{f"stand-in-{i + 1}": p for i, p in enumerate(sp)},
            **{f"stand-in-{i + 1}-mosquitto": p for i, p in enumerate(bp)},
            **{f"generator-{i}": p for i, p in enumerate(gens.pids)},
        }
        say(f"baseline: closed loop, {s.warmup_s:g} s warm-up + {s.duration_s:g} s")
        names = [f"stand-in-{i + 1}" for i in range(rig.NODES)]
        base = closed_loop(gens, s.warmup_s, s.duration_s, bpids, names)
        gens.call({"cmd": "disconnect"})
    return base


# -- the report ------------------------------------------------------------------------------


def report(s: Settings, run: Run) -> dict[str, Any]:
    """The JSON-ready result of a run."""
    rate = run.throughput["rate"]
    p99 = round(percentile(run.latency.lat_ms, 99), 1)
    base_rate = None if run.baseline is None else run.baseline["rate"]
    before, after = run.before, run.after
    result: dict[str, Any] = {
        "bench": "ingest",
        "readings_per_s": round(rate, 1),
        "ack_latency_ms_p50": round(percentile(run.latency.lat_ms, 50), 1),
        "ack_latency_ms_p99": p99,
        "baseline_readings_per_s": None if base_rate is None else round(base_rate, 1),
        "ratio": None if not base_rate else round(rate / base_rate, 4),
        "bars": {
            "readings_per_s_at_least_20000": rate >= INGEST_BAR,
            "ack_latency_ms_p99_at_most_250": p99 <= P99_BAR_MS,
        },
        "nodes": rig.NODES,
        "devices": s.fleet.devices,
        "batch_readings": s.fleet.batch_readings,
        "window": s.fleet.window,
        "generators": s.fleet.generators,
        "duration_s": s.duration_s,
        "warmup_s": s.warmup_s,
        "rejects": rig.diff(after["rejected"], before["rejected"]),
        "failures": rig.diff(after["failed"], before["failed"]),
        "throughput": _throughput_report(run),
        "latency": _latency_report(run.latency, run.raft_events[1]),
        "acked_batches_by_hubs": after["acked"] - before["acked"],
        "raft_term_increase": after["term"] - before["term"],
        "raft_snapshots_taken": after["snapshots"] - before["snapshots"],
        **_flushes(before, after),
        "election": run.election,
        "frame_build_s": round(run.build_s, 2),
        "machine": machine(),
        "note": NOTE,
    }
    if run.baseline is not None:
        result["baseline"] = _baseline_report(run.baseline)
    return result


def _flushes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The Raft journal syncs of every node during phases 1 and 2."""
    n = after["journal_flushes"] - before["journal_flushes"]
    seconds = after["journal_flush_s"] - before["journal_flush_s"]
    return {
        "raft_journal_flushes": n,
        "raft_journal_flush_ms_mean": round(seconds / n * 1000, 3) if n else None,
    }


def journal_report(durable: dict[str, Any], undurable: Run) -> dict[str, Any]:
    """Phase 4: the undurable cluster's figures, and what the syncs cost
    (``durable``: the report of the run with them)."""
    rate = undurable.throughput["rate"]
    p50 = round(percentile(undurable.latency.lat_ms, 50), 1)
    p99 = round(percentile(undurable.latency.lat_ms, 99), 1)
    return {
        "undurable_journal": {
            "readings_per_s": round(rate, 1),
            "ack_latency_ms_p50": p50,
            "ack_latency_ms_p99": p99,
            "rejects": rig.diff(undurable.after["rejected"], undurable.before["rejected"]),
            "failures": rig.diff(undurable.after["failed"], undurable.before["failed"]),
            "throughput": _throughput_report(undurable),
            "latency": _latency_report(undurable.latency, undurable.raft_events[1]),
            **_flushes(undurable.before, undurable.after),
        },
        "durable_journal_cost": {
            "readings_per_s_ratio": round(durable["readings_per_s"] / rate, 4) if rate else None,
            "ack_latency_ms_p50_added": round(durable["ack_latency_ms_p50"] - p50, 1),
            "ack_latency_ms_p99_added": round(durable["ack_latency_ms_p99"] - p99, 1),
        },
    }


def _window_report(p: dict[str, Any]) -> dict[str, Any]:
    """The measured window of a closed-loop run: readings committed, over how long."""
    return {
        "readings": p["readings"],
        "seconds": round(p["seconds"], 3),
        "per_second_min": p["per_second_min"],
        "per_second_max": p["per_second_max"],
    }


def _throughput_report(run: Run) -> dict[str, Any]:
    p1, before, mid = run.throughput, run.before, run.mid
    entries = mid["commit_index"] - before["commit_index"]
    return {
        **_window_report(p1),
        "ack_latency_ms_p50_at_max": p1["latency_ms_p50"],
        "ack_latency_ms_p99_at_max": p1["latency_ms_p99"],
        "batches_published": p1["stats"]["published"],
        "unacked_batches_at_end": p1["unacked_at_end"],
        "devices_out_of_frames": p1["exhausted"],
        "disconnects": p1["stats"]["disconnects"],
        "rejects": rig.diff(mid["rejected"], before["rejected"]),
        "failures": rig.diff(mid["failed"], before["failed"]),
        "raft_entries": entries,
        "raft_events": run.raft_events[0],
        "batches_per_raft_entry": round((mid["acked"] - before["acked"]) / entries, 2)
        if entries
        else None,
        "cpu_cores": p1["cpu"],
    }


def _latency_report(p2: Latency, raft_events: list[str]) -> dict[str, Any]:
    rel_ms = p2.from_schedule_ms
    return {
        "offered_readings_per_s": round(p2.offered, 1),
        "committed_readings_per_s": round(p2.committed_rate, 1),
        "seconds": round(p2.w1 - p2.w0, 3),
        "samples": len(p2.lat_ms),
        "ack_latency_ms_p90": round(percentile(p2.lat_ms, 90), 1),
        "ack_latency_ms_max": round(max(p2.lat_ms), 1),
        "raft_events": raft_events,
        "ack_latency_ms_p99_by_5s": [
            round(percentile(part, 99), 1) if part else None
            for part in slices(p2.lat_by_time, p2.w0, p2.w1, 5.0)
        ],
        "from_schedule_ms_p50": round(percentile(rel_ms, 50), 1) if rel_ms else None,
        "from_schedule_ms_p99": round(percentile(rel_ms, 99), 1) if rel_ms else None,
        "unacked_batches_at_end": p2.unacked,
        "cpu_cores": p2.cpu,
    }


def _baseline_report(base: dict[str, Any]) -> dict[str, Any]:
    return {
        **_window_report(base),
        "ack_latency_ms_p50": base["latency_ms_p50"],
        "ack_latency_ms_p99": base["latency_ms_p99"],
        "unacked_batches_at_end": base["unacked_at_end"],
        "devices_out_of_frames": base["exhausted"],
        "cpu_cores": base["cpu"],
    }
