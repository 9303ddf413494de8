"""The facts the LLM tier states about a device when a rule fires: power and
the rule's grace period, relay, critical, the local time and the tariff period,
each in the sentences the policy data trains on (hub/decide/facts.py)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hub.core import tariff as t
from hub.core.config import DecisionsConfig
from hub.core.paths import SHIPPED_MODELS
from hub.decide import engine as eng
from hub.decide import llm
from hub.decide import rules as r
from hub.decide.guard import Guard
from hub.state import entries as e
from protocol.profiles import PLUG_CAPABILITIES
from tests.unit.test_tariff import GOOD, TOU, load
from tools.ml.policy import facts as data_facts

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not llm.llama_cpp_available(), reason="needs llama-cpp-python: make test"),
]

BERLIN = ZoneInfo("Europe/Berlin")
RULES = {
    "rule": [
        {"id": "over", "devices": ["*"], "sensor": "power_w", "above": 1, "for_s": 20,
         "action": "relay.set", "params": {"on": False}},
        {"id": "at-once", "devices": ["*"], "sensor": "power_w", "above": 1, "action": "alert"},
    ]
}  # fmt: skip


def _decision(rule_id: str, ts: datetime, held_s: float) -> r.Decision:
    ms = int(ts.timestamp() * 1000)
    return r.Decision(
        rule_id, "plug-1", None, (), (), ms, False, r.POWER_W, 2500.0, 2000.0,
        ms - int(held_s * 1000),
    )  # fmt: skip


def _tier_and_engine() -> tuple[eng.LlmTier, eng.DecisionEngine]:
    tier = eng.llm_tier(DecisionsConfig(), SHIPPED_MODELS)
    assert tier is not None, llm.INSTALL_HINT
    ruleset = r.parse_rules_file(RULES, "hub.toml")
    # The engine reads only its rules and guard here: no Raft node is needed.
    return tier, eng.DecisionEngine(None, ruleset, Guard(), DecisionsConfig())  # type: ignore[arg-type]


def test_the_tier_states_grace_time_and_tariff_in_the_training_data_s_words(
    tmp_path: Path,
) -> None:
    tier, engine = _tier_and_engine()
    plug = e.Device("plug-1", b"k" * 32, PLUG_CAPABILITIES, 2000.0)
    tier.tariff = load(tmp_path, GOOD + TOU).tariff  # 06:00-22:00 is the dear period
    facts = tier.facts(
        engine, plug, _decision("over", datetime(2025, 1, 15, 7, 5, tzinfo=BERLIN), 30)
    )
    assert facts == [
        "power is over the limit for 30 s",
        data_facts.LONGER_THAN_GRACE,
        "relay is on",
        data_facts.time_fact(7 * 60 + 5),
        data_facts.tariff_fact("peak"),
    ]
    assert facts[3] == "the local time is 07:05"
    night = tier.facts(
        engine, plug, _decision("over", datetime(2025, 1, 15, 23, 0, tzinfo=BERLIN), 5)
    )
    assert data_facts.WITHIN_GRACE in night and "the tariff period is off-peak" in night
    # A rule without a grace period states none; no time-of-use tariff, no
    # period, and the time is UTC's.
    tier.tariff = t.NONE
    plain = tier.facts(
        engine, plug, _decision("at-once", datetime(2025, 1, 15, 7, 5, tzinfo=BERLIN), 3)
    )
    assert plain == ["power is over the limit for 3 s", "relay is on", "the local time is 06:05"]


def test_a_long_policy_is_cut_in_the_record_never_the_json() -> None:
    import json

    record = {"facts": ["relay is on"], "policy": "⚡" * 4000 + "é" * 10000, "mode": "advisory"}
    body = eng._record_body(record)
    assert len(body) <= 30_000
    doc = json.loads(body)
    assert doc["policy_cut"] == 14000 and doc["policy"].endswith(" ...")
    short = json.loads(eng._record_body({"policy": "Switch off when over."}))
    assert short == {"policy": "Switch off when over."}
