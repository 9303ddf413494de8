"""The adapter's eval report: held-out scenarios through llama.cpp with the adapter applied.

As the hub's worker does (``hub.decide.llm``), the adapter reads each policy
once (the chat template from the GGUF, the reading grammar, greedy decoding)
and each scenario's facts are checked against the reading
(``hub.decide.reading``), with the base GGUF loaded with ``lora_path=``. The
results are scored and summarised by ``tools.ml.eval_decisions`` (the keys of
``aiot eval decisions --json``), so the figures compare with that command's
report; ``read_ms_p50``/``_p95`` give what a reading took.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hub.core.fsutil import sha256_file
from hub.decide import facts as hf
from hub.decide import grammar
from hub.decide import reading as rd
from hub.decide.llm import (
    LlmResult,
    Outcome,
    Provenance,
    _answer,
    _renderer,
    _Reply,
    _Request,
    model_capabilities,
    quiet_llama_cpp,
)
from protocol import messages as m
from tools.ml.eval_decisions import Scenario, correct, load_scenarios, percentile, summarise


def load_adapted(base: Path, adapter: Path | None, threads: int, n_ctx: int = 2048) -> Any:
    """A llama.cpp model: the base GGUF, with the adapter applied when given."""
    llama_cpp: Any = importlib.import_module("llama_cpp")
    quiet_llama_cpp(llama_cpp)
    return llama_cpp.Llama(
        model_path=str(base),
        lora_path=str(adapter) if adapter else None,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        seed=0,
        verbose=False,
    )


def read(llm: Any, render: Any, caps: tuple[m.Capability, ...], policy: str) -> _Reply:
    """The adapter's reading of ``policy`` for a device with ``caps`` (no deadline)."""
    llama_cpp: Any = importlib.import_module("llama_cpp")
    ask = _Request(
        0,
        hf.reading_messages(caps, policy),
        grammar.reading_gbnf(caps),
        grammar.READING_MAX_TOKENS,
        math.inf,
    )
    return _answer(llama_cpp, llm, render, {}, ask)


def decide(said: _Reply, s: Scenario, name: str, sha: str) -> LlmResult:
    """One scenario's decision from the adapter's reading of its policy."""
    caps = model_capabilities(s.capabilities)
    t0 = time.monotonic()
    outcome, detail, decision = Outcome.OK, "", None
    # As the hub's worker: no reading is an error; a reading the hub cannot
    # parse, or a rule that gives what the device does not accept for these
    # facts, an invalid decision.
    if said.error or not said.text.strip():
        outcome, detail = Outcome.ERROR, f"reading the policy: {said.error or 'no reading'}"
    else:
        try:
            decision = rd.decide(rd.parse(said.text), s.facts, caps).decision
        except rd.InvalidReading as exc:
            outcome, detail = Outcome.INVALID, f"the reading: {exc}"
    prov = Provenance(
        model_name=name,
        model_sha256=sha,
        prompt_version=hf.ADAPTER_PROMPT_VERSION,
        prompt_sha256=hf.prompt_sha256(hf.reading_messages(caps, s.policy)),
        raw_output="",
        latency_ms=round((time.monotonic() - t0) * 1000.0, 3),
        prompt_tokens=0,
        completion_tokens=0,
        outcome=outcome,
        detail=detail,
        reading=said.text,
    )
    return LlmResult(decision, prov)


def evaluate(
    base: Path,
    adapter: Path | None,
    scenarios_path: Path,
    *,
    limit: int,
    threads: int,
    progress: Callable[[str], None] = lambda _line: None,
    readings_out: Path | None = None,
) -> dict[str, Any]:
    """The report of ``aiot eval decisions`` for base + adapter on the first ``limit``
    scenarios, with ``adapter`` and ``adapter_sha256`` added; ``readings_out``:
    a JSON line per scenario there (its id, the reading of its policy, the
    expected and the chosen action, right or not), to see what was misread."""
    scenarios: Sequence[Scenario] = load_scenarios(scenarios_path)[:limit]
    llm = load_adapted(base, adapter, threads)
    try:
        render = _renderer(llm)
        sha = sha256_file(base)
        results = []
        readings: dict[tuple[str, str], _Reply] = {}
        read_ms: list[float] = []
        # The policies are read grouped by the device's actions, so that, as on
        # a hub, llama.cpp reuses the cached head of the prompt (the actions
        # and the instructions) and runs only the policy's own tokens.
        n_policies = len({_policy_key(s) for s in scenarios})
        for s in sorted(scenarios, key=_policy_key):
            key = _policy_key(s)
            if key not in readings:
                t0 = time.monotonic()
                readings[key] = read(llm, render, model_capabilities(s.capabilities), s.policy)
                read_ms.append((time.monotonic() - t0) * 1000.0)
                progress(f"eval: read policy {len(readings)}/{n_policies}")
        for i, s in enumerate(scenarios, 1):
            r = decide(readings[_policy_key(s)], s, base.stem, sha)
            ok = correct(r, s)
            results.append((s, r, ok))
            got = r.decision.action if r.decision else f"<{r.outcome}>"
            progress(f"eval [{i}/{len(scenarios)}] {s.id}: {'right' if ok else 'WRONG'} ({got})")
    finally:
        llm.close()
    report = summarise(
        results,
        model=base.stem,
        model_sha256=sha,
        threads=threads,
        deadline_ms=0.0,
        prompt_version=hf.ADAPTER_PROMPT_VERSION,
    )
    report["policies_read"] = len(read_ms)
    report["read_ms_p50"] = round(percentile(read_ms, 50), 1) if read_ms else None
    report["read_ms_p95"] = round(percentile(read_ms, 95), 1) if read_ms else None
    report["adapter"] = adapter.name if adapter else None
    report["adapter_sha256"] = sha256_file(adapter) if adapter else None
    report["scenarios"] = str(scenarios_path)
    if readings_out is not None:
        readings_out.write_text("".join(_reading_line(x, readings) for x in results))
    return report


def _policy_key(s: Scenario) -> tuple[str, str]:
    """What a reading is kept by: the device's actions and the policy's words."""
    caps = model_capabilities(s.capabilities)
    return json.dumps([str(c) for c in caps]), s.policy.strip()


def _reading_line(
    row: tuple[Scenario, LlmResult, bool], readings: dict[tuple[str, str], _Reply]
) -> str:
    s, r, ok = row
    said = readings[_policy_key(s)]
    d = {
        "id": s.id,
        "right": ok,
        "expect": s.expect_action,
        "chose": r.decision.action if r.decision else f"<{r.outcome}>",
        "reading": said.text,
        "policy": s.policy,
    }
    return json.dumps(d) + "\n"
