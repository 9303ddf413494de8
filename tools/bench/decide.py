"""`aiot bench decide`: the decision tiers, measured.

- ``rules_decisions_per_s``: readings evaluated per second by the rules tier
  (hub/decide/rules.py) with the shipped energy rules bound to 50 plugs; baseline: a
  bare Python loop comparing each reading with a threshold.
- ``onnx_latency_ms_p50/p99``: one window scored by the shipped anomaly
  model (onnxruntime, 1 thread), features computed as the engine does.
- ``hot_swap_ms``: loading a model version as an activation does (sha256,
  onnxruntime session, smoke inference), median of 10.
- ``swap_decisions_per_s``: decisions per second while the anomaly model is
  hot-swapped ``swap_count`` (10) times through the replicated model registry
  (hub/decide/registry.py on a one-node Raft over LMDB: signed versions, activations
  proposed through Raft, each loaded off the event loop and swapped in). A
  decision is one window of a plug's readings judged by the engine's own code
  (hub/decide/engine.py: the rules tier on each of its 60 power and 60 energy
  readings, the window scored by the ONNX tier at the engine's swap point, the
  anomaly rules on the score), offered as fast as the event loop takes them,
  round robin over 20 plugs. One activation every 0.5 s; counted from the
  start of the first swap to the end of the last (about 5 s):
  ``swap_failed`` (exceptions or windows the ONNX tier could not score) and
  ``swap_dropped`` (windows the readings completed but no decision judged).
  Baseline: the same loop for 1 s without swaps
  (``swap_baseline_decisions_per_s``). The guard and the Raft proposal of a
  decision that fires are the control loop's path, measured below.
- ``control_loop_ms_p50/p99``: a 3-node cluster with a rule that switches a
  plug off as soon as it is over its limit; a CPython device (the device's own
  credentials, signed batches) publishes an over-limit reading and times until
  the signed relay-off command arrives on its ``down`` topic, then answers it
  and publishes a normal reading to end the condition. Meanwhile other
  devices keep a moderate background load. It measures the hub's whole path
  (ingest, Raft, apply, rules, guard, Raft again, delivery); the MicroPython
  handler that then flips the relay adds its own time on a board.
- LLM figures (``llm_*``) come from hub/decide/llm.py when the LLM tier is
  installed, on 1 thread, over the held-out split (``models/eval/heldout.jsonl``):
  ``llm_accuracy``, ``llm_invalid_rate`` and the latencies are those of what
  the hub runs by default (the shipped adapter on its base, else the base),
  ``base_llm_accuracy`` the base model's on the same scenarios; the
  ``*_hand_written`` figures are both on ``models/eval/decisions.jsonl``.
  Before each scenario the prompt's static part (the device's actions and
  the policy) is evaluated, untimed, as a hub that consults about the same
  kind of device again has it in llama.cpp's cache; the latencies are then
  the facts' evaluation and the generation, and ``llm_prime_ms_p50``/``_p95``
  what the priming took (about a first consultation's extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import aiomqtt

from hub.core import keys
from hub.core.config import DecisionsConfig
from hub.decide import anomaly, llm
from hub.decide import registry as reg
from hub.decide import rules as r
from hub.decide.anomaly import ENERGY_WH, POWER_W, WINDOW_READINGS
from hub.decide.engine import DecisionEngine
from hub.decide.guard import Guard
from hub.state import entries as e
from hub.state.raft import RaftNode
from protocol import messages as m
from protocol import topics, wire
from protocol.profiles import PLUG_CAPABILITIES
from tools.base.paths import ROOT
from tools.base.ports import free_port
from tools.bench.codec import BenchError
from tools.bench.watch import machine
from tools.lab.cluster import LocalCluster
from tools.ml import eval_decisions as ev
from tools.ml import install_llm

Say = Callable[[str], None]


def _pct(values: list[float], q: float) -> float:
    if not values:
        raise BenchError("no samples")
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))]


def rules_rate(readings: int = 200_000) -> dict[str, Any]:
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
    model = anomaly.AnomalyModel.load(reg.SHIPPED)
    t = 1_763_700_000_000
    window = [(t + i * 1000, anomaly.POWER_W, 100.0 + (i % 9)) for i in range(60)]
    window += [(t + i * 1000, anomaly.ENERGY_WH, i * 0.03) for i in range(60)]
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.score(anomaly.window_features(window, 2000.0))
        lat.append((time.perf_counter() - t0) * 1000)
    data = (reg.SHIPPED.parent / "anomaly.onnx").read_bytes()
    manifest = anomaly.Manifest.read(reg.SHIPPED)
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


SWAPS = 10
SWAP_DEVICES = 20
SWAP_EVERY_S = 0.5  # one activation every half second: the rate is over about 5 s


class _Snapshot(NamedTuple):
    t: float  # time.perf_counter()
    offered: int  # windows the readings completed
    decided: int  # windows the ONNX tier scored
    failed: int  # exceptions and windows it could not score
    model_changes: int  # model swaps the load saw at the engine's swap point


class _Load:
    """Windows of plugs' readings, offered to the engine's per-reading code
    (DecisionEngine._device without the store read) as fast as the event loop
    takes them, round robin over the plugs."""

    def __init__(self, engine: DecisionEngine, n_devices: int) -> None:
        self.engine = engine
        self.devices = [
            e.Device(f"plug-{i}", b"k" * 32, PLUG_CAPABILITIES, 2000.0) for i in range(n_devices)
        ]
        for d in self.devices:
            engine.rules.bind(d)
        self.fed = [0] * n_devices  # power readings (one a second, each with an energy reading)
        self.exceptions = 0
        self.model_changes = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        engine, n_devices = self.engine, len(self.devices)
        t_base = 1_763_700_000_000
        i = 0
        model: Any = None
        while not self.stop.is_set():
            k = i % n_devices
            i += 1
            dev = self.devices[k]
            windows = engine._anomaly_windows()  # the engine's swap point, once per step
            if windows is not None and windows.model is not model:
                self.model_changes += model is not None
                model = windows.model
            for j in range(self.fed[k], self.fed[k] + WINDOW_READINGS):
                ts = t_base + j * 1000
                for sensor, value in ((POWER_W, 100.0 + j % 7), (ENERGY_WH, j * 0.03)):
                    try:  # what DecisionEngine._device does with each reading
                        engine.rules.reading(dev.device_id, sensor, ts, value)
                        if windows is not None:
                            engine._score(windows, dev, ts, sensor, value)
                    except Exception:
                        self.exceptions += 1
            self.fed[k] += WINDOW_READINGS
            await asyncio.sleep(0)  # the event loop (Raft, the registry) runs between steps

    def snapshot(self) -> _Snapshot:
        # A window completes when the power reading after its 60th arrives.
        offered = sum((n - 1) // WINDOW_READINGS for n in self.fed if n > 0)
        return _Snapshot(
            time.perf_counter(),
            offered,
            self.engine.scored,
            self.exceptions + self.engine.score_errors,
            self.model_changes,
        )


class _Loads:
    """The registry's ``on_load`` callback: every model load, and an event per load."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, bool]] = []
        self.event = asyncio.Event()

    def __call__(self, name: str, ok: bool) -> None:
        self.loaded.append((name, ok))
        self.event.set()


