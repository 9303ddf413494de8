"""`aiot bench decide`: the decision tiers, measured.

- ``rules_decisions_per_s``: readings evaluated per second by the rules tier
  (hub/rules.py) with the shipped energy rules bound to 50 plugs; baseline: a
  bare Python loop comparing each reading with a threshold.
- ``onnx_latency_ms_p50/p99``: one window scored by the shipped anomaly
  model (onnxruntime, 1 thread), features computed as the engine does.
- ``hot_swap_ms``: loading a model version as an activation does (sha256,
  onnxruntime session, smoke inference), median of 10.
- ``control_loop_ms_p50/p99``: a 3-node cluster with a rule that switches a
  plug off as soon as it is over its limit; a CPython device (the device's own
  credentials, signed batches) publishes an over-limit reading and times until
  the signed relay-off command arrives on its ``down`` topic, then answers it
  and publishes a normal reading to end the condition. Meanwhile other
  devices keep a moderate background load. It measures the hub's whole path
  (ingest, Raft, apply, rules, guard, Raft again, delivery); the MicroPython
  handler that then flips the relay adds its own time on a board.
- LLM figures (``llm_*``) come from hub/llm.py when the LLM tier is
  installed; ``llm_accuracy`` and ``llm_invalid_rate`` from the evaluation
  set (``aiot eval decisions``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bench import BenchError

Say = Callable[[str], None]
ROOT = Path(__file__).resolve().parent.parent


def _pct(values: list[float], q: float) -> float:
    if not values:
        raise BenchError("no samples")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def rules_rate(readings: int = 200_000) -> dict[str, Any]:
    from hub import entries as e
    from hub import rules as r
    from hub.api import PLUG_CAPABILITIES

    ruleset = r.load_rules_file(ROOT / "models" / "rules" / "energy.toml")
    engine = r.Engine(ruleset)
    devices = [f"plug-{i}" for i in range(50)]
    for d in devices:
        engine.bind(e.Device(d, b"k" * 32, PLUG_CAPABILITIES, 2000.0))
    t = 1_763_700_000_000
    stream = []
    for i in range(readings):
        t += 20
        power = 2500.0 if (i // 2000) % 3 == 0 else 300.0  # over the limit a third of the time
        stream.append((devices[i % 50], 0, t, power + (i % 17)))
    t0 = time.perf_counter()
    fired = 0
    for dev, sensor, ts, v in stream:
        fired += len(engine.reading(dev, sensor, ts, v))
    rules_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_fired = 0
    for _dev, _sensor, _ts, v in stream:
        base_fired += v > 2000.0
    base_s = time.perf_counter() - t0
    return {
        "rules_decisions_per_s": round(readings / rules_s),
        "rules_fired": fired,
        "baseline_threshold_checks_per_s": round(readings / base_s),
        "rules_ratio": round((readings / rules_s) / (readings / base_s), 4),
    }


def onnx_figures(calls: int = 2000) -> dict[str, Any]:
    from hub import anomaly
    from hub.models import SHIPPED

    model = anomaly.AnomalyModel.load(SHIPPED)
    t = 1_763_700_000_000
    window = [(t + i * 1000, anomaly.POWER_W, 100.0 + (i % 9)) for i in range(60)]
    window += [(t + i * 1000, anomaly.ENERGY_WH, i * 0.03) for i in range(60)]
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.score(anomaly.window_features(window, 2000.0))
        lat.append((time.perf_counter() - t0) * 1000)
    data = (SHIPPED.parent / "anomaly.onnx").read_bytes()
    manifest = anomaly.Manifest.read(SHIPPED)
    swaps = []
    for _ in range(10):
        t0 = time.perf_counter()
        anomaly.AnomalyModel.from_bytes(data, manifest)
        swaps.append((time.perf_counter() - t0) * 1000)
    return {
        "onnx_latency_ms_p50": round(_pct(lat, 50), 4),
        "onnx_latency_ms_p99": round(_pct(lat, 99), 4),
        "hot_swap_ms": round(statistics.median(swaps), 2),
    }


RULES = """
[rules]
timezone = "UTC"

[[rules.rule]]
id = "over-limit-now"
description = "A plug over its limit is switched off at once."
devices = ["plug-*"]
sensor = "power_w"
above = "limit"
action = "relay.set"
params = { on = false }

