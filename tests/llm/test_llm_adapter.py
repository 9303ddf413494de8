"""The LLM worker with a LoRA adapter on the real llama.cpp: the provenance
names the base and the adapter; an adapter whose bytes are not the
registered ones is refused before it is loaded. The trust gate binds a
report to base, adapter and prompt version; the registry's checks of kind lora."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from hub.core.config import DecisionsConfig
from hub.decide import engine as eng
from hub.decide import facts as f
from hub.decide import reading as rd
from hub.decide import registry as reg
from hub.decide.llm import (
    MODELS_DIR,
    LlmWorker,
    Mode,
    ModelError,
    Outcome,
    model_capabilities,
    trust,
)
from protocol.profiles import PLUG_CAPABILITIES
from tests.llm.adapters import base_model, base_sha256, write_adapter
from tools.cli import models as cli_models

BASE = "ab" * 32
ADAPTER = "cd" * 32


def report(**over: Any) -> dict[str, Any]:
    r = {
        "accuracy": 0.95,
        "n": 69,
        "model_sha256": BASE,
        "prompt_version": f.ADAPTER_PROMPT_VERSION,
    }
    return {**r, "adapter_sha256": ADAPTER, **over}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("rep", "adapter", "mode", "why"),
    [
        (report(), ADAPTER, Mode.ACTUATE, "reaches"),
        (report(adapter_sha256="ef" * 32), ADAPTER, Mode.ADVISORY, "for another adapter"),
        (report(adapter_sha256=None), ADAPTER, Mode.ADVISORY, "for the base model alone"),
        (report(), "", Mode.ADVISORY, "for an adapter, the base model runs alone"),
        (report(model_sha256="ef" * 32), ADAPTER, Mode.ADVISORY, "another model"),
        (report(prompt_version="decide-v0"), ADAPTER, Mode.ADVISORY, "another prompt"),
        # An adapter reads the policy, the base alone decides with worked examples.
        (report(prompt_version=f.PROMPT_VERSION), ADAPTER, Mode.ADVISORY, "another prompt"),
        (report(adapter_sha256=None), "", Mode.ADVISORY, "another prompt"),
        (
            report(adapter_sha256=None, prompt_version=f.PROMPT_VERSION),
            "",
            Mode.ACTUATE,
            "reaches",
        ),
    ],
)
def test_the_report_must_be_for_this_base_adapter_and_prompt(
    rep: dict[str, Any], adapter: str, mode: Mode, why: str
) -> None:
    t = trust(rep, model_sha256=BASE, adapter_sha256=adapter)
    assert t.mode is mode and why in t.reason, t


def _version(name: str, kind: str, inner: dict[str, Any]) -> Any:
    signed = reg.signed_manifest(name, "1", kind, b"GGUF-bytes", inner)
    return reg.version_record(signed, b"\0" * 64, "kid")


@pytest.mark.unit
def test_registry_names_kinds_and_bases_of_adapters() -> None:
    good = _version(reg.LLM_ADAPTER, reg.LORA, {"base": {"sha256": BASE}})
    reg.check_kind(good)
    assert reg.base_sha256(good) == BASE
    assert reg.base_sha256(_version(reg.LLM_ADAPTER, reg.LORA, {"base_sha256": BASE})) == BASE
    with pytest.raises(reg.ModelRefused, match="no_base"):
        reg.base_sha256(_version(reg.LLM_ADAPTER, reg.LORA, {}))
    for mv in (
        _version("my-lora", reg.LORA, {}),
        _version(reg.LLM_ADAPTER, "gguf", {}),
    ):
        with pytest.raises(reg.ModelRefused, match="bad_name"):
            reg.check_kind(mv)
    with pytest.raises(reg.ModelRefused, match="register it as kind lora"):
        reg.check_kind(_version("base-lora", "gguf", {"kind": "lora-adapter"}))
    # aiot models push: a fine-tuned adapter's manifest makes it kind lora
    gguf = Path("adapter.gguf")
    assert cli_models._kind(gguf, {"kind": "lora-adapter"}, None) == reg.LORA
    assert cli_models._kind(gguf, {}, None) == "gguf"
    assert cli_models._kind(gguf, {}, "lora") == reg.LORA


@pytest.mark.llm
def test_worker_runs_the_adapter_and_refuses_other_bytes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = base_model()
    path, man = write_adapter(tmp_path / "a", base, seed=1, layers=2)
    facts = [f.power_fact(over_for_s=12), f.relay_fact(True)]

    async def run() -> None:
        async with LlmWorker(base, lora_path=path, lora_sha256=man["sha256"]) as w:
            r = await w.decide(PLUG_CAPABILITIES, facts, "Keep under the limit.", deadline_ms=1)
            assert r.provenance.adapter_sha256 == man["sha256"]
            assert r.provenance.model_sha256 == base_sha256(base)
            assert r.provenance.to_json()["adapter_sha256"] == man["sha256"]
        other = LlmWorker(base, lora_path=path, lora_sha256="00" * 32)
        with pytest.raises(ModelError, match="adapter sha256"):
            await other.start()
        other.close()

    asyncio.run(run())
    assert json.loads((tmp_path / "a" / "adapter.json").read_text())["kind"] == "lora-adapter"
    # llama.cpp's own lines (one per projection at an adapter's load) stay
    # out of the hub's log.
    assert "llama_adapter_lora" not in capfd.readouterr().err


@pytest.mark.llm
def test_an_adapter_reads_each_policy_once_and_decides_with_its_reading() -> None:
    base = base_model()
    found = reg.shipped_adapter(MODELS_DIR)
    assert found is not None and found[0].path is not None, "models/llm-adapter/ ships one"
    adapter = found[0]
    policy = "If power is over the limit, switch the relay off. Otherwise, do nothing."
    other = "Switch the relay off between 22:00 and 06:00. Otherwise, do nothing."
    facts = [f.power_fact(over_for_s=12), f.relay_fact(True)]
    caps = model_capabilities(PLUG_CAPABILITIES)

    async def run() -> None:
        async with LlmWorker(base, lora_path=adapter.path, lora_sha256=adapter.sha256) as w:
            assert w.reading(PLUG_CAPABILITIES, policy) is None
            # The first decision finds the policy unread: it falls back at its
            # deadline while the reading goes on.
            r = await w.decide(PLUG_CAPABILITIES, facts, policy, deadline_ms=1)
            assert r.outcome is Outcome.DEADLINE and "being read" in r.provenance.detail
            r = await w.decide(PLUG_CAPABILITIES, facts, policy, deadline_ms=120_000)
            said = w.reading(PLUG_CAPABILITIES, policy)
            assert said is not None and r.outcome is Outcome.OK, (said, r.provenance.detail)
            assert r.provenance.reading == said
            assert r.provenance.prompt_sha256 == f.prompt_sha256(f.reading_messages(caps, policy))
            # The decision is the reading checked against the facts: no model call.
            assert r.provenance.completion_tokens == 0
            assert r.decision == rd.decide(rd.parse(said), facts, caps).decision
            assert r.decision is not None and r.decision.action == "relay.set", said
            assert r.decision.params_dict() == {"on": False}, said
            # Kept: the next decision for the policy does not read it again.
            r2 = await w.decide(
                PLUG_CAPABILITIES, [f.power_fact(), f.relay_fact(True)], policy, deadline_ms=1
            )
            assert w.reading(PLUG_CAPABILITIES, policy) is said
            assert r2.outcome is Outcome.OK and r2.decision is not None
            assert r2.decision.action == "none", said
            # Priming reads a policy too.
            assert w.reading(PLUG_CAPABILITIES, other) is None
            await w.prime(PLUG_CAPABILITIES, other)
            assert w.reading(PLUG_CAPABILITIES, other) is not None

    asyncio.run(run())


@pytest.mark.llm
def test_the_shipped_adapter_reads_the_default_policy_right() -> None:
    """A hub with no policy of its own runs ``[decisions] policy``: the shipped
    adapter's reading of it keeps a critical device on, switches a plug over
    its limit off and does nothing otherwise (near the limit too)."""
    found = reg.shipped_adapter(MODELS_DIR)
    assert found is not None and found[0].path is not None, "models/llm-adapter/ ships one"
    adapter = found[0]
    policy = DecisionsConfig().policy
    caps = model_capabilities(PLUG_CAPABILITIES)
    on = f.relay_fact(True)
    cases = [
        ([f.power_fact(over_for_s=30), on], "relay.set"),
        ([f.power_fact(over_for_s=30), on, f.critical_fact()], "none"),
        ([f.power_fact(near=True), on], "none"),
        ([f.power_fact(), on], "none"),
        ([f.power_fact(), on, f.anomaly_fact(0.95)], "none"),
    ]

    async def run() -> str:
        async with LlmWorker(base_model(), lora_path=adapter.path) as w:
            await w.prime(PLUG_CAPABILITIES, policy)
            said = w.reading(PLUG_CAPABILITIES, policy)
            assert said is not None
            return said

    said = asyncio.run(run())
    for facts, action in cases:
        got = rd.decide(rd.parse(said), facts, caps).decision
        assert got is not None and got.action == action, (facts, said)


@pytest.mark.llm
def test_a_reading_that_fails_falls_back_and_is_not_retried_at_once(tmp_path: Path) -> None:
    base = base_model()
    path, man = write_adapter(tmp_path / "a", base, seed=4, layers=2)
    policy = "Switch the relay off when power is over the limit."

    async def run() -> None:
        # A context too small for the request to read the policy: the model
        # process refuses the prompt.
        async with LlmWorker(base, lora_path=path, lora_sha256=man["sha256"], n_ctx=64) as w:
            r = await w.decide(PLUG_CAPABILITIES, [f.relay_fact(True)], policy, deadline_ms=60_000)
            assert r.decision is None and r.outcome is Outcome.ERROR
            assert "reading the policy" in r.provenance.detail
            assert "does not fit the context" in r.provenance.detail
            assert w.reading(PLUG_CAPABILITIES, policy) is None
            # Within READ_RETRY_S the same failure is the answer, without
            # asking the model again.
            sent: list[Any] = []
            run_one = w._run

            async def counted(req: Any) -> Any:
                sent.append(req)
                return await run_one(req)

            w._run = counted  # type: ignore[method-assign]
            again = await w.decide(PLUG_CAPABILITIES, [f.relay_fact(False)], policy)
            assert again.outcome is Outcome.ERROR
            assert again.provenance.detail == r.provenance.detail
            assert sent == []

    asyncio.run(run())


@pytest.mark.llm
def test_eval_puts_the_base_and_the_adapter_side_by_side(tmp_path: Path) -> None:
    """`aiot eval decisions --adapter` on held-out generated lines: both
    reports on the same scenarios, by category and by policy shape, the
    adapter's report naming the adapter's sha256 (the trust gate's key)."""
    from typer.testing import CliRunner

    from tools.cli import app

    base = base_model()
    path, man = write_adapter(tmp_path / "a", base, seed=2, layers=2)
    data = tmp_path / "data"
    res = CliRunner().invoke(
        app, ["models", "policy-data", "--out", str(data), "--seed", "3", "--train", "4",
              "--test", "4"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    test = data / "test.jsonl"
    lines = test.read_text().splitlines()[:2]
    shapes = {json.loads(line)["meta"]["shape"] for line in lines}
    res = CliRunner().invoke(
        app,
        ["eval", "decisions", "--scenarios", str(test), "--limit", "2", "--adapter", str(path),
         "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 2 and set(out["by_shape"]) == shapes
    assert out["base"]["n"] == out["adapter"]["n"] == 2
    assert out["accuracy"] == {
        "base": out["base"]["accuracy"],
        "adapter": out["adapter"]["accuracy"],
    }
    assert out["adapter"]["adapter_sha256"] == man["sha256"] and "adapter_sha256" not in out["base"]
    assert out["base"]["model_sha256"] == out["adapter"]["model_sha256"] == base_sha256(base)
    assert out["base"]["prompt_version"] == f.PROMPT_VERSION
    assert out["adapter"]["prompt_version"] == f.ADAPTER_PROMPT_VERSION
    for pair in out["by_shape"].values():
        assert set(pair) == {"base", "adapter"}
    res = CliRunner().invoke(app, ["eval", "decisions", "--adapter", str(tmp_path / "none.gguf")])
    assert res.exit_code == 2 and "no such file" in res.stderr


@pytest.mark.llm
def test_a_new_worker_with_an_adapter_reads_the_recent_policies_before_it_takes_over() -> None:
    found = reg.shipped_adapter(MODELS_DIR)
    assert found is not None, "models/llm-adapter/ ships one"
    adapter = found[0]
    tier = eng.llm_tier(DecisionsConfig(), MODELS_DIR)
    assert tier is not None
    policies = [
        "If power is over the limit, switch the relay off. Otherwise, do nothing.",
        "Switch the relay off between 22:00 and 06:00. Otherwise, do nothing.",
        "If the plug is critical, do nothing. Otherwise, switch the relay off.",
    ]
    for p in [policies[0], *policies]:  # seen twice: remembered once, as the newest
        tier._remember(PLUG_CAPABILITIES, p)
    with_adapter = tier.plan(adapter, base_model(), adapter.path)
    alone = tier.plan(None, None)

    async def run() -> None:
        w = await tier._spawn(with_adapter)
        try:
            await tier._prime(w, with_adapter)
            # Every recent policy is read before the worker answers.
            assert all(w.reading(PLUG_CAPABILITIES, p) is not None for p in policies)
            assert tier.primed == 1 and tier.primed_policies == 3
        finally:
            await w.aclose()
        # The base alone keeps one prompt's prefix: it evaluates the newest only.
        b = await tier._spawn(alone)
        try:
            await tier._prime(b, alone)
            assert tier.primed == 2 and tier.primed_policies == 4
        finally:
            await b.aclose()

    asyncio.run(run())
