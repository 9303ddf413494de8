"""The adapter's eval report: held-out scenarios through llama.cpp with the adapter applied.

Each scenario goes through the hub's own generation path
(``hub.decide.llm``: the chat template from the GGUF, the grammar from the
device's capabilities, greedy decoding, then ``grammar.parse``), with the
base GGUF loaded with ``lora_path=``, and is scored and summarised by
``tools.ml.eval_decisions`` (the keys of ``aiot eval decisions --json``), so
the figures compare with that command's report on the base model.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hub.core.fsutil import sha256_file
from hub.decide import facts as hf
from hub.decide import grammar
from hub.decide.llm import (
    LlmResult,
    Outcome,
    Provenance,
    _answer,
    _renderer,
    _Request,
    model_capabilities,
    quiet_llama_cpp,
)
from tools.ml.eval_decisions import Scenario, correct, load_scenarios, summarise


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


def decide(llm: Any, render: Any, s: Scenario, name: str, sha: str) -> LlmResult:
    """One scenario as the hub's worker answers it (no deadline)."""
    llama_cpp: Any = importlib.import_module("llama_cpp")
    caps = model_capabilities(s.capabilities)
    messages = hf.build_messages(caps, s.facts, s.policy, compact=True)
    req = _Request(0, messages, grammar.gbnf(caps), grammar.max_chars(caps) + 1, math.inf, caps)
    t0 = time.monotonic()
    reply = _answer(llama_cpp, llm, render, {}, req)
    outcome, detail, decision = Outcome.OK, "", None
    if reply.error:
        outcome, detail = Outcome.ERROR, reply.error
    else:
        try:
            decision = grammar.parse(reply.text, caps)
        except grammar.InvalidOutput as exc:
            outcome, detail = Outcome.INVALID, exc.reason
    prov = Provenance(
        model_name=name,
        model_sha256=sha,
        prompt_version=hf.ADAPTER_PROMPT_VERSION,
        prompt_sha256=hf.prompt_sha256(messages),
        raw_output=reply.text,
        latency_ms=round((time.monotonic() - t0) * 1000.0, 3),
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        outcome=outcome,
        detail=detail,
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
) -> dict[str, Any]:
    """The report of ``aiot eval decisions`` for base + adapter on the first ``limit``
    scenarios, with ``adapter`` and ``adapter_sha256`` added."""
    scenarios: Sequence[Scenario] = load_scenarios(scenarios_path)[:limit]
    llm = load_adapted(base, adapter, threads)
    try:
        render = _renderer(llm)
        sha = sha256_file(base)
        results = []
        for i, s in enumerate(scenarios, 1):
            r = decide(llm, render, s, base.stem, sha)
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
    report["adapter"] = adapter.name if adapter else None
    report["adapter_sha256"] = sha256_file(adapter) if adapter else None
    report["scenarios"] = str(scenarios_path)
    return report
