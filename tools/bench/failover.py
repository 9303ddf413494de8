"""`aiot bench failover`: how long a hub cluster takes to commit again after its leader dies.

The cluster is tools/bench/rig.py's (three hub nodes on loopback, each with
its own Mosquitto, the hub's default election timeouts). Paced load at
``rate`` readings/s from tools/bench/generator.py's processes; the generator
behaves as the edge does when a hub goes away: when its broker connection
drops it connects to the next hub in its list and sends again from its
watermark; when its watermark has not moved for ``ack_timeout_ms`` it sends
again from the watermark. After ``settle_s`` the leader is killed (SIGKILL;
its Mosquitto dies with it). Per kill:

- ``leader_kill_to_first_commit_s``: from the kill to the first CommitAck
  that covers a batch first published after the kill (a resent batch may
  have been committed before the kill: its ack died with the node);
- ``leader_kill_to_90pct_rate_s``: from the kill to the end of the first
  1-second window after the kill (windows start in 50 ms steps) in which the
  cluster committed at least 90% of what it committed per second over the
  ``pre_s`` seconds before the kill (so never under 1 s).

Then the node is restarted, the cluster waited for (every node ready, one
leader), and the next round starts after ``settle_s``. The headline figures
are the medians over the kills.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.bench import rig
from tools.bench.codec import BenchError
from tools.bench.figures import (
    committed,
    first_commit_after,
    median,
    merge_events,
    recovery_after,
)
from tools.bench.frames import BATCH_READINGS
from tools.bench.load import WINDOW, Fleet, Generators, total_stats
from tools.bench.watch import machine
from tools.lab.cluster import LocalCluster

FIRST_COMMIT_BAR_S: Final = 3.0
RESTART_S: Final = 90  # per kill, in the frame budget: the restart and the wait for the cluster
NOTE: Final = (
    "first commit: kill to the first CommitAck covering a batch first published after "
    "the kill; 90% rate: kill to the end of the first 1 s window after the kill (50 ms "
    "steps) that committed at least 90% of the rate over the pre-kill window; devices "
    "fail over to the next hub of their list and resend from their watermark on "
    "reconnect or after ack_timeout_ms without progress, as the edge does"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The parameters of one run (`aiot bench failover`'s options)."""

    kills: int
    rate: float
    ack_timeout_ms: int
    settle_s: float
    pre_s: float
    observe_s: float
    fleet: Fleet

    def __post_init__(self) -> None:
        f = self.fleet
        if self.kills < 1 or f.devices < 1 or self.rate <= 0 or f.window < 1 or f.generators < 1:
            raise BenchError("kills, devices, rate, window and generators must be positive")
        if self.pre_s <= 0 or self.pre_s > self.settle_s:
            raise BenchError("pre_s must be positive and at most settle_s")


@dataclass(frozen=True, slots=True)
class Kill:
    """One leader killed: what it took the cluster to recover."""

    victim: str
    first_commit_s: float | None  # None: not within observe_s
    recovery_s: float | None  # to 90% of pre_rate; None: not within observe_s
    pre_rate: float  # readings/s committed over pre_s before the kill
    restart_s: float  # restarting the victim until the cluster was ready


@dataclass(frozen=True, slots=True)
class Run:
    """What a run measured, before it is reported."""

    kills: list[Kill]
    stops: list[dict[str, Any]]  # the generators' answers to `stop`
    t_begin: float  # when the paced load started
    t_end: float  # when it stopped
    before: dict[str, Any]  # rig.hub_counters before the load
    after: dict[str, Any]  # and after it
    election: dict[str, Any]


def failover(
    kills: int = 5,
    rate: float = 10_000.0,
    devices: int = 48,
    batch_readings: int = BATCH_READINGS,
    window: int = WINDOW,
    ack_timeout_ms: int = 5000,
    settle_s: float = 10.0,
    pre_s: float = 5.0,
    observe_s: float = 30.0,
    generators: int = 1,
    say: rig.Say = rig.quiet,
) -> dict[str, Any]:
    """Kill the leader ``kills`` times under paced load; one JSON-ready dict."""
    rig.require_mosquitto()
    fleet = Fleet(devices, batch_readings, window, generators)
    s = Settings(kills, rate, ack_timeout_ms, settle_s, pre_s, observe_s, fleet)
    run = rig.on_cluster(
        "aiot-bench-failover-", devices, say, lambda c, work, creds: _run(c, work, creds, s, say)
    )
    return report(s, run)


