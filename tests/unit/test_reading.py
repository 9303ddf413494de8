"""hub.decide.reading: the decision a reading of a policy gives for the facts."""

from __future__ import annotations

import pytest

from hub.decide import facts as f
from hub.decide import reading as rd
from hub.decide.llm import model_capabilities
from protocol import messages as m
from tools.ml import eval_decisions as ev
from tools.ml.policy import codec, dataset

RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0, 1),))
FAN = m.Capability("fan.speed", (m.ParamSpec("level", m.ParamKind.Int, 0, 5),))
NOTE = m.Capability("notify", (m.ParamSpec("text", m.ParamKind.Text, 0, 40),))
CAPS = (RELAY, FAN, NOTE)


def decide(text: str, facts: list[str]) -> tuple[str, dict[str, object], int]:
    got = rd.decide(rd.parse(text), facts, CAPS)
    return got.decision.action, got.decision.params_dict(), got.rule.number


def test_the_reference_reading_of_every_held_out_policy_gives_the_expected_action() -> None:
    """The reading the data teaches, checked by this module against each
    held-out scenario's facts, gives the answer the reference interpreter
    gave: what an adapter that reads right decides."""
    cases = ev.load_scenarios(ev.HELDOUT_SCENARIOS)
    assert len(cases) >= 300
    by_id = {c.id: c for c in cases}
    import json

    seen = 0
    for line in ev.HELDOUT_SCENARIOS.read_text().splitlines():
        d = json.loads(line)
        s = by_id[d["id"]]
        caps = model_capabilities(s.capabilities)
        policy = codec.policy_from_json(d["meta"]["structure"])
        text = dataset.reading(policy, caps)
        got = rd.decide(rd.parse(text), s.facts, caps)
        assert got.decision.action == s.expect_action, (s.id, text, s.facts)
        for k, v in (s.expect_params or {}).items():
            assert got.decision.params_dict()[k] == pytest.approx(v), (s.id, k)
        seen += 1
    assert seen == len(cases)


def test_the_first_rule_that_applies_wins_and_the_default_catches_the_rest() -> None:
    text = (
        '1: power=over, grace=out -> relay.set {"on": false}\n'
        '2: power=over, unless critical=yes -> notify {"text": "over"}\n'
        "Default -> none {}"
    )
    over = ["power is over the limit of 1000 W for 90 s", f.LONGER_THAN_GRACE]
    assert f.fact_keys(over) == ["power=over", "grace=out"]
    assert decide(text, over) == ("relay.set", {"on": False}, 1)
    within = ["power is over the limit of 1000 W for 5 s", f.WITHIN_GRACE]
    assert decide(text, within) == ("notify", {"text": "over"}, 2)
    assert decide(text, [*within, "device is marked critical"]) == ("none", {}, 0)
    assert decide(text, []) == ("none", {}, 0)


def test_a_negated_condition_holds_when_its_fact_is_not_stated() -> None:
    text = '1: not home=yes, tariff=peak -> fan.speed {"level": 0}\nDefault -> none {}'
    peak = "the tariff period is peak"
    assert decide(text, [peak])[0] == "fan.speed"
    assert decide(text, [peak, "nobody is at home"])[0] == "fan.speed"
    assert decide(text, [peak, "someone is at home"])[0] == "none"


@pytest.mark.parametrize(
    ("clock", "inside"),
    [
        ("22:00", True),
        ("23:59", True),
        ("00:00", True),
        ("05:59", True),
        ("06:00", False),
        ("12:00", False),
        ("21:59", False),
    ],
)
def test_a_time_window_across_midnight(clock: str, inside: bool) -> None:
    text = '1: time in 22:00-06:00 -> relay.set {"on": false}\nDefault -> none {}'
    got = decide(text, [f"the local time is {clock}"])[0]
    assert (got == "relay.set") is inside


def test_a_time_window_holds_for_no_time_when_none_is_stated() -> None:
    text = '1: time in 08:00-17:00 -> relay.set {"on": false}\nDefault -> none {}'
    assert decide(text, [])[0] == "none"
    negated = '1: not time in 08:00-17:00 -> relay.set {"on": false}\nDefault -> none {}'
    assert decide(negated, [])[0] == "relay.set"
    assert decide(negated, ["the local time is 08:00"])[0] == "none"


def test_request_stands_for_the_value_the_operator_asks_for() -> None:
    text = '1: request=fan-speed ok -> fan.speed {"level": request}\nDefault -> none {}'
    asked = ["operator asks to set the fan speed to 4"]
    assert f.fact_keys(asked) == ["request=fan-speed ok"]
    assert decide(text, asked) == ("fan.speed", {"level": 4}, 1)
    # A request the device does not accept is refused, never clamped.
    too_high = ["operator asks to set the fan speed to 9"]
    with pytest.raises(rd.InvalidReading, match="rule 1"):
        rd.decide(rd.parse(text), too_high, CAPS)
    # "request" inside a text value is text.
    note = '1: power=over -> notify {"text": "a request: x"}\nDefault -> none {}'
    assert decide(note, ["power is over the limit"])[1] == {"text": "a request: x"}


