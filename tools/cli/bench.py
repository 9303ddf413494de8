"""`aiot bench`: the benchmarks (tools/bench/), each measured against a baseline
in the same run. A result is one JSON object with --json, else one aligned
line per key; progress goes to stderr. A benchmark that cannot run (no
Mosquitto, no MicroPython, a cluster that does not start) exits with 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from tools.bench.cloud import cloud
from tools.bench.codec import codec
from tools.bench.decide import decide
from tools.bench.edge import edge
from tools.bench.failover import failover
from tools.bench.flood import flood
from tools.bench.ingest import ingest
from tools.bench.soak import soak
from tools.bench.suite import BENCHES, attach_previous, run_all, write_report
from tools.cli.output import emit, group, progress, reported, say

bench_app = group("bench", "Benchmarks: print JSON, measured against a baseline in the same run.")

JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Devices = Annotated[int, typer.Option(min=1, help="Simulated devices.")]
Window = Annotated[
    int, typer.Option(min=1, help="Unacknowledged batches per device (the edge's window).")
]
Generators = Annotated[
    int, typer.Option(min=1, help="Load generator processes sharing the devices.")
]


@bench_app.command("codec")
def bench_codec(
    json_out: JsonOut = False,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="Measuring time for each side, in seconds.")
    ] = 2.0,
) -> None:
    """Edge codec on MicroPython against the official FlatBuffers runtime on CPython."""
    if not json_out:
        say(f"measuring for {seconds:g} s on each side...")
    with reported():
        result = codec(seconds)
    emit(result, json_out)


def measure(ctx: typer.Context, bench: Callable[..., dict[str, Any]], quiet: bool) -> None:
    """Run ``bench`` with the command's options as its keyword arguments (each
    option's parameter is named as the benchmark's), then print the result;
    progress goes to stderr unless ``quiet``."""
    options = dict(ctx.params)
    json_out = options.pop("json_out")
    with reported():
        result = bench(**options, say=progress(quiet))
    emit(result, json_out)


@bench_app.command("edge")
def bench_edge(
    ctx: typer.Context,
    json_out: JsonOut = False,
    readings: Annotated[
        int, typer.Option(min=100, help="Readings per throughput run (firmware and baseline).")
    ] = 100_000,
    rounds: Annotated[
        int, typer.Option(min=1, help="Rounds alternating the baseline and the firmware.")
    ] = 3,
    heap: Annotated[
        str, typer.Option(help="MicroPython -X heapsize for every device run, e.g. 96k.")
    ] = "160k",
    flash_hours: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Simulated offline hours for the flash figures (default: until both slots "
            "are full).",
        ),
    ] = None,
    failover_readings: Annotated[
        int, typer.Option(min=400, help="Readings the device sends in the failover run.")
    ] = 1_500,
) -> None:
    """Edge device on MicroPython: throughput, flash cost, heap and failover."""
    measure(ctx, edge, quiet=json_out)


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    json_out: JsonOut = False,
    duration_s: Annotated[
        float, typer.Option("--seconds", min=1, help="Measured seconds of the maximum-rate phase.")
    ] = 60.0,
    latency_s: Annotated[
        float,
        typer.Option(
            "--latency-seconds", min=1, help="Measured seconds of the latency phase (half rate)."
        ),
    ] = 30.0,
    warmup_s: Annotated[
        float,
        typer.Option(
            "--warmup", min=0, help="Seconds of load before the maximum-rate clock starts."
        ),
    ] = 5.0,
    devices: Devices = 48,
    window: Window = 4,
    batch_readings: Annotated[int, typer.Option(min=1, help="Readings per batch.")] = 32,
    generators: Generators = 1,
    baseline: Annotated[bool, typer.Option(help="Also measure the bare-broker baseline.")] = True,
    journal_baseline: Annotated[
        bool,
        typer.Option(
            help="Also run a cluster with raft.durable_journal = false and report the "
            "syncs' cost (undurable_journal, durable_journal_cost)."
        ),
    ] = False,
) -> None:
    """Hub cluster: committed readings/s, ack latency, against a bare-broker baseline."""
    measure(ctx, ingest, quiet=False)


@bench_app.command("decide")
def bench_decide(
    json_out: JsonOut = False,
    loops: Annotated[int, typer.Option(min=10, help="Control loops on the cluster.")] = 300,
    background: Annotated[int, typer.Option(min=0, help="Background devices.")] = 5,
    llm_cases: Annotated[
        int, typer.Option(min=1, help="Held-out scenarios for the LLM (models/eval/heldout.jsonl).")
    ] = 300,
) -> None:
    """Decision tiers: rules rate, ONNX latency, hot swap, control loop, LLM figures.
    Progress goes to stderr, with --json too: the LLM part alone takes minutes."""
    with reported():
        result = decide(loops, background, llm_cases, say)
    emit(result, json_out)


@bench_app.command("failover")
def bench_failover(
    ctx: typer.Context,
    json_out: JsonOut = False,
    kills: Annotated[int, typer.Option(min=1, help="Leader kills (the median is reported).")] = 5,
    rate: Annotated[
        float, typer.Option(min=100, help="Offered load, readings/s over all devices.")
    ] = 10_000.0,
    devices: Devices = 48,
    window: Window = 4,
    ack_timeout_ms: Annotated[
        int, typer.Option(min=100, help="Devices resend from their watermark after this.")
    ] = 5000,
    settle_s: Annotated[
        float, typer.Option("--settle", min=1, help="Seconds of steady load before each kill.")
    ] = 10.0,
    pre_s: Annotated[
        float,
        typer.Option("--pre", min=0.5, help="Seconds before a kill that set the rate to regain."),
    ] = 5.0,
    observe_s: Annotated[
        float,
        typer.Option("--observe", min=1, help="At most this long after a kill before the restart."),
    ] = 30.0,
    generators: Generators = 1,
) -> None:
    """Hub cluster: kill -9 the leader under load; time to the first commit and to 90% rate."""
    measure(ctx, failover, quiet=False)


@bench_app.command("flood")
def bench_flood(
    ctx: typer.Context,
    json_out: JsonOut = False,
    devices: Annotated[
        int, typer.Option(min=1, help="Well-behaved devices timing their commit-acks.")
    ] = 8,
    frames: Annotated[
        int, typer.Option(min=1, help="Frames the flooding device publishes.")
    ] = 10_000,
    rounds: Annotated[
        int, typer.Option(min=1, help="Batches per device for the baseline, before the flood.")
    ] = 100,
) -> None:
    """Hub cluster: one device floods its topics; the others' commit-ack p99 against before."""
    measure(ctx, flood, quiet=False)