def _run(
    cluster: LocalCluster, work: Path, creds: list[dict[str, Any]], s: Settings, say: rig.Say
) -> Run:
    """Start the paced load and kill the leader ``s.kills`` times."""
    timeout_s = s.ack_timeout_ms / 1000
    with s.fleet.start(work, creds, timeout_s) as gens:
        budget = s.settle_s + s.kills * (s.observe_s + RESTART_S + s.settle_s)
        per_dev = s.fleet.batches_for(s.rate, budget)
        say(f"pre-building {per_dev * s.fleet.devices} signed frames ({per_dev} per device)")
        gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
        gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
        before = rig.hub_counters(cluster)
        say(f"paced load at {s.rate:,.0f} readings/s over {s.fleet.devices} devices")
        gens.call({"cmd": "start", "rate": s.rate, "reset": True})
        t_begin = time.monotonic()
        time.sleep(s.settle_s)
        done = [_kill_leader(cluster, gens, k, s, say) for k in range(s.kills)]
        stops = gens.call({"cmd": "stop"}, timeout=60)
        t_end = time.monotonic()
        after = rig.hub_counters(cluster)
    return Run(done, stops, t_begin, t_end, before, after, rig.election_timing(cluster))


def _kill_leader(
    cluster: LocalCluster, gens: Generators, k: int, s: Settings, say: rig.Say
) -> Kill:
    """Kill the leader, watch the cluster recover, restart the node and let it settle."""
    victim = rig.leader_now(cluster)
    name = cluster.node_id(victim)
    say(f"kill {k + 1}/{s.kills}: SIGKILL to the leader {name}")
    t_kill = time.monotonic()
    cluster.kill(victim)
    fc, rc, pre = _observe(gens, t_kill, s.pre_s, s.observe_s)
    say(
        f"  first commit after {_fmt(fc)} s, 90% of {pre:,.0f} readings/s "
        f"after {_fmt(rc)} s; restarting {name}"
    )
    t_r = time.monotonic()
    cluster.start_node(victim)
    cluster.wait_ready(120)
    restart_s = round(time.monotonic() - t_r, 3)
    time.sleep(s.settle_s)
    return Kill(name, fc, rc, pre, restart_s)


def _observe(
    gens: Generators, t_kill: float, pre_s: float, observe_s: float
) -> tuple[float | None, float | None, float]:
    """Poll the generators until both failover figures are known (or observe_s)."""
    fc: float | None = None
    rc: float | None = None
    pre = 0.0
    while True:
        time.sleep(0.5)
        now = time.monotonic()
        ev = gens.events(t_kill - pre_s)
        pre = committed(ev, t_kill - pre_s, t_kill) / pre_s
        fc = first_commit_after(ev, t_kill)
        rc = recovery_after(ev, t_kill, pre, now) if pre > 0 else None
        if (fc is not None and rc is not None) or now - t_kill > observe_s:
            return fc, rc, pre


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _median_of_all(values: list[float | None]) -> float | None:
    """The median, or None if any kill did not give the figure."""
    got = [x for x in values if x is not None]
    return median(got) if len(got) == len(values) else None


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# -- the report ------------------------------------------------------------------------------


def report(s: Settings, run: Run) -> dict[str, Any]:
    """The JSON-ready result of a run."""
    first = [k.first_commit_s for k in run.kills]
    recover = [k.recovery_s for k in run.kills]
    med_first = _median_of_all(first)
    med_rec = _median_of_all(recover)
    events = merge_events([x["events"] for x in run.stops])
    before, after = run.before, run.after
    return {
        "bench": "failover",
        "leader_kill_to_first_commit_s": _rounded(med_first),
        "leader_kill_to_90pct_rate_s": _rounded(med_rec),
        "first_commit_samples_s": [_rounded(x) for x in first],
        "rate_90pct_samples_s": [_rounded(x) for x in recover],
        "bars": {
            "leader_kill_to_first_commit_s_at_most_3": med_first is not None
            and med_first <= FIRST_COMMIT_BAR_S,
        },
        "kills": s.kills,
        "killed": [k.victim for k in run.kills],
        "pre_kill_readings_per_s": [round(k.pre_rate, 1) for k in run.kills],
        "restart_to_ready_s": [k.restart_s for k in run.kills],
        "offered_readings_per_s": s.rate,
        "committed_readings_per_s_overall": round(
            committed(events, run.t_begin, run.t_end) / (run.t_end - run.t_begin), 1
        ),
        "nodes": rig.NODES,
        "devices": s.fleet.devices,
        "batch_readings": s.fleet.batch_readings,
        "window": s.fleet.window,
        "ack_timeout_ms": s.ack_timeout_ms,
        "settle_s": s.settle_s,
        "pre_kill_window_s": s.pre_s,
        "election": run.election,
        "generator": _generator_report(run.stops),
        "rejects": rig.diff(after["rejected"], before["rejected"]),
        "failures": rig.diff(after["failed"], before["failed"]),
        "raft_term_increase": after["term"] - before["term"],
        "machine": machine(),
        "note": NOTE,
    }


def _generator_report(stops: list[dict[str, Any]]) -> dict[str, Any]:
    stats = total_stats(stops)
    return {
        "batches_published": stats.get("published", 0),
        "rewinds_after_ack_timeout": stats.get("rewinds", 0),
        "disconnects": stats.get("disconnects", 0),
        "reconnects": stats.get("reconnects", 0),
        "unacked_batches_at_end": sum(st["unacked_batches"] for st in stops),
        "devices_out_of_frames": sum(st["exhausted"] for st in stops),
        "connected_to_at_end": {k: v for st in stops for k, v in st["connected_to"].items()},
    }