async def _wait_ready(node: RaftNode) -> None:
    deadline = time.monotonic() + 30
    while not node.is_ready:
        if time.monotonic() > deadline:
            raise BenchError("the one-node Raft did not become ready in 30 s")
        await asyncio.sleep(0.05)


async def _two_versions(node: RaftNode, tmp: Path) -> reg.ModelRegistry:
    """A model registry on ``node`` with two signed versions of the shipped
    anomaly model, "a" and "b", stored and recorded through Raft."""
    loop = asyncio.get_running_loop()
    priv, pub = keys.keygen()
    (tmp / "sign.key").write_text(priv + "\n")
    key = keys.private_key(tmp / "sign.key")
    public = keys.public_key(pub)
    registry = reg.ModelRegistry(
        "hub-1", node, tmp / "blobs", {keys.key_id(public): public}, "bench"
    )

    def on_applied(results: list[Any]) -> None:  # pysyncobj's thread, as hub/daemon.py does
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(registry.notice, results)

    node.on_applied = on_applied
    data = (reg.SHIPPED.parent / "anomaly.onnx").read_bytes()
    inner = json.loads(reg.SHIPPED.read_text())
    for ver in ("a", "b"):
        signed = reg.signed_manifest("anomaly", ver, "onnx", data, inner)
        sig, kid = keys.sign(signed, key)
        mv = reg.version_record(signed, sig, kid)
        registry.store_blob(mv.sha256.hex(), [data])
        await node.propose(e.encode(mv))
    return registry


