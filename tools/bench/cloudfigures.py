"""`aiot bench cloud`'s figures: what tools/bench/cloud.py measured, as JSON.

Times: the generators and the bench log time.monotonic() (one clock for
every process of the machine); JetStream stamps each message with the
stream leader's wall clock. ``Measured.offset`` (time.time() -
time.monotonic(), read once) puts both on the wall clock.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any, Final

from tools.bench.cloudread import Arrivals, bytes_report
from tools.bench.figures import committed, merge_events, percentile
from tools.bench.watch import machine
from tools.cloud.cluster import CloudError, find_nats_server

SITE: Final = "bench"
EXPORT_RATIO_BAR: Final = 0.9  # export / ingest at half the maximum rate
CATCHUP_BAR: Final = 2.0  # catch-up rate / ingest rate during the outage

NOTE: Final = (
    "ingest_readings_per_s: readings committed (CommitAcks at the devices) per second, "
    "closed loop, the hubs exporting; export_readings_per_s: readings in the messages "
    "JetStream stored in the site's stream (stream message timestamps) during the "
    "window paced at half that rate, per second; ingest_readings_per_s_at_half: "
    "readings committed in the same window, per second; cloud_latency_ms: per batch "
    "first published in that window, from its first publish by the generator to the "
    "JetStream store time of the message carrying its last reading (one machine: the "
    "generator's monotonic clock put on the wall clock, as the stream leader stamps); "
    "catchup_readings_per_s: the readings of the entries committed up to the cloud's "
    "return (every server healthy, a meta leader) and stored after the servers "
    "stopped, divided by the seconds from the return to the store time of the last of "
    "them; outage_ingest_readings_per_s: readings committed from the stop to the "
    "return, per second; cloud_bytes_per_reading: the payload bytes of the readings "
    "messages stored in the paced window per reading; cloud_nats_bytes_per_reading: "
    "the bytes the exporter's connection published (the server's /connz in_bytes: "
    "payloads and headers) over the window per reading; cloud_tcp_bytes_per_reading: "
    "the bytes its TCP socket on the hub sent and got acknowledged (ss tcp_info "
    "bytes_acked: TLS and NATS protocol included) over the window per reading; "
    "baseline: the same closed loop on a cluster with no [cloud] table"
)


@dataclass(frozen=True, slots=True)
class Paced:
    """Phase 2: paced at ``offered`` readings/s, measured over [w0, w1)."""

    offered: float
    w0: float
    w1: float
    marks0: dict[str, dict[str, Any]]  # the devices' watermarks at w0
    marks1: dict[str, dict[str, Any]]  # and at w1
    bytes0: dict[str, Any] | None  # the exporter's link counters at w0 (cloudread.link_bytes)
    bytes1: dict[str, Any] | None  # and at w1
    cpu: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outage:
    t_down: float  # the first server is told to stop
    t_stopped: float  # every server has exited
    t_restart: float  # the servers are started again
    t_up: float  # every server healthy, a meta leader: the cloud's return
    commit_up: int  # the hubs' Raft commit index then
    seen_s: float  # when the leader's exporter said it was past commit_up


@dataclass(frozen=True, slots=True)
class Measured:
    throughput: dict[str, Any]  # load.closed_loop's figures for phase 1
    drain_s: float  # after phase 1, until nothing waited to be exported
    paced: Paced
    outage: Outage
    stops: list[dict[str, Any]]  # the generators' answers to stop, after phase 3
    final_drain_s: float
    export: dict[str, Any]  # the leader's cloud export status at the end
    marks: dict[str, dict[str, Any]]  # the devices' watermarks and first publish times
    arrivals: Arrivals
    offset: float  # wall clock - monotonic clock


def report(settings: dict[str, Any], run: Measured, base: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON-ready result of a run."""
    events = merge_events([x["events"] for x in run.stops])
    paced = _paced(run, events)
    catch = _catchup(run, events)
    samples = _latencies(run)
    lat = [ms for _, ms in samples]
    rate = run.throughput["rate"]
    base_rate = None if base is None else base["rate"]
    p50 = round(percentile(lat, 50), 1) if lat else None
    p99 = round(percentile(lat, 99), 1) if lat else None
    link = paced.pop("link")
    export_ok = paced["export_ratio"] is not None and paced["export_ratio"] >= EXPORT_RATIO_BAR
    catchup_ok = catch["catchup_ratio"] is not None and catch["catchup_ratio"] >= CATCHUP_BAR
    return {
        "bench": "cloud",
        "ingest_readings_per_s": round(rate, 1),
        "ingest_readings_per_s_at_half": paced["ingest_readings_per_s"],
        "export_readings_per_s": paced["export_readings_per_s"],
        "export_ratio": paced["export_ratio"],
        "export_ratio_ok": export_ok,
        "cloud_latency_ms_p50": p50,
        "cloud_latency_ms_p99": p99,
        "catchup_readings_per_s": catch["catchup_readings_per_s"],
        "outage_ingest_readings_per_s": catch["outage_ingest_readings_per_s"],
        "catchup_ok": catchup_ok,
        "cloud_bytes_per_reading": paced["payload_bytes_per_reading"],
        "cloud_nats_bytes_per_reading": link["nats_bytes_per_reading"],
        "cloud_tcp_bytes_per_reading": link["tcp_bytes_per_reading"],
        "baseline_ingest_readings_per_s": None if base_rate is None else round(base_rate, 1),
        "export_cost_ratio": round(rate / base_rate, 4) if base_rate else None,
        "bars": {
            "export_ratio_at_least_0.9": export_ok,
            "catchup_at_least_2x_outage_ingest": catchup_ok,
        },
        **settings,
        "throughput": _throughput(run),
        "export_phase": {
            **paced,
            "latency_samples": len(lat),
            "latency_stored_after_outage_start": sum(
                1 for t, _ in samples if t >= run.outage.t_down + run.offset
            ),
            "link": link,
        },
        "catchup": catch,
        "completeness": _completeness(run),
        "hub_export": {
            k: run.export.get(k) for k in ("messages", "bytes", "duplicates", "refusals")
        },
        "baseline": None if base is None else _closed(base),
        "machine": {**machine(), "nats_server": _nats_version()},
        "note": NOTE,
    }


