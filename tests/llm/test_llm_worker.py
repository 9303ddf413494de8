"""The LLM tier against the real model: llama.cpp, the default SmolLM2-135M GGUF, no stand-ins.

These tests assert behaviour, never timings: validity of every output, the
fallback on a missed deadline, recovery after the model process dies, and
the eval command's report.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub.decide import grammar
from hub.decide.llm import (
    DEFAULT_MODEL,
    MODELS_DIR,
    LlmResult,
    LlmWorker,
    ModelError,
    Outcome,
    model_capabilities,
    resolve_model,
)
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES as REGISTERED
from tools.ml.eval_decisions import DEFAULT_SCENARIOS, Scenario, load_scenarios

pytestmark = pytest.mark.llm

INSTALL = "python -m tools.ml.install_llm (make test runs it)"
PLUG_CAPABILITIES = model_capabilities(REGISTERED)
GENEROUS_MS = 120_000.0  # never reached: these tests are about validity, not speed


@pytest.fixture(scope="module")
def model() -> Path:
    from hub.decide.llm import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip(f"llama-cpp-python is not installed: {INSTALL}")
    try:
        return resolve_model(DEFAULT_MODEL)
    except ModelError:
        pytest.skip(f"the default GGUF is not in models/: {INSTALL}")


# -- 200 cases: valid JSON naming an allowed action, every time -------------------------

_DISTRACTORS = (
    "voltage is normal",
    "it is a weekday",
    "the device firmware is up to date",
    "the last command succeeded",
    "outdoor temperature is mild",
)


def varied(scenarios: list[Scenario], n: int, seed: int = 7) -> Iterator[Scenario]:
    """n cases from the eval set with other durations, fact orders, extra facts and devices."""
    rng = random.Random(seed)
    subsets = [
        PLUG_CAPABILITIES,
        PLUG_CAPABILITIES[:1],
        PLUG_CAPABILITIES[1:],
        (PLUG_CAPABILITIES[0], PLUG_CAPABILITIES[3]),
    ]
    for i in range(n):
        s = scenarios[i % len(scenarios)]
        facts = [re.sub(r"for \d+ s", f"for {rng.randint(1, 600)} s", fact) for fact in s.facts]
        if rng.random() < 0.5:
            facts.append(rng.choice(_DISTRACTORS))
        rng.shuffle(facts)
        caps = s.capabilities if i < len(scenarios) else rng.choice(subsets)
        yield Scenario(f"{s.id}/{i}", caps, tuple(facts), s.policy, "none")


def in_prompt_order(cases: list[Scenario], parts: int) -> list[list[Scenario]]:
    """The cases in ``parts`` runs of consecutive cases with the same device and
    policy: a prompt then shares its system part, worked examples and policy
    with the one before, which llama.cpp keeps in its cache and does not
    evaluate again (the facts, after the policy, are what differ)."""
    ordered = sorted(cases, key=lambda s: (repr(s.capabilities), s.policy))
    size = -(-len(ordered) // parts)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


@pytest.mark.timeout(3600)
def test_200_decisions_are_valid_json_naming_an_allowed_action(model: Path) -> None:
    cases = list(varied(load_scenarios(DEFAULT_SCENARIOS), 200))
    assert len(cases) == 200
    runs = in_prompt_order(cases, min(2, os.cpu_count() or 1))
    assert sorted(s.id for run in runs for s in run) == sorted(s.id for s in cases)

    async def decide_all(run: list[Scenario]) -> list[tuple[Scenario, LlmResult]]:
        async with LlmWorker(model) as w:  # one llama.cpp thread, as a hub runs it
            return [
                (s, await w.decide(s.capabilities, s.facts, s.policy, deadline_ms=GENEROUS_MS))
                for s in run
            ]

    async def main() -> list[tuple[Scenario, LlmResult]]:
        # One model process per core, each with its half of the cases: one
        # process with two llama.cpp threads leaves a core idle while it
        # samples under the grammar (in Python), between its decodes.
        done = await asyncio.gather(*(decide_all(run) for run in runs))
        return [pair for part in done for pair in part]

    results = asyncio.run(main())
    assert len(results) == 200
    bad = []
    for s, r in results:
        raw = r.provenance.raw_output
        try:
            obj = json.loads(raw)
            ok = (
                isinstance(obj, dict)
                and obj.get("action") in grammar.actions(s.capabilities)
                and r.outcome is Outcome.OK
                and r.decision is not None
                and r.decision == grammar.parse(raw, s.capabilities)
            )
        except ValueError:
            ok = False
        if not ok:
            bad.append((s.id, r.outcome, r.provenance.detail, raw))
    assert bad == [], f"{len(bad)} of 200 outputs were not valid decisions: {bad[:5]}"


# -- provenance -------------------------------------------------------------------------


def test_a_decision_carries_its_provenance(model: Path) -> None:
    async def main() -> tuple[LlmResult, LlmWorker]:
        async with LlmWorker(model) as w:
            r = await w.decide(
                REGISTERED,  # with ota.update, which the model is never offered
                ["power is over the limit for 30 s", "relay is on"],
                "When power is over the limit, switch the relay off.",
                deadline_ms=GENEROUS_MS,
            )
            return r, w

    r, w = asyncio.run(main())
    p = r.provenance
    assert p.outcome is Outcome.OK and not r.fallback
    assert p.model_name == DEFAULT_MODEL
    assert (
        p.model_sha256 == json.loads((model.parent / f"{DEFAULT_MODEL}.json").read_text())["sha256"]
    )
    assert re.fullmatch(r"[0-9a-f]{64}", p.prompt_sha256)
    assert p.prompt_tokens > 0 and p.completion_tokens > 0
    assert p.latency_ms > 0
    assert json.loads(p.raw_output)["action"] == r.decision.action  # type: ignore[union-attr]
    assert r.decision.action in grammar.actions(PLUG_CAPABILITIES)  # type: ignore[union-attr]
    assert set(p.to_json()) >= {
        "model_name",
        "model_sha256",
        "prompt_sha256",
        "raw_output",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "outcome",
    }
    assert w.pid is None  # closed on leaving the block


def test_the_grammar_holds_for_text_and_signed_params(model: Path) -> None:
    caps = (
        m.Capability("display.show", (m.ParamSpec("text", m.ParamKind.Text, 1, 16),)),
        m.Capability(
            "trim",
            (
                m.ParamSpec("offset", m.ParamKind.Float, -5.0, 5.0),
                m.ParamSpec("steps", m.ParamKind.Int, -3, 3),
            ),
        ),
    )
    policies = [
        "Show the word ALERT on the display.",
        "Trim by offset -2.5 and steps -1.",
        "Do nothing.",
    ]

    async def main() -> list[LlmResult]:
        async with LlmWorker(model) as w:
            return [
                await w.decide(caps, ["the device is idle"], p, deadline_ms=GENEROUS_MS)
                for p in policies
            ]

    for r in asyncio.run(main()):
        assert r.outcome in (Outcome.OK, Outcome.INVALID), r.provenance
        # The grammar limits shape and digits; bounds are the validator's.
        obj = json.loads(r.provenance.raw_output)
        assert obj["action"] in grammar.actions(caps)
        if r.outcome is Outcome.OK:
            assert r.decision == grammar.parse(r.provenance.raw_output, caps)


# -- deadlines and failures -------------------------------------------------------------


def test_a_tiny_deadline_falls_back_and_the_worker_stays_usable(model: Path) -> None:
    facts = ["power is over the limit for 30 s", "relay is on"]
    policy = "When power is over the limit, switch the relay off."

    async def main() -> tuple[list[LlmResult], LlmResult, int]:
        async with LlmWorker(model) as w:
            tiny = [
                await w.decide(PLUG_CAPABILITIES, facts, policy, deadline_ms=ms) for ms in (0, 1, 5)
            ]
            after = await w.decide(PLUG_CAPABILITIES, facts, policy, deadline_ms=GENEROUS_MS)
            return tiny, after, w.restarts

    tiny, after, restarts = asyncio.run(main())
    for r in tiny:
        assert r.outcome is Outcome.DEADLINE
        assert r.fallback and r.decision is None
        assert r.provenance.model_sha256 and r.provenance.prompt_sha256
    assert after.outcome is Outcome.OK and after.decision is not None
    assert restarts == 0  # the child stopped at the deadline by itself, none was killed


def test_concurrent_calls_each_get_an_answer_or_a_fallback(model: Path) -> None:
    async def main() -> list[LlmResult]:
        async with LlmWorker(model) as w:
            calls = [
                w.decide(
                    PLUG_CAPABILITIES,
                    ["relay is off", "power is under the limit"],
                    "When the relay is off and power is under the limit, switch the relay on.",
                    deadline_ms=GENEROUS_MS if i % 2 == 0 else 1,
                )
                for i in range(4)
            ]
            return list(await asyncio.gather(*calls))

    results = asyncio.run(main())
    assert [r.outcome for r in results[1::2]] == [Outcome.DEADLINE, Outcome.DEADLINE]
    assert [r.outcome for r in results[0::2]] == [Outcome.OK, Outcome.OK]


def test_a_killed_model_process_is_replaced(model: Path) -> None:
    args = (PLUG_CAPABILITIES, ["power is under the limit"], "Do nothing.")

    async def main() -> tuple[LlmResult, int | None, int | None, int]:
        async with LlmWorker(model) as w:
            first = w.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            end = time.monotonic() + 30
            while w._child is not None and w._child.alive() and time.monotonic() < end:
                await asyncio.sleep(0.05)
            r = await w.decide(*args, deadline_ms=GENEROUS_MS)
            return r, first, w.pid, w.restarts

    r, first, second, restarts = asyncio.run(main())
    assert r.outcome is Outcome.OK
    assert restarts == 1 and second is not None and second != first


def test_a_model_with_the_wrong_sha256_is_refused(model: Path) -> None:
    async def main() -> None:
        async with LlmWorker(model, expected_sha256="0" * 64):
            pass

    with pytest.raises(ModelError, match="differs from the expected"):
        asyncio.run(main())


def test_a_file_that_is_not_a_gguf_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model" * 100)

    async def main() -> None:
        async with LlmWorker(bad):
            pass

    from hub.decide.llm import llama_cpp_available

    if not llama_cpp_available():
        pytest.skip(f"llama-cpp-python is not installed: {INSTALL}")
    with pytest.raises(ModelError):
        asyncio.run(main())


# -- the eval command -------------------------------------------------------------------


def test_eval_decisions_json_has_the_trust_gate_keys(model: Path, tmp_path: Path) -> None:
    import typer

    from tools.cli import evaluate as cli_models

    app = typer.Typer()
    cli_models.register(app)
    args = ["eval", "decisions", "--model", DEFAULT_MODEL, "--limit", "3", "--json"]
    res = CliRunner().invoke(app, args)  # the base alone (default: the shipped adapter too)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("accuracy", "invalid_rate", "latency_ms_p50", "latency_ms_p95", "n"):
        assert key in report
    assert report["n"] == 3
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["invalid_rate"] <= 1.0
    assert report["latency_ms_p50"] <= report["latency_ms_p95"]
    assert report["model"] == DEFAULT_MODEL and len(report["model_sha256"]) == 64
    assert "[3/3]" in res.stderr


def test_the_default_model_is_derived_byte_for_byte(model: Path, tmp_path: Path) -> None:
    """The install step derives the default Q4_0 GGUF from the wheel's Q4_1 with
    llama.cpp's quantizer: the same bytes as the manifest's, and a manifest
    whose sha256 the quantizer does not give is refused, leaving nothing."""
    from tools.ml import install_llm

    man = install_llm.Manifest.load(MODELS_DIR / f"{install_llm.DEFAULT_MODEL}.json")
    source = MODELS_DIR / f"{man.derived_from}.gguf"
    out = install_llm._derive(source, tmp_path / man.file, man)
    assert out == tmp_path / man.file and out.stat().st_size == man.size
    wrong = install_llm.Manifest(
        "w", "w.gguf", "00" * 32, man.size, derived_from=man.derived_from, quantize="Q4_0"
    )
    with pytest.raises(install_llm.InstallError, match="other bytes"):
        install_llm._derive(source, tmp_path / "w.gguf", wrong)
    assert sorted(p.name for p in tmp_path.iterdir()) == [man.file]


def test_a_primed_eval_evaluates_the_static_prompt_first(model: Path) -> None:
    """`primed`: each scenario's actions and policy go through the model first,
    untimed, and the decisions are still valid and scored."""
    from tools.ml import eval_decisions as ev

    cases = load_scenarios(DEFAULT_SCENARIOS)[:3]
    report = ev.evaluate(model, cases, threads=1, primed=True)
    assert report["primed"] is True and report["n"] == 3 and report["invalid_rate"] == 0.0
    assert 0 < report["prime_ms_p50"] <= report["prime_ms_p95"]
    cold = ev.evaluate(model, cases, threads=1)
    assert cold["primed"] is False and "prime_ms_p50" not in cold

    async def run() -> None:
        async with LlmWorker(model, threads=1) as w:
            s = cases[0]
            assert await w.prime(s.capabilities, s.policy) > 0
            r = await w.decide(s.capabilities, s.facts, s.policy, deadline_ms=120_000)
            assert r.outcome is Outcome.OK and r.decision is not None

    asyncio.run(run())


def test_greedy_decoding_checks_the_grammar_as_llama_cpp_does(model: Path) -> None:
    """The worker's decoding (``_greedy``: the highest logit checked alone
    against the grammar, the whole vocabulary masked only when it is refused)
    writes, token for token, what llama-cpp-python's own grammar sampling
    writes at temperature 0, and both of its paths run."""
    import llama_cpp

    from hub.decide import facts as f
    from hub.decide.llm import _GrammarSampler, _greedy, _renderer

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=2048, n_threads=2, verbose=False)
    render = _renderer(llm)
    scenarios = load_scenarios(DEFAULT_SCENARIOS)[:6]
    samplers: dict[str, _GrammarSampler] = {}
    for s in scenarios:
        caps = model_capabilities(s.capabilities)
        gbnf = grammar.gbnf(caps)
        prompt = render(f.build_messages(caps, s.facts, s.policy))
        # Each from an empty cache: the prompt then runs in the same batches
        # for both (other batch sizes round differently, enough to turn a near tie).
        llm.reset()
        theirs = llm.create_completion(
            prompt=prompt,
            grammar=llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False),
            max_tokens=grammar.max_chars(caps) + 1,
            temperature=0.0,
            repeat_penalty=1.0,
        )["choices"][0]["text"]
        sampler = samplers.setdefault(gbnf, _GrammarSampler(llama_cpp, llm, gbnf))
        llm.reset()
        ours, n = _greedy(llm, sampler, prompt, grammar.max_chars(caps) + 1, lambda: False)
        assert ours == theirs, s.id
        assert n > 0 and grammar.parse(ours, caps).action
    checked = sum(x.checked for x in samplers.values())
    assert checked > sum(x.masked for x in samplers.values()) > 0
    for x in samplers.values():
        x.close()
    llm.close()


def test_the_grammars_admit_every_reading_and_answer_the_data_writes(model: Path) -> None:
    """Token by token, the reading grammar admits the reading of every
    generated policy (both splits, every device kind) and the decision
    grammar the answer, up to the end of the turn: what the adapter learns to
    write, the hub lets it write."""
    import llama_cpp
    import numpy as np

    from hub.decide.llm import _GrammarSampler
    from tools.ml.finetune.data import answer_text
    from tools.ml.policy import dataset

    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    samplers: dict[str, _GrammarSampler] = {}
    logits = np.zeros(llm.n_vocab(), dtype=np.float32)

    def admits(gbnf: str, text: str) -> None:
        sampler = samplers.setdefault(gbnf, _GrammarSampler(llama_cpp, llm, gbnf))
        sampler.reset()
        for tok in [*llm.tokenize(text.encode(), add_bos=False, special=False), llm.token_eos()]:
            logits[:] = 0.0
            logits[tok] = 1.0
            got = sampler.choose(logits)  # the token itself when the grammar allows it
            assert got == tok, (text, llm.detokenize([tok]))

    try:
        seen: set[str] = set()
        for split in ("train", "test"):
            for i in range(120):
                ex = dataset.example(5, split, i)
                d = dataset.to_json(ex)
                caps = model_capabilities(ex.kind.caps)
                admits(grammar.reading_gbnf(caps), d["messages"][2]["content"])
                admits(grammar.gbnf(caps), answer_text(d["answer"]))
                seen.add(d["meta"]["layout"])
        assert len(seen) == 14  # every layout of both splits
        # Not admitted: a rule out of order, and the request's value in a rule
        # that needs no request.
        caps = model_capabilities(dataset.example(5, "train", 0).kind.caps)
        for text in ("2: power=over -> none {}\nDefault -> none {}",):
            with pytest.raises(AssertionError):
                admits(grammar.reading_gbnf(caps), text)
        fan = (m.Capability("fan.speed", (m.ParamSpec("level", m.ParamKind.Int, 0, 5),)),)
        asks = '1: request=fan-speed ok -> fan.speed {"level": request}\nDefault -> none {}'
        admits(grammar.reading_gbnf(fan), asks)
        for text in (
            '1: power=over -> fan.speed {"level": request}\nDefault -> none {}',
            '1: power=over, unless request=fan-speed ok -> fan.speed {"level": request}\n'
            "Default -> none {}",
            'Default -> fan.speed {"level": request}',
        ):
            with pytest.raises(AssertionError):
                admits(grammar.reading_gbnf(fan), text)
    finally:
        for x in samplers.values():
            x.close()
        llm.close()
