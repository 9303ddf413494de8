"""Explanations from a real store: rule-based answers, and validation of
what a fallback (the LLM tier) says."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hub.decide.explain import explain, mentioned, validate
from hub.http.principal import Principal
from hub.http.routes.ask import StoreView as _StoreView
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit
T = TypeVar("T")
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
T0 = 1_763_700_000_000


class Reader:
    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, fn: Callable[[Store], T]) -> T:
        return fn(self.store)


@pytest.fixture
def view(tmp_path: Path) -> Iterator[_StoreView]:
    with Store(tmp_path / "s") as s:
        entries: list[Any] = [
            e.RegisterDevice(e.Device("plug-7", b"k" * 32, (RELAY,), 2000.0), 1),
            e.RegisterDevice(e.Device("plug-8", b"k" * 32, (RELAY,), 2000.0), 1),
            e.PutCommand("c-1", "plug-7", 1, "relay.set", (m.Param("on", False),), T0, T0 + 60_000),
            e.Decision(
                "d-1",
                "plug-7",
                e.Tier.RULES,
                T0,
                "c-1",
                json.dumps(
                    {
                        "rule": "plug-over-limit",
                        "description": "A plug over its limit for 10 s is switched off.",
                        "facts": ["power 2450 W is over the limit 2000 W for 10.2 s"],
                        "action": {"name": "relay.set", "params": {"on": False}},
                        "guard": {"outcome": "allowed"},
                        "alert": True,
                    }
                ).encode(),
            ),
            e.RecordResult(
                m.CommandResult("c-1", "plug-7", 1, m.CommandStatus.DONE, detail="relay off"),
                "hub-1",
                T0 + 900,
            ),
        ]
        s.apply([(i + 1, e.encode(x)) for i, x in enumerate(entries)])
        yield _StoreView(Reader(s), Principal("admin", e.Role.ADMIN, None))  # type: ignore[arg-type]


def test_why_a_plug_switched_off_is_answered_from_the_ledger(view: _StoreView) -> None:
    a = explain("why did plug-7 switch off?", view)
    assert a.method == "rules" and a.sources == ["d-1", "c-1"]
    assert "plug-over-limit" in a.text and "2450 W is over the limit 2000 W" in a.text
    assert "c-1 is DONE" in a.text and "relay off" in a.text
    assert explain("Why did plug 7 turn off", view).sources == ["d-1", "c-1"]
    none = explain("why did plug-8 switch off?", view)
    assert none.text == "No switch-off decision or command is recorded for plug-8."


def test_alerts_and_summaries(view: _StoreView) -> None:
    assert explain("why did plug-7 raise an alert?", view).sources == ["d-1", "c-1"]
    summary = explain("what happened to plug-7?", view)
    assert "plug-7: 0 readings stored" in summary.text and "d-1" in summary.sources
    energy = explain("how much energy did plug-8 use on 2025-11-21?", view)
    assert energy.text.startswith("plug-8 used 0.0 Wh on 2025-11-21")


def test_a_fallback_is_used_only_when_grounded(view: _StoreView) -> None:
    good = explain("is plug-7 ok?", view, lambda q, ctx: "plug-7 was switched off by a rule.")
    assert good.method == "llm" and good.text == "plug-7 was switched off by a rule."
    ghost = explain("is plug-7 ok?", view, lambda q, ctx: "plug-99 is fine.")
    assert ghost.method == "rules" and "plug-99" in ghost.refused
    number = explain("is plug-7 ok?", view, lambda q, ctx: "plug-7 drew 3100 W.")
    assert number.method == "rules" and "3100" in number.refused

    def broken(q: str, ctx: str) -> str:
        raise TimeoutError("deadline")

    failed = explain("is plug-7 ok?", view, broken)
    assert failed.method == "rules" and "deadline" in failed.refused


def test_the_reading_line_is_the_rule_the_reason_names() -> None:
    from hub.decide.explain import _reading_line

    reading = (
        '1: home=yes -> none {}\n2: power=over -> relay.set {"on": false}\nDefault -> reboot {}'
    )
    assert _reading_line("Rule 2: power=over.", reading).startswith("2: ")
    assert _reading_line("Default: no rule of the reading applies.", reading) == (
        "Default -> reboot {}"
    )
    assert _reading_line("Rule 7: x.", reading) == ""
    assert _reading_line("the power is over the limit", reading) == ""
    assert _reading_line("Rule 1: x.", None) == ""


def test_validate_and_mentioned() -> None:
    assert validate("plug-7 drew 2450 W", "power 2450 W on plug-7", ["plug-7"]) == ""
    assert "plug-9" in validate("plug-9 is off", "plug-7", ["plug-7"])
    assert validate("", "x", []) == "empty answer"
    assert mentioned("Why did PLUG-7 and plug 8 stop?", ["plug-7", "plug-8"]) == [
        "plug-7",
        "plug-8",
    ]
    assert mentioned("nothing here", ["plug-7"]) == []


def _llm_view(tmp_path: Path, mode: str) -> Iterator[_StoreView]:
    rec: dict[str, Any] = {
        "facts": ["power is over the limit for 4 s", "relay is on"],
        "after": {"tier": "facts", "rule": None},
        "policy": "If power is over the limit, switch the relay off. Otherwise do nothing.",
        "policy_source": "config",
        "mode": mode,
        "trust": "accuracy 0.412 below the threshold 0.9",
        "model": {
            "name": "smollm2-135m-instruct-q4_1",
            "sha256": "ab" * 32,
            "adapter": {"name": "llm-adapter@3", "sha256": "cd" * 32},
        },
        "recommendation": {
            "action": "relay.set",
            "params": {"on": False},
            "reason": "Rule 1: power=over.",
        },
        "llm": {"reading": '1: power=over -> relay.set {"on": false}\nDefault -> none {}'},
    }
    entries: list[Any] = [e.RegisterDevice(e.Device("heat-1", b"k" * 32, (RELAY,), 500.0), 1)]
    command_id = ""
    if mode == "actuate":
        rec["action"] = {"name": "relay.set", "params": {"on": False}}
        rec["guard"] = {"outcome": "allowed"}
        command_id = "c-9"
        entries.append(
            e.PutCommand("c-9", "heat-1", 1, "relay.set", (m.Param("on", False),), T0, T0 + 60_000)
        )
    entries.append(
        e.Decision("d-9", "heat-1", e.Tier.LLM, T0, command_id, json.dumps(rec).encode())
    )
    with Store(tmp_path / mode) as s:
        s.apply([(i + 1, e.encode(x)) for i, x in enumerate(entries)])
        yield _StoreView(Reader(s), Principal("admin", e.Role.ADMIN, None))  # type: ignore[arg-type]


def test_an_llm_decision_is_explained_with_its_policy_model_and_reason(tmp_path: Path) -> None:
    for view in _llm_view(tmp_path, "actuate"):
        a = explain("why did heat-1 switch off?", view)
        assert a.sources == ["d-9", "c-9"], a
        assert 'Policy (config): "If power is over the limit' in a.text
        # The line of the adapter's reading of the policy that the facts met.
        assert (
            "with adapter llm-adapter@3 read the policy; for these facts, Rule 1 of its "
            'reading applies: "1: power=over -> relay.set {"on": false}"' in a.text
        ), a.text
        assert "Action: relay.set on=False." in a.text and "nothing was sent" not in a.text
    for view in _llm_view(tmp_path, "advisory"):
        # Advisory: a recommendation, no switch-off, so "why did it switch
        # off" finds nothing; what happened to it tells the advice.
        assert explain("why did heat-1 switch off?", view).sources == []
        a = explain("what happened to heat-1?", view)
        assert "It recommended relay.set on=False; advisory (accuracy 0.412 below" in a.text
        assert "nothing was sent" in a.text and "d-9" in a.sources