def _closed(p: dict[str, Any]) -> dict[str, Any]:
    """A closed-loop run's figures (load.closed_loop)."""
    return {
        "readings": p["readings"],
        "seconds": round(p["seconds"], 3),
        "readings_per_s": round(p["rate"], 1),
        "ack_latency_ms_p50": p["latency_ms_p50"],
        "ack_latency_ms_p99": p["latency_ms_p99"],
        "devices_out_of_frames": p["exhausted"],
        "cpu_cores": p["cpu"],
    }


def _throughput(run: Measured) -> dict[str, Any]:
    return {**_closed(run.throughput), "export_drain_after_s": round(run.drain_s, 3)}


def _paced(run: Measured, events: dict[str, list[float]]) -> dict[str, Any]:
    """Phase 2: committed and exported in the same window, and the bytes."""
    p, a, off = run.paced, run.arrivals, run.offset
    seconds = p.w1 - p.w0
    acked = committed(events, p.w0, p.w1)
    stored, payload, msgs = a.readings_between(p.w0 + off, p.w1 + off)
    ingest = acked / seconds
    export = stored / seconds
    ranges = {d: (p.marks0[d]["acked"], p.marks1[d]["acked"]) for d in p.marks1}
    cover = a.coverage(ranges)
    return {
        "offered_readings_per_s": round(p.offered, 1),
        "seconds": round(seconds, 3),
        "readings_committed": acked,
        "readings_stored": stored,
        "messages_stored": msgs,
        "ingest_readings_per_s": round(ingest, 1),
        "export_readings_per_s": round(export, 1),
        "export_ratio": round(export / ingest, 4) if ingest else None,
        "payload_bytes": payload,
        "payload_bytes_per_reading": round(payload / stored, 3) if stored else None,
        "readings_acked": sum(hi - lo for lo, hi in ranges.values()),
        "readings_acked_in_cloud": cover["in_cloud"],
        "readings_acked_missing": cover["missing"],
        "readings_acked_duplicated": cover["duplicates"],
        "cpu_cores": p.cpu,
        "link": bytes_report(p.bytes0, p.bytes1, stored),
    }


