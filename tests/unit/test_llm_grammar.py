"""The decision validator (hub/decide/grammar.py): every output outside the schema or
bounds is rejected.

Two oracles: hypothesis mutates valid decisions into near misses (each must
be rejected), and random JSON values are checked against the JSON Schema with
the ``jsonschema`` package (nothing the schema refuses may pass).
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.decide import grammar
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES

pytestmark = pytest.mark.unit

K = m.ParamKind
EXOTIC: tuple[m.Capability, ...] = (
    m.Capability("say", (m.ParamSpec("text", K.Text, 1, 12),)),
    m.Capability(
        "trim", (m.ParamSpec("offset", K.Float, -5.5, 5.5), m.ParamSpec("n", K.Int, -3, 7))
    ),
    m.Capability("noop"),
)
CAP_SETS = [PLUG_CAPABILITIES, EXOTIC, (PLUG_CAPABILITIES[0],)]


# -- strategies -------------------------------------------------------------------------


def value_in(spec: m.ParamSpec) -> st.SearchStrategy[Any]:
    if spec.kind is K.Bool:
        return st.booleans()
    if spec.kind is K.Int:
        return st.integers(math.ceil(spec.min), math.floor(spec.max))
    if spec.kind is K.Float:
        return st.floats(spec.min, spec.max, allow_nan=False) | st.integers(
            math.ceil(spec.min), math.floor(spec.max)
        )
    alphabet = st.characters(blacklist_categories=("Cs",))
    return st.text(alphabet, min_size=int(spec.min), max_size=int(spec.max))


def value_out_of(spec: m.ParamSpec) -> st.SearchStrategy[Any]:
    """A value of the wrong kind or outside the bounds."""
    wrong_kind: list[Any] = ["x", None, [], {}]
    if spec.kind is K.Bool:
        return st.sampled_from([*wrong_kind, 0, 1, 0.0])
    if spec.kind is K.Int:
        outside = st.integers(max_value=math.ceil(spec.min) - 1) | st.integers(
            min_value=math.floor(spec.max) + 1
        )
        return outside | st.sampled_from([*wrong_kind, True, False, 1.5, float(spec.min)])
    if spec.kind is K.Float:
        outside = st.floats(max_value=spec.min, exclude_max=True) | st.floats(
            min_value=spec.max, exclude_min=True
        )
        return outside | st.sampled_from([*wrong_kind, True, False, "1.0"])
    too_long = st.text(min_size=int(spec.max) + 1, max_size=int(spec.max) + 20)
    too_short = st.text(max_size=int(spec.min) - 1) if spec.min >= 1 else st.nothing()
    return too_long | too_short | st.sampled_from([None, 1, True, []])


@st.composite
def valid_output(draw: st.DrawFn, caps: tuple[m.Capability, ...]) -> dict[str, Any]:
    cap = draw(st.sampled_from([*caps, m.Capability(grammar.NONE_ACTION)]))
    params = {p.name: draw(value_in(p)) for p in cap.params}
    reason = draw(st.text(max_size=grammar.REASON_MAX))
    return {"action": cap.action, "params": params, "reason": reason}


@st.composite
def near_miss(draw: st.DrawFn, caps: tuple[m.Capability, ...]) -> Any:
    """A valid decision with exactly one thing wrong."""
    out = draw(valid_output(caps))
    cap = next((c for c in caps if c.action == out["action"]), m.Capability("none"))
    choices = ["unknown_action", "extra_key", "missing_key", "reason", "params_type", "extra_param"]
    if cap.params:
        choices += ["bad_value", "bad_value", "bad_value", "missing_param"]
    how = draw(st.sampled_from(choices))
    if how == "unknown_action":
        out["action"] = draw(
            st.text(max_size=20).filter(lambda a: a not in grammar.actions(caps))
            | st.sampled_from([None, 1, True, "NONE", "relay.set "])
        )
    elif how == "extra_key":
        key = draw(st.text(max_size=10).filter(lambda k: k not in grammar.KEYS))
        out[key] = draw(st.none() | st.integers() | st.text())
    elif how == "missing_key":
        del out[draw(st.sampled_from(grammar.KEYS))]
    elif how == "reason":
        out["reason"] = draw(
            st.text(min_size=grammar.REASON_MAX + 1, max_size=grammar.REASON_MAX + 30)
            | st.sampled_from([None, 3, [], {}])
        )
    elif how == "params_type":
        out["params"] = draw(st.sampled_from([None, [], "on", 1, True]))
    elif how == "extra_param":
        key = draw(st.text(max_size=10).filter(lambda k: k not in {p.name for p in cap.params}))
        out["params"][key] = draw(st.booleans() | st.integers())
    elif how == "missing_param":
        del out["params"][draw(st.sampled_from([p.name for p in cap.params]))]
    else:
        spec = draw(st.sampled_from(cap.params))
        out["params"][spec.name] = draw(value_out_of(spec))
    return out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from([*grammar.KEYS, "on", "watts", "x"]), inner, max_size=4)
    ),
    max_leaves=12,
)


# -- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("caps", CAP_SETS, ids=["plug", "exotic", "relay"])
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_valid_decisions_are_accepted_and_keep_their_values(
    caps: tuple[m.Capability, ...], data: st.DataObject
) -> None:
    out = data.draw(valid_output(caps))
    d = grammar.parse(json.dumps(out), caps)
    assert d.action == out["action"]
    assert d.params_dict() == out["params"]
    assert [p.name for p in d.params] == list(out["params"])
    assert d.reason == out["reason"]


@pytest.mark.parametrize("caps", CAP_SETS, ids=["plug", "exotic", "relay"])
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_near_miss_is_rejected(caps: tuple[m.Capability, ...], data: st.DataObject) -> None:
    out = data.draw(near_miss(caps))
    with pytest.raises(grammar.InvalidOutput):
        grammar.parse(json.dumps(out), caps)
    with pytest.raises(grammar.InvalidOutput):
        grammar.validate(out, caps)


@pytest.mark.parametrize("caps", CAP_SETS, ids=["plug", "exotic", "relay"])
@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_nothing_the_json_schema_refuses_is_accepted(
    caps: tuple[m.Capability, ...], value: Any
) -> None:
    schema = grammar.json_schema(caps)
    try:
        d = grammar.parse(json.dumps(value), caps)
    except grammar.InvalidOutput:
        return
    jsonschema.validate(value, schema)  # raises if the validator let through too much
    assert d.action in grammar.actions(caps)


@pytest.mark.parametrize("caps", CAP_SETS, ids=["plug", "exotic", "relay"])
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_schema_accepts_every_valid_decision(
    caps: tuple[m.Capability, ...], data: st.DataObject
) -> None:
    jsonschema.validate(data.draw(valid_output(caps)), grammar.json_schema(caps))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "not valid JSON"),
        ('{"action": "none", "params": {}, "reason": "x"', "not valid JSON"),
        ('{"action": "none", "params": {}, "reason": "x"} extra', "not valid JSON"),
        ('{"action": "none", "action": "reboot", "params": {}, "reason": ""}', "twice"),
        ('{"action": "limit.set", "params": {"watts": NaN}, "reason": ""}', "non-standard"),
        ('{"action": "limit.set", "params": {"watts": Infinity}, "reason": ""}', "non-standard"),
        ('{"action": "limit.set", "params": {"watts": 1e400}, "reason": ""}', "outside"),
        ('{"action": "limit.set", "params": {"watts": 3680.001}, "reason": ""}', "outside"),
        ('{"action": "limit.set", "params": {"watts": -0.5}, "reason": ""}', "outside"),
        ('{"action": "sample.set", "params": {"interval_ms": 99}, "reason": ""}', "outside"),
        ('{"action": "sample.set", "params": {"interval_ms": 1000.0}, "reason": ""}', "integer"),
        ('{"action": "relay.set", "params": {"on": 0}, "reason": ""}', "boolean"),
        ('{"action": "relay.set", "params": {"on": "false"}, "reason": ""}', "boolean"),
        ('{"action": "reboot", "params": {"now": true}, "reason": ""}', "params must be"),
        ('{"action": "relay.off", "params": {}, "reason": ""}', "not one of"),
        ('["none", {}, ""]', "not a JSON object"),
    ],
)
def test_specific_bad_outputs_name_their_reason(raw: str, why: str) -> None:
    with pytest.raises(grammar.InvalidOutput, match=why):
        grammar.parse(raw, PLUG_CAPABILITIES)


def test_float_params_come_back_as_floats_and_bounds_are_inclusive() -> None:
    d = grammar.parse(
        '{"action": "limit.set", "params": {"watts": 3680}, "reason": "max"}', PLUG_CAPABILITIES
    )
    assert d.params == (m.Param("watts", 3680.0),)
    assert isinstance(d.params[0].value, float)
    d = grammar.parse(
        '{"action": "sample.set", "params": {"interval_ms": 100}, "reason": ""}', PLUG_CAPABILITIES
    )
    assert d.params == (m.Param("interval_ms", 100),)


def test_the_grammar_names_every_action_and_none_once_reason_first() -> None:
    g = grammar.gbnf(PLUG_CAPABILITIES)
    for action in grammar.actions(PLUG_CAPABILITIES):
        assert g.count(f'"\\"{action}\\""') == 1
    assert g.startswith('root ::= "{" "\\"reason\\": " reason ", \\"action\\": " action "}"')
    assert grammar.max_chars(PLUG_CAPABILITIES) >= len(
        json.dumps(
            {
                "reason": "r" * grammar.REASON_MAX,
                "action": "sample.set",
                "params": {"interval_ms": 3600000},
            }
        )
    )


def test_without_a_whole_number_inside_the_rule_is_loose_and_the_validator_decides() -> None:
    spec = m.ParamSpec("ratio", K.Float, 0.25, 0.75)
    assert number_regex(spec).fullmatch("0.5") and number_regex(spec).fullmatch("9")
    caps = (m.Capability("mix", (spec,)),)
    with pytest.raises(grammar.InvalidOutput, match="outside"):
        grammar.parse('{"reason": "", "action": "mix", "params": {"ratio": 9}}', caps)


def number_regex(spec: m.ParamSpec) -> re.Pattern[str]:
    """The grammar's rule for one numeric param, as a Python regex (same syntax, no quotes)."""
    rule = grammar._number_rule(spec).replace(" ", "")
    rule = rule.replace('"."', r"\.").replace('"-"', "-").replace('"', "")
    return re.compile(rule)