async def _swaps(
    node: RaftNode, registry: reg.ModelRegistry, loads: _Loads, swaps: int, say: Say
) -> None:
    """Activate "a" and "b" in turn through Raft, one every SWAP_EVERY_S, each
    waited for until the registry has swapped it in."""
    for n in range(swaps):
        if n:
            await asyncio.sleep(SWAP_EVERY_S)
        to = "a" if n % 2 == 0 else "b"
        loads.event.clear()
        await reg.propose_activation(node, "anomaly", to)
        async with asyncio.timeout(60):
            while registry.active["anomaly"].version != to:
                if "anomaly" in registry.errors:
                    raise BenchError(f"swap to anomaly@{to} refused: {registry.errors}")
                await loads.event.wait()
                loads.event.clear()
        say(
            f"  swap {n + 1}/{swaps}: anomaly@{to} active "
            f"(loaded in {registry.active['anomaly'].load_ms:.1f} ms)"
        )


async def _swap_under_load(
    node: RaftNode, tmp: Path, swaps: int, n_devices: int, baseline_s: float, say: Say
) -> dict[str, Any]:
    await _wait_ready(node)
    registry = await _two_versions(node, tmp)
    loads = _Loads()
    registry.on_load = loads
    runner = asyncio.create_task(registry.run())
    # The engine, with the shipped rules and the registry.
    ruleset = r.load_rules_file(ROOT / "models" / "rules" / "energy.toml")
    engine = DecisionEngine(node, ruleset, Guard(), DecisionsConfig(), models=registry)
    load = _Load(engine, n_devices)
    loader: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(30):
            while registry.current("anomaly") is None:  # the shipped model, at start
                await asyncio.sleep(0.01)
        loader = asyncio.create_task(load.run())
        await asyncio.sleep(0.2)  # warm up
        b0 = load.snapshot()
        await asyncio.sleep(baseline_s)
        b1 = load.snapshot()
        say(f"  no swap: {(b1.decided - b0.decided) / (b1.t - b0.t):.0f} decisions/s")
        s0 = load.snapshot()
        loads_before = len(loads.loaded)  # the shipped model's load at start is not a swap
        await _swaps(node, registry, loads, swaps, say)
        s1 = load.snapshot()
    except TimeoutError:
        raise BenchError("a model swap did not finish in time") from None
    finally:
        load.stop.set()
        if loader is not None:
            await loader
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        node.on_applied = None
    span = s1.t - s0.t
    decided = s1.decided - s0.decided
    return {
        "swap_decisions_per_s": round(decided / span, 1),
        "swap_baseline_decisions_per_s": round((b1.decided - b0.decided) / (b1.t - b0.t), 1),
        "swap_count": sum(
            1 for name, ok in loads.loaded[loads_before:] if ok and name == "anomaly"
        ),
        "swap_failed": s1.failed - s0.failed,
        "swap_dropped": (s1.offered - s0.offered) - decided,
        "swap_decisions": decided,
        "swap_span_s": round(span, 3),
        "swap_seen_by_engine": s1.model_changes - s0.model_changes,
    }


def swap_under_load(
    swaps: int = SWAPS, devices: int = SWAP_DEVICES, baseline_s: float = 1.0, say: Say = print
) -> dict[str, Any]:
    """Decisions per second while the anomaly model is hot-swapped ``swaps`` times."""
    with tempfile.TemporaryDirectory(prefix="aiot-bench-swap-") as tmp:
        node = RaftNode(f"127.0.0.1:{free_port()}", [], Path(tmp) / "raft", secrets.token_hex(24))
        try:
            return asyncio.run(_swap_under_load(node, Path(tmp), swaps, devices, baseline_s, say))
        finally:
            node.close()


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


