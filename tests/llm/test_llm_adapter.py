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

from hub.decide import facts as f
from hub.decide import registry as reg
from hub.decide.llm import LlmWorker, Mode, ModelError, trust
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
        # An adapter runs the compact prompt, the base alone the one with examples.
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
