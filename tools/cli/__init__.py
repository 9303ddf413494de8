"""The `aiot` command line. Every command listed by `aiot --help` works."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol import messages as m
from protocol import wire
from protocol.errors import CodecError
from tools.cli import chaos as cli_chaos
from tools.cli import firmware as cli_firmware
from tools.cli import hub as cli_hub
from tools.cli import ops as cli_ops

app = typer.Typer(
    name="aiot",
    help="Edge-hub runtime for AIoT devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks: print JSON, measured against a baseline in the same run.",
    no_args_is_help=True,
)
protocol_app = typer.Typer(help="Wire protocol tools.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(protocol_app, name="protocol")
cli_hub.register(app)
cli_ops.register(app)
cli_firmware.register(app)
cli_chaos.register(app)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"aiot: {message}", err=True)
    return typer.Exit(code)


def _emit(result: dict[str, Any], json_out: bool) -> None:
    """A benchmark's result: one JSON line, or one aligned line per key."""
    if json_out:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>32}  {json.dumps(value) if isinstance(value, dict) else value}")


@bench_app.command("codec")
def bench_codec(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="Measuring time for each side, in seconds.")
    ] = 2.0,
) -> None:
    """Edge codec on MicroPython against the official FlatBuffers runtime on CPython."""
    from tools.bench.codec import BenchError, codec

    if not json_out:
        typer.echo(f"measuring for {seconds:g} s on each side...", err=True)
    try:
        result = codec(seconds)
    except BenchError as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