async def _control_loop(
    cluster: LocalCluster, loops: int, background: int, say: Say
) -> list[float]:
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


def _every(say: Say, n: int, every: int = 25) -> Callable[[str], None]:
    """Passes on every ``every``-th of ``n`` progress lines (and the last) to
    ``say``, indented: a run of hundreds of scenarios shows where it is
    without a line for each."""
    seen = [0]

    def out(line: str) -> None:
        seen[0] += 1
        if seen[0] % every == 0 or seen[0] == n:
            say(f"    {line}")

    return out


def _llm_run(base: Path, adapter: Path | None, cases: list[Any], label: str, say: Say) -> Any:
    say(f"  {label}: {len(cases)} scenarios, 1 thread, each primed...")
    t0 = time.perf_counter()
    report = ev.evaluate(
        base, cases, threads=1, progress=_every(say, len(cases)), adapter=adapter, primed=True
    )
    elapsed = time.perf_counter() - t0
    say(f"  {label}: accuracy {report['accuracy']}, {elapsed:.0f} s")
    return report, elapsed


def llm_figures(cases: int, say: Say) -> dict[str, Any]:
    """The LLM tier on the held-out split (models/eval/heldout.jsonl, its first
    ``cases`` scenarios), 1 thread: the pair the hub runs by default (the
    shipped adapter on its base, or the base alone) and the base by itself,
    on the same scenarios; and both on the hand-written set (at most ``cases``
    of it too)."""
    if not llm.llama_cpp_available():
        return {"llm_missing": f"llama-cpp-python is not installed: {llm.INSTALL_HINT}"}
    try:
        base, adapter = ev.resolve(ev.DEFAULT, llm.MODELS_DIR)
    except llm.ModelError as exc:
        return {"llm_missing": str(exc)}
    heldout = ev.load_scenarios(ev.HELDOUT_SCENARIOS)[:cases]
    hand = ev.load_scenarios(ev.DEFAULT_SCENARIOS)[:cases]
    name = base.name if adapter is None else f"{base.name} + {adapter.name}"
    report, elapsed = _llm_run(base, adapter, heldout, f"held-out, {name}", say)
    hand_report, _ = _llm_run(base, adapter, hand, f"hand-written, {name}", say)
    base_report, base_hand = report, hand_report
    if adapter is not None:
        base_report, _ = _llm_run(base, None, heldout, f"held-out, {base.name}", say)
        base_hand, _ = _llm_run(base, None, hand, f"hand-written, {base.name}", say)
    tokens = report["completion_tokens_mean"] * report["n"]
    prompt_tokens = report["prompt_tokens_mean"] * report["n"]
    return {
        # Each scenario's static prompt (actions, policy) evaluated first,
        # untimed, as a hub has it cached when it consults about the same
        # kind of device again; the priming's own time beside it.
        "llm_decision_latency_ms_p50": report["latency_ms_p50"],
        "llm_decision_latency_ms_p95": report["latency_ms_p95"],
        "llm_prime_ms_p50": report["prime_ms_p50"],
        "llm_prime_ms_p95": report["prime_ms_p95"],
        "base_llm_decision_latency_ms_p50": base_report["latency_ms_p50"],
        # Generated tokens per second of the run's wall time (prompt
        # evaluation and priming included in the time, not in the count).
        "llm_tokens_per_s": round(tokens / elapsed, 2) if elapsed else 0.0,
        "llm_prompt_tokens_mean": round(prompt_tokens / report["n"], 1) if report["n"] else 0,
        "llm_accuracy": report["accuracy"],
        "llm_invalid_rate": report["invalid_rate"],
        "base_llm_accuracy": base_report["accuracy"],
        "base_llm_invalid_rate": base_report["invalid_rate"],
        "llm_majority_baseline": report["majority_baseline"],
        "llm_accuracy_hand_written": hand_report["accuracy"],
        "base_llm_accuracy_hand_written": base_hand["accuracy"],
        "llm_cases": report["n"],
        "llm_cases_hand_written": hand_report["n"],
        "llm_split": ev.HELDOUT_SCENARIOS.name,
        "llm_model": report["model"],
        "llm_adapter": None if adapter is None else report.get("adapter_sha256"),
    }


