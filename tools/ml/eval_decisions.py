"""Measure an LLM's decisions on a scenario set: the numbers the trust gate reads.

The scenario format is documented in ``models/eval/README.md``. Each scenario
runs through the same ``hub.decide.llm.LlmWorker`` the hub uses (child process,
grammar, validation, deadline), one at a time. A scenario counts as correct
when the outcome is ``ok``, the action is the expected one and, where the
scenario names parameters, every one of them has the expected value (floats
within 1e-6). Invalid outputs, missed deadlines and worker errors count as
wrong, and are also reported as rates of their own.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hub.decide import facts as f
from hub.decide import grammar
from hub.decide import registry as reg
from hub.decide.llm import (
    DEFAULT_MODEL,
    LlmResult,
    LlmWorker,
    ModelError,
    Outcome,
    model_capabilities,
    resolve_model,
)
from protocol import messages as m
from protocol import profiles
from tools.base.paths import ROOT

DEFAULT_SCENARIOS: Final = ROOT / "models" / "eval" / "decisions.jsonl"
DEFAULT_EVAL_DEADLINE_MS: Final = 30_000.0
# Keys a generated data line (tools/ml/policy) adds for training; the runner ignores them.
TRAINING_KEYS: Final = ("messages", "answer", "meta")

# Named capability sets a scenario may use instead of a list (protocol/profiles.py):
# "plug" is what a model may choose on a smart plug (its operator-only OTA left out).
CAPABILITY_SETS: Final[dict[str, tuple[m.Capability, ...]]] = {
    "plug": model_capabilities(profiles.PLUG_CAPABILITIES),
    "meter": profiles.METER_CAPABILITIES,
    "relay": profiles.RELAY_CAPABILITIES,
}


class ScenarioError(ValueError):
    """A scenario file that does not follow the format; names the file and line."""


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    capabilities: tuple[m.Capability, ...]
    facts: tuple[str, ...]
    policy: str
    expect_action: str
    expect_params: dict[str, m.ParamValue] | None = None
    category: str = ""
    shape: str = ""  # a generated line's policy shape (its ``meta.shape``), else ""


def _caps(value: Any) -> tuple[m.Capability, ...]:
    if isinstance(value, str):
        if value not in CAPABILITY_SETS:
            raise ValueError(f"unknown capability set {value!r}: one of {sorted(CAPABILITY_SETS)}")
        return CAPABILITY_SETS[value]
    if not isinstance(value, list):
        raise ValueError("capabilities must be a set name or a list")
    kinds = {k.name.lower(): k for k in m.ParamKind}
    out = []
    for c in value:
        params = []
        for p in c.get("params", []):
            kind = kinds.get(str(p["kind"]).lower())
            if kind is None:
                raise ValueError(f"param kind {p['kind']!r}: one of {sorted(kinds)}")
            params.append(
                m.ParamSpec(str(p["name"]), kind, float(p.get("min", 0)), float(p.get("max", 0)))
            )
        out.append(m.Capability(str(c["action"]), tuple(params)))
    caps = tuple(out)
    grammar.check_capabilities(caps)
    return caps


def _scenario(d: Any) -> Scenario:
    if not isinstance(d, dict):
        raise ValueError("a scenario is a JSON object")
    unknown = set(d) - {
        "id",
        "category",
        "capabilities",
        "facts",
        "policy",
        "expect_action",
        "expect_params",
        *TRAINING_KEYS,
    }
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    caps = _caps(d.get("capabilities", "plug"))
    facts = d["facts"]
    if not isinstance(facts, list) or not all(isinstance(x, str) for x in facts):
        raise ValueError("facts must be a list of strings")
    action = d["expect_action"]
    if action not in grammar.actions(caps):
        raise ValueError(f"expect_action {action!r} is not one of {grammar.actions(caps)}")
    params = d.get("expect_params")
    if params is not None:
        # The expectation itself must be a decision the device accepts.
        grammar.validate({"action": action, "params": params, "reason": ""}, caps)
    policy = d["policy"]
    if not isinstance(policy, str) or not policy.strip():
        raise ValueError("policy must be a non-empty string")
    _check_training_keys(d, caps, policy, action, params)
    return Scenario(
        str(d["id"]),
        caps,
        tuple(facts),
        policy,
        action,
        params,
        str(d.get("category", "")),
        str((d.get("meta") or {}).get("shape", "")) if isinstance(d.get("meta"), dict) else "",
    )


def _is_prompt(messages: Any, caps: tuple[m.Capability, ...], policy: str) -> bool:
    """Whether ``messages`` is what the hub asks an adapter to read this policy
    with, and a reading of it (its third message)."""
    if not isinstance(messages, list) or len(messages) != 3:
        return False
    said = messages[2].get("content") if isinstance(messages[2], dict) else None
    if not isinstance(said, str) or not said.strip():
        return False
    return bool(messages == f.reading_conversation(caps, policy, said))


def _check_training_keys(
    d: dict[str, Any],
    caps: tuple[m.Capability, ...],
    policy: str,
    action: str,
    params: dict[str, m.ParamValue] | None,
) -> None:
    """The keys a generated line adds for training (``aiot models policy-data``):
    ``messages`` must be the very request to read the policy that the hub
    sends an adapter, and a reading; ``answer`` a valid
    decision that agrees with the expectation; ``meta`` is not read."""
    if "messages" in d and not _is_prompt(d["messages"], model_capabilities(caps), policy):
        raise ValueError(
            "messages are not the reading the hub asks an adapter for "
            f"({f.ADAPTER_PROMPT_VERSION}); regenerate the file"
        )
    if "answer" in d:
        got = grammar.validate(d["answer"], model_capabilities(caps))
        if got.action != action or (params is not None and got.params_dict() != params):
            raise ValueError("answer disagrees with expect_action/expect_params")


def load_scenarios(path: Path) -> list[Scenario]:
    """Read a JSON Lines file (blank lines and lines starting with # are skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc.strerror or exc}") from None
    out: list[Scenario] = []
    ids: set[str] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            s = _scenario(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ScenarioError(f"{path}:{no}: {what}") from None
        if s.id in ids:
            raise ScenarioError(f"{path}:{no}: id {s.id!r} repeated")
        ids.add(s.id)
        out.append(s)
    if not out:
        raise ScenarioError(f"{path}: no scenarios")
    return out


def correct(result: LlmResult, s: Scenario) -> bool:
    d = result.decision
    if d is None or d.action != s.expect_action:
        return False
    if s.expect_params is None:
        return True
    got = d.params_dict()
    for name, want in s.expect_params.items():
        have = got.get(name)
        if isinstance(want, bool) or isinstance(have, bool) or isinstance(want, str):
            if have != want:
                return False
        elif not isinstance(have, int | float) or not math.isclose(
            have, want, rel_tol=1e-9, abs_tol=1e-6
        ):
            return False
    return True


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Progress:
    """Calls ``out`` with one line per scenario; the CLI sends it to stderr."""

    out: Callable[[str], None]
    n: int
    done: int = 0
    right: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def step(self, s: Scenario, r: LlmResult, ok: bool) -> None:
        self.done += 1
        self.right += ok
        self.outcomes[str(r.outcome)] += 1
        got = r.decision.to_json() if r.decision else {"outcome": str(r.outcome)}
        got.pop("reason", None)
        self.out(
            f"[{self.done}/{self.n}] {s.id}: {'right' if ok else 'WRONG'} "
            f"expected {s.expect_action}{json.dumps(s.expect_params) if s.expect_params else ''} "
            f"got {json.dumps(got)} ({r.provenance.latency_ms:.0f} ms)"
        )


def evaluate(
    model_path: Path,
    scenarios: Sequence[Scenario],
    *,
    threads: int = 1,
    deadline_ms: float = DEFAULT_EVAL_DEADLINE_MS,
    progress: Callable[[str], None] | None = None,
    adapter: Path | None = None,
    primed: bool = False,
) -> dict[str, Any]:
    """Run every scenario through a fresh worker and summarise (keys in the
    module doc); with ``adapter``, the base model with that GGUF LoRA adapter
    applied (the report then names ``adapter_sha256``, the trust gate's key).
    ``primed``: before each scenario, untimed, the prompt's static part (the
    device's actions and the policy) is evaluated, so the latency is a
    decision's as a hub consulting about the same kind of device again sees
    it (only the facts are new); ``prime_ms_p50``/``_p95`` give what the
    priming took, about a first decision's extra."""
    prog = Progress(progress or (lambda _line: None), len(scenarios))
    return asyncio.run(_run(model_path, scenarios, threads, deadline_ms, prog, adapter, primed))


HELDOUT_SCENARIOS: Final = ROOT / "models" / "eval" / "heldout.jsonl"
DEFAULT: Final = "default"  # the pair the hub runs by default


def resolve(model: str, models_dir: Path) -> tuple[Path, Path | None]:
    """(base GGUF, adapter GGUF or None) of ``--model``: ``default`` is what a
    hub with this models folder runs by default (the shipped adapter on its
    base, else the default model alone); ``llm-adapter`` the shipped adapter
    (ModelError when none is shipped); anything else a base model alone."""
    if model not in (DEFAULT, reg.LLM_ADAPTER):
        return resolve_model(model, models_dir), None
    try:
        found = reg.shipped_adapter(models_dir)
    except reg.ModelRefused as exc:
        raise ModelError(f"the shipped adapter: {exc}") from None
    if found is None:
        if model == reg.LLM_ADAPTER:
            raise ModelError(f"no adapter is shipped in {models_dir / reg.LLM_ADAPTER}")
        return resolve_model(DEFAULT_MODEL, models_dir), None
    adapter, _ = found
    base = reg.shipped_bases(models_dir).get(adapter.base_sha256)
    if base is None:
        raise ModelError(f"{adapter.name} is for base {adapter.base_sha256}, not shipped here")
    assert adapter.path is not None
    return base, adapter.path


def side_by_side(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any]:
    """The base model's report and the adapter's on the same scenarios, and
    their accuracies per category and per policy shape next to each other."""

    def pairs(key: str) -> dict[str, dict[str, float | None]]:
        names = sorted(set(base[key]) | set(tuned[key]))
        return {k: {"base": base[key].get(k), "adapter": tuned[key].get(k)} for k in names}

    return {
        "n": base["n"],
        "accuracy": {"base": base["accuracy"], "adapter": tuned["accuracy"]},
        "by_category": pairs("by_category"),
        "by_shape": pairs("by_shape"),
        "base": base,
        "adapter": tuned,
    }


async def _run(
    model_path: Path,
    scenarios: Sequence[Scenario],
    threads: int,
    deadline_ms: float,
    prog: Progress,
    adapter: Path | None = None,
    primed: bool = False,
) -> dict[str, Any]:
    results: list[tuple[Scenario, LlmResult, bool]] = []
    primes: list[float] = []
    async with LlmWorker(model_path, threads=threads, lora_path=adapter) as worker:
        for s in scenarios:
            if primed:
                primes.append(await worker.prime(s.capabilities, s.policy) * 1000.0)
            r = await worker.decide(s.capabilities, s.facts, s.policy, deadline_ms=deadline_ms)
            ok = correct(r, s)
            results.append((s, r, ok))
            prog.step(s, r, ok)
        sha = worker.model_sha256
        name = worker.model_name
        adapter_sha = worker.adapter_sha256
    out = summarise(
        results,
        model=name,
        model_sha256=sha,
        threads=threads,
        deadline_ms=deadline_ms,
        prompt_version=f.prompt_version(adapter is not None),
    )
    if adapter is not None:
        out["adapter"] = adapter.name
        out["adapter_sha256"] = adapter_sha
    out["primed"] = primed
    if primed:
        out["prime_ms_p50"] = round(percentile(primes, 50), 1)
        out["prime_ms_p95"] = round(percentile(primes, 95), 1)
    return out


def summarise(
    results: Sequence[tuple[Scenario, LlmResult, bool]],
    *,
    model: str,
    model_sha256: str,
    threads: int,
    deadline_ms: float,
    prompt_version: str = f.PROMPT_VERSION,
) -> dict[str, Any]:
    n = len(results)
    outcomes = Counter(r.outcome for _, r, _ok in results)
    latencies = [r.provenance.latency_ms for _, r, _ok in results]
    prompt_tokens = sum(r.provenance.prompt_tokens for _, r, _ok in results)
    completion_tokens = sum(r.provenance.completion_tokens for _, r, _ok in results)
    by_cat: dict[str, list[bool]] = {}
    by_shape: dict[str, list[bool]] = {}
    for s, _r, ok in results:
        by_cat.setdefault(s.category or "-", []).append(ok)
        if s.shape:
            by_shape.setdefault(s.shape, []).append(ok)
    expected = Counter(s.expect_action for s, _r, _ok in results)
    chosen = Counter(r.decision.action if r.decision else f"<{r.outcome}>" for _, r, _ok in results)

    def rate(x: int) -> float:
        return round(x / n, 4) if n else 0.0

    return {
        "accuracy": rate(sum(ok for _s, _r, ok in results)),
        "invalid_rate": rate(outcomes[Outcome.INVALID]),
        "deadline_rate": rate(outcomes[Outcome.DEADLINE]),
        "error_rate": rate(outcomes[Outcome.ERROR]),
        "latency_ms_p50": round(percentile(latencies, 50), 1),
        "latency_ms_p95": round(percentile(latencies, 95), 1),
        "n": n,
        "correct": sum(ok for _s, _r, ok in results),
        # What always answering the most frequent expected action would score.
        "majority_baseline": rate(max(expected.values(), default=0)),
        "prompt_tokens_mean": round(prompt_tokens / n, 1) if n else 0.0,
        "completion_tokens_mean": round(completion_tokens / n, 1) if n else 0.0,
        "by_category": {k: rate_of(v) for k, v in sorted(by_cat.items())},
        # Generated (held-out) lines only: accuracy per policy shape (tools/ml/policy).
        "by_shape": {k: rate_of(v) for k, v in sorted(by_shape.items())},
        "actions_chosen": dict(sorted(chosen.items())),
        "model": model,
        "model_sha256": model_sha256,
        "prompt_version": prompt_version,
        "threads": threads,
        "deadline_ms": deadline_ms,
        "machine": f"{platform.machine()}, {platform.system()}",
    }


def rate_of(oks: Sequence[bool]) -> float:
    return round(sum(oks) / len(oks), 4) if oks else 0.0