@bench_app.command("edge")
def bench_edge(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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
    from tools.bench.codec import BenchError
    from tools.bench.edge import edge
    from tools.lab.mosquitto import BrokerError

    def say(line: str) -> None:
        if not json_out:
            typer.echo(line, err=True)

    try:
        result = edge(
            readings=readings,
            rounds=rounds,
            heap=heap,
            flash_hours=flash_hours,
            failover_readings=failover_readings,
            say=say,
        )
    except (BenchError, BrokerError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


def _progress(line: str) -> None:
    typer.echo(line, err=True)


@bench_app.command("ingest")
def bench_ingest(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    seconds: Annotated[
        float, typer.Option(min=1, help="Measured seconds of the maximum-rate phase.")
    ] = 60.0,
    latency_seconds: Annotated[
        float, typer.Option(min=1, help="Measured seconds of the latency phase (half rate).")
    ] = 30.0,
    warmup: Annotated[
        float, typer.Option(min=0, help="Seconds of load before the maximum-rate clock starts.")
    ] = 5.0,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 48,
    window: Annotated[
        int, typer.Option(min=1, help="Unacknowledged batches per device (the edge's window).")
    ] = 4,
    batch_readings: Annotated[int, typer.Option(min=1, help="Readings per batch.")] = 32,
    generators: Annotated[
        int, typer.Option(min=1, help="Load generator processes sharing the devices.")
    ] = 1,
    baseline: Annotated[bool, typer.Option(help="Also measure the bare-broker baseline.")] = True,
) -> None:
    """Hub cluster: committed readings/s, ack latency, against a bare-broker baseline."""
    from tools.bench.codec import BenchError
    from tools.bench.hub import ingest
    from tools.lab.cluster import ClusterError
    from tools.lab.mosquitto import BrokerError

    try:
        result = ingest(
            duration_s=seconds,
            latency_s=latency_seconds,
            warmup_s=warmup,
            devices=devices,
            window=window,
            batch_readings=batch_readings,
            generators=generators,
            baseline=baseline,
            say=_progress,
        )
    except (BenchError, BrokerError, ClusterError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


@bench_app.command("decide")
def bench_decide(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    loops: Annotated[int, typer.Option(min=10, help="Control loops on the cluster.")] = 300,
    background: Annotated[int, typer.Option(min=0, help="Background devices.")] = 5,
    llm_cases: Annotated[int, typer.Option(min=1, help="Evaluation cases for the LLM.")] = 60,
) -> None:
    """Decision tiers: rules rate, ONNX latency, hot swap, control loop, LLM figures."""
    from tools.bench.codec import BenchError
    from tools.bench.decide import decide

    def say(line: str) -> None:
        if not json_out:
            typer.echo(line, err=True)

    try:
        result = decide(loops, background, llm_cases, say)
    except BenchError as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


@bench_app.command("failover")
def bench_failover(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    kills: Annotated[int, typer.Option(min=1, help="Leader kills (the median is reported).")] = 5,
    rate: Annotated[
        float, typer.Option(min=100, help="Offered load, readings/s over all devices.")
    ] = 10_000.0,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 48,
    window: Annotated[
        int, typer.Option(min=1, help="Unacknowledged batches per device (the edge's window).")
    ] = 4,
    ack_timeout_ms: Annotated[
        int, typer.Option(min=100, help="Devices resend from their watermark after this.")
    ] = 5000,
    settle: Annotated[
        float, typer.Option(min=1, help="Seconds of steady load before each kill.")
    ] = 10.0,
    pre: Annotated[
        float, typer.Option(min=0.5, help="Seconds before a kill that set the rate to regain.")
    ] = 5.0,
    observe: Annotated[
        float, typer.Option(min=1, help="At most this long after a kill before the restart.")
    ] = 30.0,
    generators: Annotated[
        int, typer.Option(min=1, help="Load generator processes sharing the devices.")
    ] = 1,
) -> None:
    """Hub cluster: kill -9 the leader under load; time to the first commit and to 90% rate."""
    from tools.bench.codec import BenchError
    from tools.bench.hub import failover
    from tools.lab.cluster import ClusterError
    from tools.lab.mosquitto import BrokerError

    try:
        result = failover(
            kills=kills,
            rate=rate,
            devices=devices,
            window=window,
            ack_timeout_ms=ack_timeout_ms,
            settle_s=settle,
            pre_s=pre,
            observe_s=observe,
            generators=generators,
            say=_progress,
        )
    except (BenchError, BrokerError, ClusterError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


@bench_app.command("soak")
def bench_soak(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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
    from tools.bench.codec import BenchError
    from tools.bench.soak import soak
    from tools.lab.cluster import ClusterError
    from tools.lab.mosquitto import BrokerError

    try:
        result = soak(
            minutes=minutes,
            rate=rate,
            devices=devices,
            micropython_devices=micropython_devices,
            sample_s=sample_s,
            warmup_s=warmup_s,
            say=_progress,
        )
    except (BenchError, BrokerError, ClusterError) as exc:
        raise _fail(str(exc)) from None
    _emit(result, json_out)


@bench_app.command("all")
def bench_all(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option(help="Tiny sizes for every benchmark (tests).")] = False,
    write: Annotated[bool, typer.Option(help="Rewrite the report with this run.")] = True,
    out: Annotated[Path, typer.Option(help="The report to rewrite.")] = Path("docs/BENCHMARKS.md"),
    soak_minutes: Annotated[float, typer.Option(min=0.1, help="Minutes of the soak.")] = 3.0,
    only: Annotated[
        str | None, typer.Option(help="Comma-separated subset, e.g. codec,soak.")
    ] = None,
) -> None:
    """Every benchmark in one go: one JSON object, one report with a history."""
    from tools.bench.codec import BenchError
    from tools.bench.suite import BENCHES, attach_previous, run_all, write_report

    chosen = BENCHES if only is None else tuple(b.strip() for b in only.split(",") if b.strip())
    try:
        summary = run_all(quick, soak_minutes, chosen, _progress)
    except BenchError as exc:
        raise _fail(str(exc)) from None
    attach_previous(summary, out)
    if write and not summary["errors"]:
        write_report(summary, out)
        summary["report"] = str(out)
    else:
        summary["report"] = None
    _emit(summary, json_out)
    if summary["errors"]:
        raise typer.Exit(1)


@protocol_app.command("decode")
def protocol_decode(
    path: Annotated[Path, typer.Argument(help="File with a frame or envelope; - for stdin.")],
    key: Annotated[
        str | None,
        typer.Option(help="Device key (hex): the input is a frame with an HMAC trailer."),
    ] = None,
    hex_input: Annotated[bool, typer.Option("--hex", help="The input is hex text.")] = False,
) -> None:
    """Verify and decode one message; print it as JSON."""
    raw = sys.stdin.buffer.read() if str(path) == "-" else _read(path)
    if hex_input:
        try:
            raw = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise _fail("--hex input is not hex text") from None
    try:
        if key is not None:
            try:
                key_bytes = bytes.fromhex(key)
            except ValueError:
                raise _fail("--key must be hex") from None
            msg = wire.decode_frame(raw, key_bytes)
        else:
            msg = wire.decode(raw)
    except CodecError as exc:
        raise _fail(f"not a valid aiot v1 message: {exc}", 1) from None
    typer.echo(json.dumps(m.to_dict(msg), indent=2))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror}") from None


@protocol_app.command("walkthrough")
def protocol_walkthrough(
    device_seconds: Annotated[
        float, typer.Option(min=0, help="Seconds of part 2, the device firmware (0: skip it).")
    ] = 12.0,
) -> None:
    """A signed batch from MicroPython through Mosquitto and back; then the device firmware."""
    from tools.bench.codec import BenchError
    from tools.demo.walkthrough import run
    from tools.lab.mosquitto import BrokerError

    try:
        summary = run(lambda line: typer.echo(line), device_seconds)
    except (BenchError, BrokerError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(summary))
    if not summary["ok"]:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