def _speed(
    path: Path, prompt_tokens: int = 256, decode_tokens: int = 32, lora: Path | None = None
) -> tuple[float, float]:
    """(prompt, generation) milliseconds per token of the GGUF at ``path`` (with
    the LoRA adapter ``lora`` applied) on 1 llama.cpp thread: a batch of
    ``prompt_tokens``, then ``decode_tokens`` one at a time; the best of
    three rounds."""
    llama_cpp: Any = importlib.import_module("llama_cpp")
    llm.quiet_llama_cpp(llama_cpp)
    m = llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=512,
        n_threads=1,
        n_threads_batch=1,
        seed=0,
        verbose=False,
    )
    ids = m.tokenize(b"The plug in the garage draws more power than its limit. " * 40)
    ids = ids[:prompt_tokens]
    best_p = best_d = math.inf
    for _ in range(3):
        m.reset()
        t0 = time.perf_counter()
        m.eval(ids)
        best_p = min(best_p, (time.perf_counter() - t0) * 1000 / len(ids))
        t0 = time.perf_counter()
        for tok in ids[:decode_tokens]:
            m.eval([tok])
        best_d = min(best_d, (time.perf_counter() - t0) * 1000 / decode_tokens)
    m.close()
    return round(best_p, 3), round(best_d, 3)


def quant_figures(say: Say) -> dict[str, Any]:
    """The default GGUF's speed on 1 thread against its Q4_1 source's, measured
    in the same run: why the default is the Q4_0 file (models/README.md); and
    with the shipped adapter applied, what the adapter costs a token."""
    if not llm.llama_cpp_available():
        return {}
    try:
        default = llm.resolve_model(llm.DEFAULT_MODEL)
        man = install_llm.Manifest.load(llm.MODELS_DIR / f"{llm.DEFAULT_MODEL}.json")
        if not man.derived_from:
            return {}
        source = llm.resolve_model(man.derived_from)
    except (llm.ModelError, install_llm.InstallError) as exc:
        return {"llm_speed_missing": str(exc)}
    say(f"  speed of {default.name} and {source.name}, 1 thread...")
    p, d = _speed(default)
    sp, sd = _speed(source)
    out: dict[str, Any] = {
        "llm_prompt_ms_per_token": p,
        "llm_generate_ms_per_token": d,
        "q4_1_prompt_ms_per_token": sp,
        "q4_1_generate_ms_per_token": sd,
        "q4_1_over_default_generate": round(sd / d, 3) if d else None,
    }
    try:
        base, adapter = ev.resolve(ev.DEFAULT, llm.MODELS_DIR)
    except llm.ModelError as exc:
        return {**out, "adapter_speed_missing": str(exc)}
    if adapter is not None and base.resolve() == default.resolve():
        say(f"  speed of {default.name} + {adapter.name}, 1 thread...")
        ap, ad = _speed(default, lora=adapter)
        out.update(
            adapter_prompt_ms_per_token=ap,
            adapter_generate_ms_per_token=ad,
            adapter_over_default_generate=round(ad / d, 3) if d else None,
        )
    return out


def decide(
    loops: int = 300, background: int = 5, llm_cases: int = 300, say: Say = print
) -> dict[str, Any]:
    say("rules tier...")
    result: dict[str, Any] = {**rules_rate()}
    say("ONNX tier...")
    result.update(onnx_figures())
    say(f"ONNX hot swap under load: {SWAPS} swaps through the model registry on a one-node Raft...")
    result.update(swap_under_load(say=say))
    say("control loop on a 3-node cluster...")
    result.update(control_loop(loops, background, say))
    say("LLM tier...")
    result.update(quant_figures(say))
    result.update(llm_figures(llm_cases, say))
    result["bars"] = {
        "control_loop_ms_p99<=150": result["control_loop_ms_p99"] <= 150,
        "swap_decisions_per_s>=200": result["swap_decisions_per_s"] >= 200,
        "swap_failed==0": result["swap_failed"] == 0,
        "swap_dropped==0": result["swap_dropped"] == 0,
    }
    result["machine"] = machine()
    return result


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(decide()))