@bench_app.command("soak")
def bench_soak(
    ctx: typer.Context,
    json_out: JsonOut = False,
    minutes: Annotated[float, typer.Option(min=0.1, help="Minutes of paced load.")] = 30.0,
    rate: Annotated[
        float | None,
        typer.Option(min=1, help="Readings/s offered (default: half the measured maximum)."),
    ] = None,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices (CPython).")] = 48,
    micropython_devices: Annotated[
        int, typer.Option(min=0, help="Plugs running the firmware on MicroPython.")
    ] = 3,
    sample_s: Annotated[
        float, typer.Option(min=1, help="Seconds between memory and descriptor samples.")
    ] = 10.0,
    warmup_s: Annotated[
        float | None,
        typer.Option(min=0, help="Growth is measured from here (default: a fifth, at most 120)."),
    ] = None,
) -> None:
    """Hub cluster at half the maximum rate for a long while: RSS, descriptors, convergence."""
    measure(ctx, soak, quiet=False)


@bench_app.command("cloud")
def bench_cloud(
    ctx: typer.Context,
    json_out: JsonOut = False,
    duration_s: Annotated[
        float,
        typer.Option(
            "--seconds", min=1, help="Measured seconds of the maximum-rate and half-rate phases."
        ),
    ] = 30.0,
    outage_s: Annotated[
        float, typer.Option("--outage-s", min=1, help="Seconds the cloud's servers are stopped.")
    ] = 120.0,
    devices: Devices = 48,
    cloud_nodes: Annotated[
        int, typer.Option(min=1, help="nats-server processes in the JetStream cluster.")
    ] = 3,
    warmup_s: Annotated[
        float,
        typer.Option(
            "--warmup", min=0, help="Seconds of load before the maximum-rate clock starts."
        ),
    ] = 5.0,
    generators: Generators = 1,
    baseline: Annotated[
        bool, typer.Option(help="Also measure the ingest rate with no [cloud] table.")
    ] = True,
) -> None:
    """Cloud export: rate at half the ingest, device-to-cloud latency, catch-up, bytes."""
    measure(ctx, cloud, quiet=False)


@bench_app.command("all")
def bench_all(
    json_out: JsonOut = False,
    quick: Annotated[bool, typer.Option(help="Tiny sizes for every benchmark (tests).")] = False,
    write: Annotated[bool, typer.Option(help="Rewrite the report with this run.")] = True,
    out: Annotated[Path, typer.Option(help="The report to rewrite.")] = Path("docs/BENCHMARKS.md"),
    soak_minutes: Annotated[float, typer.Option(min=0.1, help="Minutes of the soak.")] = 3.0,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated subset, e.g. codec,soak.")
    ] = None,
) -> None:
    """Every benchmark in one go: one JSON object, one report with a history."""
    chosen = BENCHES if only is None else tuple(b.strip() for b in only.split(",") if b.strip())
    with reported():
        summary = run_all(quick, soak_minutes, chosen, say)
    attach_previous(summary, out)
    if write and not summary["errors"]:
        write_report(summary, out)
        summary["report"] = str(out)
    else:
        summary["report"] = None
    emit(summary, json_out)
    if summary["errors"]:
        raise typer.Exit(1)