def test_request_with_no_request_stated_is_refused() -> None:
    text = 'Default -> fan.speed {"level": request}'
    with pytest.raises(rd.InvalidReading, match="no request is stated"):
        rd.decide(rd.parse(text), [], CAPS)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("Default -> none", "not the default"),
        ('1: power=over -> relay.set {"on": false}', "not the default"),
        ("1 power=over -> none {}\nDefault -> none {}", "line 1 is not a rule"),
        ("1: unless critical=yes -> none {}\nDefault -> none {}", "no condition"),
        ("1: unless critical=yes, power=over -> none {}\nDefault -> none {}", "after an exception"),
        ("1: power is high -> none {}\nDefault -> none {}", "not a fact key"),
        # Keys the hub states but the reading grammar never writes.
        ("1: home=no -> none {}\nDefault -> none {}", "not a fact key"),
        ("1: time=17:20 -> none {}\nDefault -> none {}", "not a fact key"),
        ("1: time in 25:00-06:00 -> none {}\nDefault -> none {}", "not a fact key"),
        # The reason names a rule by its number: out of order is refused.
        ("1: home=yes -> none {}\n1: power=over -> none {}\nDefault -> none {}", "numbered 1"),
    ],
)
def test_a_reading_that_is_not_one_is_refused_with_where(text: str, why: str) -> None:
    with pytest.raises(rd.InvalidReading, match=why):
        rd.parse(text)


@pytest.mark.parametrize(
    ("default", "why"),
    [
        ('fly {"on": false}', "fly"),
        ('relay.set {"on": 3}', "on"),
        ('fan.speed {"level": 7}', "level"),
        ("relay.set {on: false}", "not JSON"),
    ],
)
def test_an_action_the_device_does_not_accept_is_refused(default: str, why: str) -> None:
    with pytest.raises(rd.InvalidReading, match=why):
        rd.decide(rd.parse(f"Default -> {default}"), [], CAPS)


def test_the_reason_quotes_the_line_that_applied() -> None:
    text = '1: power=over, unless critical=yes -> relay.set {"on": false}\nDefault -> none {}'
    got = rd.decide(rd.parse(text), ["power is over the limit"], CAPS)
    assert got.decision.reason == "Rule 1: power=over, unless critical=yes."
    assert rd.decide(rd.parse(text), [], CAPS).decision.reason.startswith("Default")


def test_text_values_and_action_names_may_hold_what_separates_the_line() -> None:
    says = m.Capability("say it", (m.ParamSpec("text", m.ParamKind.Text, 0, 40),))
    text = (
        '1: power=over, unless critical=yes -> say it {"text": "a -> b, unless {x}"}\n'
        'Default -> notify {"text": "request"}'
    )
    got = rd.decide(rd.parse(text), ["power is over the limit"], (*CAPS, says))
    assert (got.decision.action, got.decision.params_dict()) == (
        "say it",
        {"text": "a -> b, unless {x}"},
    )
    got = rd.decide(rd.parse(text), [], (*CAPS, says))
    assert got.decision.params_dict() == {"text": "request"}


def test_the_request_is_the_value_of_the_sentence_keyed_as_the_request() -> None:
    assert rd.request_value(["relay is on", "operator asks to set the fan speed to 4."]) == 4
    assert rd.request_value(["operator asks to set the limit to 1500W"]) == 1500
    assert rd.request_value(["operator asks to set the heater to 21.5 degrees"]) == 21.5
    assert rd.request_value(["operator asks to set the fan speed to 4.0"]) == 4
    assert rd.request_value(["relay is on"]) is None


def test_the_grammar_offers_request_to_numbers_of_rules_that_need_a_request() -> None:
    from hub.decide import grammar

    g = grammar.reading_gbnf(CAPS).splitlines()

    def line(name: str) -> str:
        return next(x for x in g if x.startswith(f"{name} ::="))

    # Only a rule with a request the device accepts among its conditions
    # (askact), and only for a number: a rule that applies has the value.
    assert '"request"' in line("askact1")
    assert '"request"' not in line("askact0") and '"request"' not in line("askact2")
    assert not any('"request"' in line(f"act{i}") for i in range(4))
    assert "asks" in line("body") and '"ok"' in line("asks") and "too-high" not in line("asks")
    # The rules are numbered in order.
    assert line("r1").startswith('r1 ::= "1: " body') and line("r9").endswith("default")
