"""Generated policy data: the schema, the exact run-time prompt, the splits
(disjoint layouts, exception styles, wordings and shapes), the balance of
actions, determinism for a seed, and `aiot models policy-data`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hub.decide import facts as hf
from hub.decide import grammar
from hub.decide.llm import model_capabilities
from tools.cli import app
from tools.ml.eval_decisions import ScenarioError, load_scenarios
from tools.ml.policy import dataset
from tools.ml.policy import grammar as pg
from tools.ml.policy import model as pm
from tools.ml.policy.codec import policy_from_json, world_from_json
from tools.ml.policy.facts import clock
from tools.ml.policy.generate import RULE_COUNTS, TRAIN_RULE_COUNTS
from tools.ml.policy.lexicon import COMPOSED, PHRASES, TRAIN_EXTRA, indices, wordings

pytestmark = pytest.mark.unit

N_TRAIN, N_TEST = 600, 200


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy-data")
    dataset.write(out, seed=11, counts={"train": N_TRAIN, "test": N_TEST})
    return out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_line_is_a_scenario_with_the_hubs_prompt_and_a_checked_label(data: Path) -> None:
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        path = data / f"{split}.jsonl"
        scenarios = load_scenarios(path)  # what `aiot eval decisions --scenarios` reads
        assert len(scenarios) == n
        for d, s in zip(lines(path), scenarios, strict=True):
            meta = d["meta"]
            assert meta["schema"] == dataset.SCHEMA and meta["generator"] == dataset.GENERATOR
            assert meta["prompt_version"] == hf.ADAPTER_PROMPT_VERSION and meta["split"] == split
            caps = model_capabilities(s.capabilities)
            # What an adapter learns: the hub's request to read the policy (the
            # policy in the system message), then the reading as the policy states it.
            stated = policy_from_json(meta["stated"])
            reading = dataset.reading(stated, s.capabilities)
            assert d["messages"] == hf.reading_conversation(caps, s.policy, reading)
            assert d["messages"][:2] == hf.reading_messages(caps, s.policy)
            assert d["messages"][0]["content"].endswith(f"Policy: {s.policy}")
            assert len(reading.splitlines()) == len(stated.rules) + 1
            # The label, recomputed from the structure and the world the line records.
            world = world_from_json(meta["world"])
            for key in ("structure", "stated"):
                got = pm.decide(policy_from_json(meta[key]), world)
                assert (got.action, got.params, got.rule) == (
                    s.expect_action,
                    s.expect_params or {},
                    meta["rule"],
                )
            answer = grammar.validate(d["answer"], caps)
            assert answer.action == s.expect_action
            assert answer.params_dict() == (s.expect_params or {})
            assert 0 < len(answer.reason) <= grammar.REASON_MAX


def test_the_splits_share_no_layout_exception_style_wording_shape_or_policy(
    data: Path,
) -> None:
    seen: dict[str, dict[str, set[str]]] = {}
    for split in ("train", "test"):
        s = seen[split] = {"layout": set(), "exception": set(), "wording": set(), "shape": set()}
        s["policy"] = set()
        for d in lines(data / f"{split}.jsonl"):
            meta = d["meta"]
            s["layout"].add(meta["layout"])
            s["exception"].add(meta["exception"])
            s["wording"].update(meta["wording"])
            s["shape"].add(meta["shape"])
            s["policy"].add(d["policy"])
    for key in ("layout", "exception", "wording", "shape", "policy"):
        shared = seen["train"][key] & seen["test"][key] - {""}
        assert not shared, f"{key} in both splits: {sorted(shared)[:5]}"
    assert len(seen["train"]["layout"]) == 12 and len(seen["test"]["layout"]) == 2
    assert {"unless", "and_not"} <= seen["train"]["exception"]
    assert {"except_when", "but_not_if"} <= seen["test"]["exception"]
    # Every phrase key has wordings for both splits, none in both.
    for key in PHRASES:
        train, test = set(indices(key, "train")), set(indices(key, "test"))
        assert train and test and not train & test, key
    # Nor does any test wording's text come back among the training wordings.
    texts = {
        s: {wordings(k)[i].lower() for k in PHRASES for i in indices(k, s)} for s in dataset.SPLITS
    }
    assert not texts["train"] & texts["test"], sorted(texts["train"] & texts["test"])[:5]


def test_composed_wordings_are_training_only_and_no_test_phrasing_reordered() -> None:
    test = {wordings(k)[i] for k in PHRASES for i in indices(k, "test")}
    owner: dict[str, str] = {}
    for key in PHRASES:
        # No training wording of a key, written or composed, reorders one of its test wordings.
        held = {pg._norm(wordings(key)[i]) for i in indices(key, "test")}
        train = [wordings(key)[i] for i in indices(key, "train")]
        same = [t for t in train if pg._norm(t) in held]
        assert not same, (key, same)
        composed = COMPOSED[key]
        assert composed, f"{key}: no composed wordings"
        ids = set(indices(key, "train"))
        start = len(PHRASES[key]) + len(TRAIN_EXTRA.get(key, ()))
        assert set(range(start, start + len(composed))) <= ids
        for text in composed:
            # Neither a test wording nor one in another order or with other articles.
            assert pg._norm(text) not in {pg._norm(t) for t in test}, (key, text)
            assert owner.setdefault(text.lower(), key) == key, (text, owner[text.lower()], key)
            # Every placeholder is one that the key's renderer fills in.
            text.format(dev="plug", a="07:00", b="09:00", v=5, what="power limit")
    # The filter works: a reordered test wording is dropped, a new one kept.
    kept = pg.composed(["the relay of the {dev} is open"], [])
    assert "the {dev}'s relay is open" not in kept["relay.off+"]
    assert "its relay is released" in kept["relay.off+"]


def test_training_picks_mix_written_and_composed_wordings(data: Path) -> None:
    composed = {f"{k}#{i}" for k in PHRASES for i in indices(k, "train")
                if i >= len(PHRASES[k]) + len(TRAIN_EXTRA.get(k, ()))}  # fmt: skip
    used = [w for d in lines(data / "train.jsonl") for w in d["meta"]["wording"]]
    share = sum(w in composed for w in used) / len(used)
    assert 0.35 < share < 0.65, share


def test_actions_are_balanced_and_the_manifest_says_so(data: Path) -> None:
    man = json.loads((data / "manifest.json").read_text())
    assert man["seed"] == 11 and man["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert man["schema"] == dataset.SCHEMA and man["generator"] == dataset.GENERATOR
    assert man["layouts"] == {"train": ["action_first", "bullets", "chain", "default_bullets",
                                        "default_but", "default_lead", "default_semicolons",
                                        "else_if", "labelled", "lettered", "numbered",
                                        "semicolons"],
                              "test": ["default_first", "ordinal"]}  # fmt: skip
    for split in ("train", "test"):
        actions = [d["expect_action"] for d in lines(data / f"{split}.jsonl")]
        summary = man["splits"][split]
        assert summary["majority_rate"] == dataset.majority_rate(actions)
        assert summary["majority_rate"] < 0.35  # a constant answer scores low
        assert len(summary["actions"]) >= 8  # actions beyond the plug's too
        assert {"notify", "fan.speed", "relay.set", "none"} <= set(actions)
        # The training split leans to long policies and goes one rule beyond
        # the test split's five.
        counts = {int(k): v for k, v in summary["rule_counts"].items()}
        assert set(counts) == set(TRAIN_RULE_COUNTS if split == "train" else RULE_COUNTS)
        long = sum(v for k, v in counts.items() if k >= 4) / sum(counts.values())
        assert (long > 0.5) if split == "train" else (long < 0.5), (split, counts)


def test_the_same_seed_writes_the_same_files_and_a_prefix_does_not_depend_on_n(
    tmp_path: Path, data: Path
) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    dataset.write(a, seed=11, counts={"train": 50, "test": 20})
    dataset.write(b, seed=11, counts={"train": 50, "test": 20})
    dataset.write(c, seed=12, counts={"train": 50, "test": 20})
    for name in ("train.jsonl", "test.jsonl", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    big = (data / "test.jsonl").read_text().splitlines()
    assert (a / "test.jsonl").read_text().splitlines() == big[:20]


def test_the_loader_refuses_a_prompt_or_answer_that_does_not_match(
    tmp_path: Path, data: Path
) -> None:
    d = lines(data / "test.jsonl")[0]
    stale = dict(d, messages=[*d["messages"][:-1], {"role": "user", "content": "Policy: x"}])
    wrong = dict(d, answer={**d["answer"], "action": "none", "params": {}})
    if d["expect_action"] == "none":
        wrong = dict(d, answer={"reason": "r", "action": "nope", "params": {}})
    for bad, why in ((stale, "not the reading the hub asks"), (wrong, "answer")):
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ScenarioError, match=why):
            load_scenarios(path)


def test_the_policy_data_command(tmp_path: Path) -> None:
    out = tmp_path / "data"
    res = CliRunner().invoke(
        app, ["models", "policy-data", "--out", str(out), "--seed", "5", "--train", "30",
              "--test", "10"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert str(out / "manifest.json") in res.stdout
    assert "test: 10/10 examples" in res.stderr and "majority rate" in res.stderr
    assert len((out / "train.jsonl").read_text().splitlines()) == 30
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    afile = tmp_path / "file"
    afile.write_text("")
    res = CliRunner().invoke(app, ["models", "policy-data", "--out", str(afile)])
    assert res.exit_code == 2 and "not a directory" in res.stderr


def test_the_shipped_held_out_set_is_the_test_split_the_command_writes(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "models" / "eval" / "heldout.jsonl"
    out = tmp_path / "heldout.jsonl"
    res = CliRunner().invoke(
        app, ["models", "policy-data", "--scenarios", str(out), "--seed", "0", "--test", "300"]
    )
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == shipped.read_bytes()  # rebuilt byte for byte
    scenarios = load_scenarios(out)
    assert len(scenarios) == 300
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(not set(dataset.TRAINING_KEYS) & set(d) for d in lines)
    assert all(d["meta"]["split"] == "test" and d["meta"]["shape"] for d in lines)
    # The lines are the test split's, whatever the training split's size.
    full = tmp_path / "data"
    dataset.write(full, seed=0, counts={"train": 0, "test": 3})
    for a, b in zip(full.joinpath("test.jsonl").read_text().splitlines(), lines, strict=False):
        d = json.loads(a)
        for key in dataset.TRAINING_KEYS:
            d.pop(key)
        assert d == b


def test_the_reason_traces_the_rules_in_order_up_to_the_one_that_applies() -> None:
    home, peak = pm.Lit(pm.Occupied()), pm.Lit(pm.TariffIs("peak"))
    night = pm.Lit(pm.Window(22 * 60, 6 * 60))
    off = pm.ActionSpec("relay.set", (("on", False),))
    policy = pm.Policy(
        (
            pm.Rule((night,), off),
            pm.Rule((pm.Lit(pm.Occupied(), False), pm.Lit(pm.Power("over"))), off, (peak,)),
            pm.Rule((home,), pm.ActionSpec("notify", (("urgent", True),))),
        )
    )
    world = pm.World(power="over", occupied=False, minute=12 * 60, tariff="peak")
    # Rule 1 fails on the time; rule 2's conditions hold but its exception
    # too; rule 3 fails ("home=yes no"); so the default.
    assert dataset.trace(policy, world) == (
        "1: time in 22:00-06:00 (12:00) no. 2: not home=yes yes, power=over yes, "
        "unless tariff=peak yes. 3: home=yes no. Default."
    )
    world = pm.World(power="over", occupied=False, minute=12 * 60, tariff="off-peak")
    assert dataset.trace(policy, world) == (
        "1: time in 22:00-06:00 (12:00) no. 2: not home=yes yes, power=over yes, "
        "unless tariff=peak no. Rule 2."
    )


def test_every_trace_ends_at_the_rule_the_interpreter_chose(data: Path) -> None:
    for split in ("train", "test"):
        for d in lines(data / f"{split}.jsonl"):
            rule = d["meta"]["rule"]
            # The conclusion names the rule; the action follows, copied from
            # the reading's line for that rule.
            stated = d["meta"]["stated"]
            end = "Default." if rule == -1 else f"Rule {rule + 1}."
            reason = d["answer"]["reason"]
            assert reason.endswith(" " + end), (reason, rule)
            assert len(stated["rules"]) >= rule + 1
            line = d["messages"][2]["content"].splitlines()[rule]
            action = d["answer"]["action"]
            assert line.split(" -> ")[1].startswith(action + " {"), (line, action)


def test_a_condition_holds_exactly_when_its_key_is_among_the_facts_keys() -> None:
    # The trace writes each condition as the key the prompt puts on the fact
    # it needs: the check is a match, and the match is the interpreter's answer.
    seen: set[str] = set()
    for split in ("train", "test"):
        for i in range(300):
            ex = dataset.example(3, split, i)
            keys = hf.fact_keys(list(ex.facts))
            assert None not in keys, ex.facts
            for rule in ex.policy.rules:
                for lit in (*rule.when, *rule.unless):
                    k = dataset.key(lit, ex.world)
                    want = k.removeprefix("not ")
                    seen.add(want.split("=")[0].split(" ")[0])
                    if want.startswith("time in "):
                        assert want.endswith(
                            f"({clock(ex.world.minute)})"
                            if ex.world.minute is not None
                            else "(none)"
                        ), k
                        continue
                    assert ((want in keys) == lit.positive) == lit.holds(ex.world), (k, ex.facts)
    assert seen == set(hf.FACT_LABELS)
    assert hf.fact_keys(["the tank is full"]) == [None]
    # A request's words hold the value asked for.
    assert hf.request_value("operator asks to set the fan speed to 3") == 3
    assert hf.request_value("operator asks to set the heater to 21.5 degrees") == 21.5
    assert hf.request_value("operator asks to set the limit to 1200 W") == 1200
    assert hf.request_value("the tank is full") is None


def test_a_request_is_keyed_by_what_it_sets_and_whether_the_device_accepts_it() -> None:
    asks = "operator asks to set the charging current to 63 A"
    assert hf.fact_keys([asks, "relay is on"]) == ["request=charging-current ok", "relay=on"]
    assert hf.fact_keys([hf.REQUEST_TOO_HIGH, asks]) == ["request=charging-current too-high"] * 2
    assert hf.fact_keys(["operator asks to open the window"]) == [None]


def test_a_group_shares_one_policy_and_wording_with_a_world_for_each_member() -> None:
    # policy-data --group 4: runs of four lines with one device, policy and
    # words, each with its own world; the prompts differ only in the facts.
    lines = [dataset.to_json(dataset.example(7, "train", i, group=4)) for i in range(40)]
    for g in range(10):
        members = lines[4 * g : 4 * g + 4]
        assert len({json.dumps(m["messages"][:-1]) for m in members}) == 1
        assert len({m["policy"] for m in members}) == 1
        assert len({json.dumps(m["meta"]["world"], sort_keys=True) for m in members}) == 4
        for m in members:
            rule = m["meta"]["rule"]
            assert m["answer"]["reason"].endswith("Default." if rule == -1 else f"Rule {rule + 1}.")
    assert len({m["policy"] for m in lines}) == 10
    # Rules of their own where the policy has enough: most groups end at
    # three or four different rules.
    varied = [len({m["meta"]["rule"] for m in lines[4 * g : 4 * g + 4]}) for g in range(10)]
    assert sum(v >= 3 for v in varied) >= 6, varied
    # The same seed and index give the same line; group 1 is the ungrouped split.
    assert dataset.to_json(dataset.example(7, "train", 5, group=4)) == lines[5]
    assert dataset.to_json(dataset.example(7, "train", 5, group=1)) == dataset.to_json(
        dataset.example(7, "train", 5)
    )


def test_the_manifest_records_the_group_and_the_test_split_has_one_line_per_policy(
    tmp_path: Path,
) -> None:
    man = dataset.write(tmp_path, seed=2, counts={"train": 8, "test": 8}, group=4)
    assert man["group"] == 4
    train = lines(tmp_path / "train.jsonl")
    test = lines(tmp_path / "test.jsonl")
    assert len({d["policy"] for d in train}) == 2
    assert len({d["policy"] for d in test}) == 8