def _catchup(run: Measured, events: dict[str, list[float]]) -> dict[str, Any]:
    """Phase 3: the backlog of the outage and how fast it drained."""
    o, a, off = run.outage, run.arrivals, run.offset
    up = o.t_up + off
    picked = [i for i, t in enumerate(a.ts) if t >= o.t_stopped + off and a.index[i] <= o.commit_up]
    backlog = sum(a.rows[i] for i in picked)
    first = min((a.ts[i] for i in picked), default=None)
    last = max((a.ts[i] for i in picked), default=None)
    outage_s = o.t_up - o.t_down
    ingest = committed(events, o.t_down, o.t_up) / outage_s
    span = None if last is None else last - up
    rate = backlog / span if span and span > 0 else None
    return {
        "outage_s": round(outage_s, 3),
        "servers_stop_s": round(o.t_stopped - o.t_down, 3),
        "servers_start_s": round(o.t_up - o.t_restart, 3),
        "outage_ingest_readings_per_s": round(ingest, 1),
        "commit_index_at_return": o.commit_up,
        "backlog_readings": backlog,
        "backlog_messages": len(picked),
        "stored_before_return": sum(1 for i in picked if a.ts[i] < up),
        "first_message_after_return_s": None if first is None else round(first - up, 3),
        "catchup_s": None if span is None else round(span, 3),
        "catchup_readings_per_s": None if rate is None else round(rate, 1),
        "catchup_ratio": round(rate / ingest, 3) if rate and ingest else None,
        # The same from the first message stored after the return: the
        # exporter's reconnection left out.
        "catchup_readings_per_s_after_first_message": round(backlog / (last - first), 1)
        if first is not None and last is not None and last > first
        else None,
        "exporter_past_return_index_s": round(o.seen_s, 3),
        "export_drain_after_load_s": round(run.final_drain_s, 3),
    }


def _latencies(run: Measured) -> list[tuple[float, float]]:
    """(stored, device to cloud in ms) of every batch first published in phase 2's window."""
    p, off = run.paced, run.offset
    out = []
    for stored, device, k in run.arrivals.ends:
        first = run.marks.get(device, {}).get("first") or []
        if k < len(first) and p.w0 <= first[k] < p.w1:
            out.append((stored, (stored - (first[k] + off)) * 1000))
    return out


def _completeness(run: Measured) -> dict[str, Any]:
    """Every reading the devices saw acknowledged, in the stream once."""
    ranges = {d: (0, m["acked"]) for d, m in run.marks.items()}
    cover = run.arrivals.coverage(ranges)
    totals = run.arrivals.totals()
    stops = run.stops
    return {
        "readings_acked": sum(hi for _, hi in ranges.values()),
        "readings_acked_in_cloud": cover["in_cloud"],
        "readings_acked_missing": cover["missing"],
        "readings_in_cloud": totals["distinct"],
        "readings_duplicated_in_cloud": totals["duplicates"],
        "messages_in_cloud": totals["messages"],
        "bad_messages": run.arrivals.bad[:10],
        "devices_out_of_frames": sum(x["exhausted"] for x in stops),
        "unacked_batches_at_stop": sum(x["unacked_batches"] for x in stops),
        "disconnects": sum(x["stats"]["disconnects"] for x in stops),
    }


def _nats_version() -> str:
    try:
        out = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10
        )
    except (CloudError, OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr).strip()