[guard]
device_rate = "6000/min"
device_burst = 100
total_rate = "60000/min"
total_burst = 1000
"""


async def _control_loop(cluster: Any, loops: int, background: int, say: Say) -> list[float]:
    import aiomqtt

    from protocol import messages as m
    from protocol import topics, wire

    admin = cluster.any_client()
    probe = admin.post("/v1/devices", {"device_id": "plug-probe", "limit_w": 1000.0})
    others = [
        admin.post("/v1/devices", {"device_id": f"plug-bg-{k}", "limit_w": 1e6})
        for k in range(background)
    ]
    await asyncio.sleep(1.0)  # the brokers reload their credentials

    def frame(dev: dict[str, Any], seq: int, watts: float) -> bytes:
        now = int(time.time() * 1000)
        batch = m.TelemetryBatch(dev["device_id"], 1, seq, now, (m.Reading(0, 0, watts),), 0)
        return wire.seal(wire.encode(batch), bytes.fromhex(dev["key"]))

    async def background_load(dev: dict[str, Any], stop: asyncio.Event) -> None:
        host, port = dev["hubs"][0]
        async with aiomqtt.Client(
            host, port, username=dev["user"], password=dev["password"], identifier=dev["user"]
        ) as c:
            seq = 1
            while not stop.is_set():
                await c.publish(topics.topic(dev["device_id"], "up"), frame(dev, seq, 200.0), qos=1)
                seq += 1
                await asyncio.sleep(0.05)  # 20 batches/s per device

    stop = asyncio.Event()
    tasks = [asyncio.create_task(background_load(d, stop)) for d in others]
    lat: list[float] = []
    key = bytes.fromhex(probe["key"])
    host, port = probe["hubs"][0]
    try:
        async with aiomqtt.Client(
            host, port, username=probe["user"], password=probe["password"], identifier="probe"
        ) as c:
            await c.subscribe(topics.topic("plug-probe", "down"), qos=1)
            seq = 1
            up = topics.topic("plug-probe", "up")
            for i in range(loops):
                t0 = time.perf_counter()
                await c.publish(up, frame(probe, seq, 1500.0), qos=1)
                seq += 1
                async with asyncio.timeout(10):
                    async for msg in c.messages:
                        got = wire.decode_frame(bytes(msg.payload), key)
                        if isinstance(got, m.Command):
                            lat.append((time.perf_counter() - t0) * 1000)
                            res = m.CommandResult(
                                got.command_id, "plug-probe", got.seq, m.CommandStatus.DONE
                            )
                            ack = wire.seal(wire.encode(res), key)
                            await c.publish(topics.topic("plug-probe", "ack"), ack, qos=1)
                            break
                await c.publish(up, frame(probe, seq, 100.0), qos=1)  # the condition clears
                seq += 1
                await asyncio.sleep(0.05)
                if (i + 1) % 50 == 0:
                    say(f"  control loop: {i + 1}/{loops}")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return lat


def control_loop(loops: int, background: int, say: Say) -> dict[str, Any]:
    import tempfile

    from tools.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="aiot-bench-decide-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", 3, extra=RULES)
        try:
            cluster.start(90)
            say(f"cluster up; {loops} control loops with {background} background devices")
            lat = asyncio.run(_control_loop(cluster, loops, background, say))
        finally:
            cluster.stop()
    return {
        "control_loop_ms_p50": round(_pct(lat, 50), 2),
        "control_loop_ms_p99": round(_pct(lat, 99), 2),
        "control_loops": len(lat),
        "background_devices": background,
    }


def llm_figures(cases: int, say: Say) -> dict[str, Any]:
    """The LLM tier on the evaluation set (the first ``cases`` scenarios), 1 thread."""
    from hub import llm

    if not llm.llama_cpp_available():
        return {"llm_missing": f"llama-cpp-python is not installed: {llm.INSTALL_HINT}"}
    try:
        path = llm.resolve_model(llm.DEFAULT_MODEL)
    except llm.ModelError as exc:
        return {"llm_missing": str(exc)}
    from tools import eval_decisions as ev

    scenarios = ev.load_scenarios(ev.DEFAULT_SCENARIOS)[:cases]
    say(f"  {len(scenarios)} scenarios through {path.name}, 1 thread...")
    t0 = time.perf_counter()
    report = ev.evaluate(path, scenarios, threads=1, progress=None)
    elapsed = time.perf_counter() - t0
    tokens = report["completion_tokens_mean"] * report["n"]
    prompt_tokens = report["prompt_tokens_mean"] * report["n"]
    return {
        "llm_decision_latency_ms_p50": report["latency_ms_p50"],
        "llm_decision_latency_ms_p95": report["latency_ms_p95"],
        # Generated tokens per second of wall time spent in decisions (prompt
        # evaluation included in the time, not in the count).
        "llm_tokens_per_s": round(tokens / elapsed, 2) if elapsed else 0.0,
        "llm_prompt_tokens_mean": round(prompt_tokens / report["n"], 1) if report["n"] else 0,
        "llm_accuracy": report["accuracy"],
        "llm_invalid_rate": report["invalid_rate"],
        "llm_cases": report["n"],
        "llm_model": report["model"],
    }


def decide(
    loops: int = 300, background: int = 5, llm_cases: int = 60, say: Say = print
) -> dict[str, Any]:
    from tools.bench_hub import machine

    say("rules tier...")
    result: dict[str, Any] = {**rules_rate()}
    say("ONNX tier...")
    result.update(onnx_figures())
    say("control loop on a 3-node cluster...")
    result.update(control_loop(loops, background, say))
    say("LLM tier...")
    result.update(llm_figures(llm_cases, say))
    result["bars"] = {"control_loop_ms_p99<=150": result["control_loop_ms_p99"] <= 150}
    result["machine"] = machine()
    return result


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(decide()))