NUMERIC = [
    m.ParamSpec("watts", K.Float, 0.0, 3680.0),
    m.ParamSpec("interval_ms", K.Int, 100.0, 3600000.0),
    m.ParamSpec("offset", K.Float, -5.5, 5.5),
    m.ParamSpec("steps", K.Int, -3, 7),
    m.ParamSpec("cold", K.Int, -40, -10),
    m.ParamSpec("big", K.Int, 0, 10**12),
]


@pytest.mark.parametrize("spec", NUMERIC, ids=[s.name for s in NUMERIC])
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_number_the_grammar_allows_is_within_bounds(
    spec: m.ParamSpec, data: st.DataObject
) -> None:
    rx = number_regex(spec)
    text = data.draw(st.from_regex(rx, fullmatch=True))
    value = json.loads(text)  # valid JSON: no leading zeros, no bare points
    assert spec.min <= value <= spec.max, text
    assert isinstance(value, int) or spec.kind is K.Float


@pytest.mark.parametrize("spec", NUMERIC, ids=[s.name for s in NUMERIC])
def test_every_whole_number_within_bounds_is_allowed(spec: m.ParamSpec) -> None:
    rx = number_regex(spec)
    lo, hi = math.ceil(spec.min), math.floor(spec.max)
    sample = list(range(lo, min(hi, lo + 3000) + 1)) + list(range(max(lo, hi - 3000), hi + 1))
    sample += [random.Random(v).randint(lo, hi) for v in range(2000)]
    for v in sample:
        assert rx.fullmatch(str(v)), v
    for v in (lo - 1, hi + 1, hi + 10, hi * 10 + 1):
        if not lo <= v <= hi:
            assert not rx.fullmatch(str(v)), v


