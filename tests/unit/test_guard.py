"""The guard: config, param checks against an independent oracle, the
critical interlock for every origin, cooldowns and token-bucket rate limits."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hub.core import validate as v
from hub.core.validate import ConfigError
from hub.decide import guard as g
from hub.state import entries as e
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES

pytestmark = pytest.mark.unit

KEY = b"k" * 16
T0 = 1_700_000_000_000
UNLIMITED = dict(device_rate_per_h=10**9, device_burst=10**6, total_rate_per_h=10**9)


def plug(device_id: str = "plug-1", caps: tuple[m.Capability, ...] = PLUG_CAPABILITIES) -> e.Device:
    return e.Device(device_id, KEY, caps, 2000.0, "")


def guard(**kw: Any) -> g.Guard:
    cfg: dict[str, Any] = {**UNLIMITED, "total_burst": 10**6}
    cfg.update(kw)
    return g.Guard(g.GuardConfig(**cfg))


# -- config ------------------------------------------------------------------------------


def test_defaults_without_a_guard_table(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[node]\nid = "hub-1"\n')
    cfg = g.load_guard(path)
    assert cfg.out_of_bounds == "block"
    assert cfg.critical == ()
    assert cfg.device_rate_per_h == 720 and cfg.device_burst == 4
    assert cfg.total_rate_per_h == 36000 and cfg.total_burst == 60
    assert cfg.switch_off == g.DEFAULT_SWITCH_OFF
    assert dict(cfg.cooldown_ms) == {}


def test_full_guard_table(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        """
[guard]
out_of_bounds = "clamp"
critical = ["fridge-*", "pump-1"]
device_rate = "2/s"
device_burst = 5
total_rate = "100/h"
total_burst = 7
cooldown_s = { "relay.set" = 2.5, reboot = 600 }
switch_off = [{ action = "relay.set", params = { on = false } }, { action = "power.cut" }]
"""
    )
    cfg = g.load_guard(path)
    assert cfg.out_of_bounds == "clamp"
    assert cfg.critical == ("fridge-*", "pump-1")
    assert (cfg.device_rate_per_h, cfg.device_burst) == (7200, 5)
    assert (cfg.total_rate_per_h, cfg.total_burst) == (100, 7)
    assert dict(cfg.cooldown_ms) == {"relay.set": 2500, "reboot": 600_000}
    assert cfg.switch_off == (
        g.SwitchOff("relay.set", (("on", False),)),
        g.SwitchOff("power.cut"),
    )
    assert cfg.source == str(path)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('out_of_bounds = "wrap"', "guard.out_of_bounds", "expected one of block, clamp"),
        ("critical = []", "guard.critical", "list of device id globs"),
        ("critical = [1]", "guard.critical", "list of device id globs"),
        ('device_rate = "6/week"', "guard.device_rate", "expected a rate like '6/min'"),
        ('device_rate = "0/s"', "guard.device_rate", "N >= 1"),
        ("device_rate = 6", "guard.device_rate", "expected a rate"),
        ("device_burst = 0", "guard.device_burst", "integer in 1..1000000"),
        ("total_burst = true", "guard.total_burst", "integer in 1..1000000"),
        ('cooldown_s = { "relay.set" = -1 }', "guard.cooldown_s.relay.set", "number in 0..604800"),
        ("cooldown_s = 5", "guard.cooldown_s", "expected a table"),
        ("switch_off = [{ params = {} }]", "guard.switch_off[0].action", "required key"),
        (
            'switch_off = [{ action = "x", params = { on = [1] } }]',
            "guard.switch_off[0].params.on",
            "boolean, number or string",
        ),
        ("critcal = ['a']", "guard.critcal", "did you mean 'critical'?"),
    ],
)
def test_guard_table_errors(tmp_path: Path, body: str, key: str, problem: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[guard]\n" + body + "\n")
    with pytest.raises(ConfigError) as err:
        g.load_guard(path)
    assert err.value.source == str(path)
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[guard\n")
    with pytest.raises(ConfigError, match="not valid TOML") as err:
        g.load_guard(path)
    assert err.value.source == str(path)


@pytest.mark.parametrize(("text", "per_h"), [("1/h", 1), ("6/min", 360), ("2/s", 7200)])
def test_rate_valid(text: str, per_h: int) -> None:
    assert v.rate(text) == per_h


@pytest.mark.parametrize("text", ["", "1.5/s", "-1/s", "1/d", "/s", "0/min", None, 5])
def test_rate_invalid(text: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        v.rate(text)


# -- params on the plug ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "params", "reason"),
    [
        ("relay.toggle", {}, "unknown_action"),
        ("relay.set", {"on": False, "force": True}, "unknown_param"),
        ("relay.set", {"on": 0}, "bad_kind"),
        ("relay.set", {"on": "false"}, "bad_kind"),
        ("relay.set", {}, "missing_param"),
        ("limit.set", {"watts": True}, "bad_kind"),
        ("limit.set", {"watts": "2000"}, "bad_kind"),
        ("limit.set", {"watts": 5000.0}, "out_of_bounds"),
        ("limit.set", {"watts": -1}, "out_of_bounds"),
        ("limit.set", {"watts": math.nan}, "out_of_bounds"),
        ("limit.set", {"watts": math.inf}, "out_of_bounds"),
        ("sample.set", {"interval_ms": 500.0}, "bad_kind"),
        ("sample.set", {"interval_ms": 99}, "out_of_bounds"),
        ("sample.set", {"interval_ms": 10**30}, "out_of_bounds"),
        ("reboot", {"now": True}, "unknown_param"),
    ],
)
def test_plug_commands_blocked(action: str, params: dict[str, object], reason: str) -> None:
    gd = guard()
    v = gd.check(g.Proposal("plug-1", action, params, "llm"), plug(), T0)
    assert v.outcome is g.Outcome.BLOCKED
    assert v.reason == reason
    assert not v.allowed and v.recorded and v.params == ()
    assert gd.counters[reason] == 1
    json.dumps(v.to_dict())  # the record is storable as it is


def test_duplicate_param_blocked() -> None:
    given = (m.Param("on", False), m.Param("on", True))
    v = guard().check(g.Proposal("plug-1", "relay.set", given, "rules"), plug(), T0)
    assert (v.outcome, v.reason) == (g.Outcome.BLOCKED, "duplicate_param")


def test_allowed_params_are_normalized() -> None:
    v = guard().check(g.Proposal("plug-1", "limit.set", {"watts": 1500}, "operator"), plug(), T0)
    assert v.outcome is g.Outcome.ALLOWED and not v.recorded
    assert v.params == (m.Param("watts", 1500.0),)
    assert isinstance(v.params[0].value, float)
    cmd = v.command("c1", 3, T0, T0 + 60_000)
    assert cmd == e.PutCommand("c1", "plug-1", 3, "limit.set", v.params, T0, T0 + 60_000)
    assert e.decode(e.encode(cmd)) == cmd


def test_clamp_mode_modifies_and_records() -> None:
    gd = guard(out_of_bounds="clamp")
    v = gd.check(g.Proposal("plug-1", "limit.set", {"watts": 9000}, "llm"), plug(), T0)
    assert v.outcome is g.Outcome.MODIFIED and v.allowed and v.recorded
    assert v.reason == "clamped"
    assert v.params == (m.Param("watts", 3680.0),)
    assert v.changes == ("watts 9000 clamped to 3680",)
    assert gd.counters["clamped"] == 1
    rec = v.to_dict()
    assert rec["outcome"] == "modified" and rec["params"] == {"watts": 3680.0}
    assert rec["given"] == [["watts", 9000]]
    v = gd.check(g.Proposal("plug-1", "sample.set", {"interval_ms": 5}, "llm"), plug(), T0)
    assert v.params == (m.Param("interval_ms", 100),)
    # NaN and infinity have no nearest valid value: still blocked.
    for bad in (math.nan, -math.inf):
        v = gd.check(g.Proposal("plug-1", "limit.set", {"watts": bad}, "llm"), plug(), T0)
        assert v.reason == "out_of_bounds"


def test_unknown_device_and_bad_origin() -> None:
    gd = guard()
    v = gd.check(g.Proposal("plug-9", "reboot", {}, "rules"), None, T0)
    assert v.reason == "unknown_device"
    v = gd.check(g.Proposal("plug-9", "reboot", {}, "rules"), plug("plug-1"), T0)
    assert v.reason == "unknown_device"  # a record of another device is not this one
    v = gd.check(g.Proposal("plug-1", "reboot", {}, "cron"), plug(), T0)
    assert v.reason == "bad_origin"
    assert gd.stats() == {"checked": 3, "allowed": 0, "unknown_device": 2, "bad_origin": 1}


def test_junk_from_a_model_never_raises() -> None:
    gd = guard()
    junk: list[Any] = [
        {"on": [False]},
        {"on": None},
        {"on": {"x": 1}},
        {"watts": 10**5000},
        [1, 2],
        ["on"],
        "on=false",
    ]
    for params in junk:
        for action in ("relay.set", "limit.set", None, 7):
            v = gd.check(g.Proposal("plug-1", action, params, "llm"), plug(), T0)  # type: ignore[arg-type]
            assert v.outcome is g.Outcome.BLOCKED
            json.dumps(v.to_dict())


# -- the oracle ---------------------------------------------------------------------------

ACTIONS = ("relay.set", "reboot", "limit.set", "mode.set")
NAMES = ("on", "watts", "n", "label")
CRITICAL = g.GuardConfig(critical=("crit-*",)).critical


@st.composite
def capability_sets(draw: st.DrawFn) -> tuple[m.Capability, ...]:
    actions = draw(st.lists(st.sampled_from(ACTIONS), unique=True, max_size=4))
    caps = []
    for action in actions:
        names = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3))
        specs = []
        for name in names:
            kind = draw(st.sampled_from(m.ParamKind))
            lo = draw(st.integers(-50, 50) | st.floats(-1e4, 1e4))
            hi = lo + draw(st.integers(-5, 100) | st.floats(-1.0, 1e4))
            specs.append(m.ParamSpec(name, kind, float(lo), float(hi)))
        caps.append(m.Capability(action, tuple(specs)))
    return tuple(caps)


junk_values = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.just("\ud800"),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


def good_value(spec: m.ParamSpec) -> st.SearchStrategy[object]:
    if spec.kind is m.ParamKind.Bool:
        return st.booleans()
    if spec.kind is m.ParamKind.Int:
        return st.integers(math.ceil(spec.min) - 3, math.floor(spec.max) + 3)
    if spec.kind is m.ParamKind.Float:
        if spec.min > spec.max:
            return st.floats(spec.max, spec.min)
        return st.floats(spec.min - 10, spec.max + 10) | st.integers(-100, 100)
    return st.text(max_size=max(0, min(int(spec.max) + 2, 12)))


@st.composite
def proposals(draw: st.DrawFn, caps: tuple[m.Capability, ...]) -> g.Proposal:
    action = draw(st.sampled_from((*ACTIONS, "nope")))
    cap = next((c for c in caps if c.action == action), None)
    params: dict[str, object] = {}
    for spec in cap.params if cap else ():
        how = draw(st.sampled_from(("good", "good", "good", "junk", "drop")))
        if how == "good":
            params[spec.name] = draw(good_value(spec))
        elif how == "junk":
            params[spec.name] = draw(junk_values)
    if draw(st.integers(0, 9)) == 0:
        params[draw(st.sampled_from((*NAMES, "extra")))] = draw(junk_values)
    device = draw(st.sampled_from(("plug-1", "crit-1")))
    origin = draw(st.sampled_from((*g.ORIGINS, "cron")))
    return g.Proposal(device, action, params, origin, draw(st.booleans()))


def oracle(
    p: g.Proposal, caps: tuple[m.Capability, ...], clamp: bool
) -> tuple[str, str, tuple[m.Param, ...]]:
    """(outcome, reason, params) written from the policy, not from the guard."""
    if p.origin not in ("rules", "onnx", "llm", "operator"):
        return "blocked", "bad_origin", ()
    matching = [c for c in caps if c.action == p.action]
    if not matching:
        return "blocked", "unknown_action", ()
    specs = {s.name: s for s in matching[0].params}
    given = dict(p.params)  # type: ignore[arg-type]
    if set(given) - set(specs):
        return "blocked", "unknown_param", ()

    def kind_ok(kind: m.ParamKind, v: object) -> bool:
        if kind is m.ParamKind.Bool:
            return type(v) is bool
        if kind is m.ParamKind.Int:
            return type(v) is int
        if kind is m.ParamKind.Float:
            return type(v) in (int, float)
        return type(v) is str and not any(0xD800 <= ord(c) <= 0xDFFF for c in v)

    if any(not kind_ok(specs[n].kind, v) for n, v in given.items()):
        return "blocked", "bad_kind", ()
    if set(specs) - set(given):
        return "blocked", "missing_param", ()
    out = []
    clamped = False
    for name, spec in specs.items():
        v = given[name]
        if spec.kind is m.ParamKind.Text:
            assert isinstance(v, str)
            if not spec.min <= len(v) <= spec.max:
                return "blocked", "out_of_bounds", ()
        elif spec.kind is m.ParamKind.Int:
            assert isinstance(v, int)
            lo, hi = math.ceil(spec.min), math.floor(spec.max)
            lo, hi = max(lo, -(2**63)), min(hi, 2**63 - 1)
            if v < lo or v > hi:
                if not clamp or lo > hi:
                    return "blocked", "out_of_bounds", ()
                v, clamped = min(max(v, lo), hi), True
        elif spec.kind is m.ParamKind.Float:
            assert isinstance(v, int | float)
            v = float(v)
            if math.isnan(v) or v < spec.min or v > spec.max:
                if not clamp or math.isinf(v) or math.isnan(v) or spec.min > spec.max:
                    return "blocked", "out_of_bounds", ()
                v, clamped = min(max(v, spec.min), spec.max), True
        assert isinstance(v, bool | int | float | str)
        out.append(m.Param(name, v))
    switches_off = p.action == "reboot" or (
        p.action == "relay.set" and any(q.name == "on" and q.value is False for q in out)
    )
    approved = p.origin == "operator" and p.approved
    if p.device_id.startswith("crit-") and switches_off and not approved:
        return "blocked", "critical_interlock", ()
    return ("modified" if clamped else "allowed"), ("clamped" if clamped else ""), tuple(out)


@settings(max_examples=600, deadline=None)
@given(st.data(), capability_sets(), st.booleans())
def test_verdicts_agree_with_the_oracle(
    data: st.DataObject, caps: tuple[m.Capability, ...], clamp: bool
) -> None:
    gd = guard(out_of_bounds="clamp" if clamp else "block", critical=CRITICAL)
    devices = {d: e.Device(d, KEY, caps) for d in ("plug-1", "crit-1")}
    for i in range(5):
        p = data.draw(proposals(caps))
        v = gd.check(p, devices[p.device_id], T0 + i)
        want = oracle(p, caps, clamp)
        assert (v.outcome.value, v.reason, v.params) == want, v.detail
        event(v.reason or v.outcome.value)
        json.dumps(v.to_dict())
        if v.allowed:
            cmd = v.command("c", 1, T0)
            assert e.decode(e.encode(cmd)) == cmd


# -- the critical interlock ----------------------------------------------------------------


@pytest.mark.parametrize("origin", g.ORIGINS)
@pytest.mark.parametrize("approved", [False, True])
@pytest.mark.parametrize(
    ("action", "params"), [("relay.set", {"on": False}), ("reboot", {})], ids=["off", "reboot"]
)
def test_critical_device_is_never_switched_off_without_approval(
    origin: str, approved: bool, action: str, params: dict[str, object]
) -> None:
    gd = guard(critical=("fridge-*",))
    v = gd.check(g.Proposal("fridge-1", action, params, origin, approved), plug("fridge-1"), T0)
    if origin == "operator" and approved:
        assert v.outcome is g.Outcome.ALLOWED
    else:
        assert (v.outcome, v.reason) == (g.Outcome.BLOCKED, "critical_interlock")
        assert "needs an operator's approval" in v.detail
    # The same command on a device that is not critical goes through.
    v = gd.check(g.Proposal("plug-1", action, params, origin, approved), plug("plug-1"), T0)
    assert v.outcome is g.Outcome.ALLOWED


@pytest.mark.parametrize("origin", g.ORIGINS)
def test_critical_device_may_be_switched_on_and_tuned(origin: str) -> None:
    gd = guard(critical=("fridge-*",))
    fridge = plug("fridge-1")
    for action, params in (("relay.set", {"on": True}), ("limit.set", {"watts": 100.0})):
        v = gd.check(g.Proposal("fridge-1", action, params, origin), fridge, T0)
        assert v.outcome is g.Outcome.ALLOWED


def test_configured_switch_off_actions() -> None:
    caps = (m.Capability("power.cut"), *PLUG_CAPABILITIES)
    gd = guard(critical=("fridge-1",), switch_off=(g.SwitchOff("power.cut"),))
    fridge = plug("fridge-1", caps)
    assert gd.check(g.Proposal("fridge-1", "power.cut", {}, "llm"), fridge, T0).reason == (
        "critical_interlock"
    )
    # relay.set on=false is no longer listed as switching off.
    v = gd.check(g.Proposal("fridge-1", "relay.set", {"on": False}, "llm"), fridge, T0)
    assert v.outcome is g.Outcome.ALLOWED
    assert gd.is_critical("fridge-1") and not gd.is_critical("fridge-10")


# -- cooldowns -------------------------------------------------------------------------------


def test_cooldown_per_device_and_action() -> None:
    gd = guard(cooldown_ms={"relay.set": 10_000})
    p1 = g.Proposal("plug-1", "relay.set", {"on": False}, "rules")
    assert gd.check(p1, plug(), T0).allowed
    v = gd.check(p1, plug(), T0 + 9_999)
    assert (v.outcome, v.reason) == (g.Outcome.BLOCKED, "cooldown")
    # Another device, another action: their own cooldowns.
    assert gd.check(g.Proposal("plug-2", "relay.set", {"on": False}, "rules"), plug("plug-2"), T0)
    assert gd.check(g.Proposal("plug-1", "reboot", {}, "rules"), plug(), T0 + 1).allowed
    # A blocked proposal does not restart the cooldown.
    assert gd.check(p1, plug(), T0 + 10_000).allowed
    # An approved operator is not held back, and restarts the cooldown for the others.
    op = g.Proposal("plug-1", "relay.set", {"on": True}, "operator", approved=True)
    assert gd.check(op, plug(), T0 + 10_001).allowed
    assert gd.check(p1, plug(), T0 + 15_000).reason == "cooldown"
    unapproved = g.Proposal("plug-1", "relay.set", {"on": True}, "operator")
    assert gd.check(unapproved, plug(), T0 + 15_000).reason == "cooldown"


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5000),
    st.lists(st.integers(0, 3000), min_size=1, max_size=40),
)
def test_never_two_commands_within_the_cooldown(cooldown: int, gaps: list[int]) -> None:
    gd = guard(cooldown_ms={"relay.set": cooldown})
    p = g.Proposal("plug-1", "relay.set", {"on": False}, "llm")
    t, last = T0, None
    for gap in gaps:
        t += gap
        v = gd.check(p, plug(), t)
        # Allowed exactly when the last allowed one is at least a cooldown ago.
        assert v.allowed == (last is None or t - last >= cooldown)
        if v.allowed:
            last = t


def test_forget_drops_a_device_state() -> None:
    gd = guard(cooldown_ms={"reboot": 60_000}, device_burst=1, device_rate_per_h=1)
    p = g.Proposal("plug-1", "reboot", {}, "rules")
    assert gd.check(p, plug(), T0).allowed
    assert not gd.check(p, plug(), T0 + 1).allowed
    gd.forget("plug-1")
    assert gd.check(p, plug(), T0 + 2).allowed


# -- rate limits -----------------------------------------------------------------------------


def test_device_bucket_burst_then_refill() -> None:
    gd = guard(device_rate_per_h=v.rate("6/min"), device_burst=3)
    p = g.Proposal("plug-1", "limit.set", {"watts": 100.0}, "rules")
    assert [gd.check(p, plug(), T0).allowed for _ in range(4)] == [True, True, True, False]
    assert gd.counters["rate_device"] == 1
    assert not gd.check(p, plug(), T0 + 9_999).allowed  # 6/min: one token per 10 s
    assert gd.check(p, plug(), T0 + 10_000).allowed
    assert not gd.check(p, plug(), T0 + 10_001).allowed
    # Another device has its own bucket.
    assert gd.check(g.Proposal("plug-2", "reboot", {}, "rules"), plug("plug-2"), T0).allowed


def test_total_bucket_spans_devices() -> None:
    gd = guard(total_rate_per_h=v.rate("1/s"), total_burst=2)
    p = [g.Proposal(f"plug-{i}", "reboot", {}, "onnx") for i in range(3)]
    got = [gd.check(q, plug(q.device_id), T0) for q in p]
    assert [v.reason for v in got] == ["", "", "rate_total"]
    assert gd.check(p[2], plug("plug-2"), T0 + 1000).allowed


def test_blocked_proposals_take_no_token() -> None:
    gd = guard(device_rate_per_h=1, device_burst=1, critical=("plug-*",))
    bad = g.Proposal("plug-1", "relay.set", {"on": False}, "llm")
    for _ in range(5):
        assert gd.check(bad, plug(), T0).reason == "critical_interlock"
    assert gd.check(g.Proposal("plug-1", "reboot", {}, "operator", True), plug(), T0).allowed


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 100_000),  # tokens per hour
    st.integers(1, 5),  # burst
    st.lists(st.integers(0, 120_000), min_size=1, max_size=60),
)
def test_token_bucket_matches_an_exact_model(per_h: int, burst: int, gaps: list[int]) -> None:
    gd = guard(device_rate_per_h=per_h, device_burst=burst)
    p = g.Proposal("plug-1", "reboot", {}, "rules")
    tokens, last = Fraction(burst), T0
    t = T0
    allowed_at: list[int] = []
    for gap in gaps:
        t += gap
        tokens = min(Fraction(burst), tokens + Fraction((t - last) * per_h, 3_600_000))
        last = t
        want = tokens >= 1
        if want:
            tokens -= 1
        v = gd.check(p, plug(), t)
        assert v.allowed == want
        assert v.reason == ("" if want else "rate_device")
        if want:
            allowed_at.append(t)
    # Never more than burst + rate x time in any interval.
    for i, a in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            n = j - i + 1
            assert n <= burst + (allowed_at[j] - a) * per_h / 3_600_000 + 1e-9


def test_time_stepping_back_adds_no_tokens() -> None:
    gd = guard(device_rate_per_h=3600, device_burst=1)
    p = g.Proposal("plug-1", "reboot", {}, "rules")
    assert gd.check(p, plug(), T0 + 5000).allowed
    assert not gd.check(p, plug(), T0).allowed
    assert not gd.check(p, plug(), T0 + 5999).allowed
    assert gd.check(p, plug(), T0 + 6000).allowed


def test_firmware_updates_are_for_operators_only() -> None:
    from hub.decide.guard import Guard, Proposal
    from hub.state import entries as ent
    from protocol.profiles import PLUG_CAPABILITIES

    device = ent.Device("plug-1", b"k" * 32, PLUG_CAPABILITIES)
    params = {
        "url": "http://10.0.0.1:8080/v1/firmware/x/manifest.json",
        "sha256": "a" * 64,
        "allow_downgrade": False,
        "release": "{}",
        "signature": "b" * 128,
    }
    g = Guard()
    for origin in ("rules", "onnx", "llm"):
        v = g.check(Proposal("plug-1", "ota.update", params, origin), device, 1000)
        assert not v.allowed and v.reason == "operator_only"
    assert g.check(Proposal("plug-1", "ota.update", params, "operator"), device, 1000).allowed