@pytest.mark.parametrize(
    "caps",
    [
        (m.Capability("none"),),
        (m.Capability("a"), m.Capability("a")),
        (m.Capability('say"x'),),
        (m.Capability("a", (m.ParamSpec("p", K.Int, 0, 1), m.ParamSpec("p", K.Int, 0, 1))),),
        (m.Capability("a", (m.ParamSpec("p", K.Float, 0, math.inf),)),),
    ],
)
def test_capabilities_no_decision_can_come_from_are_refused(
    caps: tuple[m.Capability, ...],
) -> None:
    with pytest.raises(ValueError):
        grammar.gbnf(caps)
    with pytest.raises(ValueError):
        grammar.json_schema(caps)


def test_the_reading_grammar_names_the_devices_actions_and_the_hubs_keys() -> None:
    caps = (m.Capability("fan.speed", (m.ParamSpec("level", m.ParamKind.Int, 0, 5),)),)
    g = grammar.reading_gbnf(caps)
    assert 'act0 ::= "fan.speed " "{" "\\"level\\"" ": " (' in g
    assert '"request"' in g and 'act1 ::= "none " "{}"' in g
    for key in ("power=", "grace=", "anomaly=", "home=yes", "critical=yes", "relay=", "tariff="):
        assert f'"{key}' in g, key
    assert grammar.READING_MAX_TOKENS >= 200
    with pytest.raises(ValueError):
        grammar.reading_gbnf((m.Capability("none"),))
