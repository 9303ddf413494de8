"""The rules tier: the file format and its errors, binding to devices, facts,
and property tests of durations, hysteresis, cooldowns and time windows
against oracles written from the definitions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge import sensors
from hub.core.validate import ConfigError
from hub.decide import guard as g
from hub.decide import rules as r
from hub.state import entries as e
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES

pytestmark = pytest.mark.unit

KEY = b"k" * 16
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "models" / "rules" / "energy.toml"


def plug(device_id: str = "plug-7", limit_w: float | None = 2000.0, owner: str = "") -> e.Device:
    return e.Device(device_id, KEY, PLUG_CAPABILITIES, limit_w, owner)


def rule(**kw: object) -> r.Rule:
    base: dict[str, object] = dict(
        rule_id="r1",
        devices=("plug-*",),
        sensor=r.POWER_W,
        above=True,
        threshold=2000.0,
        action="relay.set",
        params=(("on", False),),
    )
    base.update(kw)
    return r.Rule(**base)  # type: ignore[arg-type]


def engine(*rules: r.Rule, device: e.Device | None = None) -> r.Engine:
    eng = r.Engine(r.RuleSet(rules))
    assert eng.bind(device or plug()) == ()
    return eng


def feed(eng: r.Engine, readings: Sequence[tuple[int, float]], device: str = "plug-7") -> list[int]:
    """Indices of the readings on which a rule fired."""
    return [i for i, (ts, v) in enumerate(readings) if eng.reading(device, r.POWER_W, ts, v)]


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


# -- the format ----------------------------------------------------------------------------


def test_sensor_ids_agree_with_the_edge() -> None:
    edge_ids = dict(zip(sensors.NAMES, range(len(sensors.NAMES)), strict=True))
    assert edge_ids == r.SENSORS
    assert (r.POWER_W, r.ENERGY_WH, r.VOLTAGE_V) == (
        sensors.POWER_W,
        sensors.ENERGY_WH,
        sensors.VOLTAGE_V,
    )


def test_rules_file_parses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "energy.toml",
        """
timezone = "Europe/Berlin"

[[rule]]
id = "over"
description = "off when over"
devices = ["plug-*", "meter-1"]
owner = "kitchen*"
sensor = "power_w"
above = "limit"
hysteresis = 50
for_s = 10.5
max_gap_s = 30
cooldown_s = 300
between = ["22:00", "06:00"]
action = "relay.set"
params = { on = false }
alert = true

[[rule]]
id = "odd"
devices = "*"
sensor = 7
below = -3
timezone = "UTC"
between = ["00:00", "00:01"]
action = "alert"
enabled = false
""",
    )
    rs = r.load_rules_file(path)
    over, odd = rs.rules
    assert over == r.Rule(
        rule_id="over",
        devices=("plug-*", "meter-1"),
        sensor=0,
        above=True,
        threshold=None,
        action="relay.set",
        params=(("on", False),),
        alert=True,
        owner="kitchen*",
        hysteresis=50.0,
        for_ms=10_500,
        max_gap_ms=30_000,
        cooldown_ms=300_000,
        window=r.Window(22 * 60, 6 * 60, ZoneInfo("Europe/Berlin")),
        description="off when over",
        enabled=True,
        source=str(path),
        key="rule[0]",
    )
    assert (odd.sensor, odd.above, odd.threshold, odd.action, odd.alert) == (
        7,
        False,
        -3.0,
        None,
        True,
    )
    assert odd.devices == ("*",) and not odd.enabled
    assert odd.window is not None and odd.window.tz is UTC
    assert rs.get("odd") is odd and rs.get("nope") is None


def test_hub_config_rules_table_and_files(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    write(
        tmp_path,
        "rules/extra.toml",
        '[[rule]]\nid = "b"\ndevices = ["*"]\nsensor = "voltage_v"\n'
        'below = 207\naction = "alert"\n',
    )
    cfg = write(
        tmp_path,
        "hub.toml",
        """
[node]
id = "hub-1"

[rules]
timezone = "America/New_York"
files = ["rules/extra.toml"]

[[rules.rule]]
id = "a"
devices = ["plug-*"]
sensor = "anomaly"
above = 0.8
between = ["09:00", "17:00"]
action = "alert"
""",
    )
    rs = r.load_rules(cfg)
    assert [x.rule_id for x in rs.rules] == ["a", "b"]
    assert rs.rules[0].key == "rules.rule[0]" and rs.rules[0].source == str(cfg)
    assert rs.rules[0].window == r.Window(540, 1020, ZoneInfo("America/New_York"))
    assert rs.rules[1].source == str(tmp_path / "rules/extra.toml")
    # No [rules] table: no rules.
    assert r.load_rules(write(tmp_path, "bare.toml", '[node]\nid = "x"\n')) == r.RuleSet()


def test_duplicate_rule_id_names_both_places(tmp_path: Path) -> None:
    write(
        tmp_path,
        "x.toml",
        '[[rule]]\nid = "a"\ndevices = ["*"]\nsensor = 0\nabove = 1\naction = "alert"\n',
    )
    cfg = write(
        tmp_path,
        "hub.toml",
        '[rules]\nfiles = ["x.toml"]\n[[rules.rule]]\nid = "a"\ndevices = ["*"]\n'
        'sensor = 0\nabove = 1\naction = "alert"\n',
    )
    with pytest.raises(ConfigError) as err:
        r.load_rules(cfg)
    assert err.value.source == str(tmp_path / "x.toml")
    assert err.value.key == "rule[0].id"
    assert f"already defined in {cfg} rules.rule[0]" in err.value.problem


GOOD_RULE = {
    "id": '"r"',
    "devices": '["plug-*"]',
    "sensor": '"power_w"',
    "above": '"limit"',
    "action": '"relay.set"',
    "params": "{ on = false }",
}


def rule_body(**change: str | None) -> str:
    fields = {**GOOD_RULE, **change}
    return "[[rule]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        ({"abov": "1"}, "rule[0].abov", "unknown key (did you mean 'above'?)"),
        ({"id": None}, "rule[0].id", "required key is missing"),
        ({"id": '"has space"'}, "rule[0].id", "expected 1-64 characters"),
        ({"devices": None}, "rule[0].devices", "required key is missing"),
        ({"devices": "[]"}, "rule[0].devices", "list of device id globs"),
        ({"sensor": '"current_a"'}, "rule[0].sensor", "power_w, energy_wh, voltage_v, anomaly"),
        ({"sensor": "70000"}, "rule[0].sensor", "sensor id 0..65535"),
        ({"above": None}, "rule[0].above", "exactly one of above and below"),
        ({"below": "3"}, "rule[0].above", "exactly one of above and below"),
        ({"above": '"max"'}, "rule[0].above", 'a number or "limit"'),
        ({"above": "nan"}, "rule[0].above", 'a number or "limit"'),
        ({"sensor": '"anomaly"'}, "rule[0].above", '"limit" is for power'),
        ({"hysteresis": "-1"}, "rule[0].hysteresis", "number in 0.."),
        ({"for_s": '"10s"'}, "rule[0].for_s", "number in 0..604800"),
        ({"cooldown_s": "1e9"}, "rule[0].cooldown_s", "number in 0..604800"),
        ({"max_gap_s": "true"}, "rule[0].max_gap_s", "number in 0..604800"),
        ({"between": '["22:00"]'}, "rule[0].between", '["HH:MM", "HH:MM"]'),
        ({"between": '["24:00", "06:00"]'}, "rule[0].between", "HH:MM (00:00..23:59)"),
        ({"between": '["6:00", "07:00"]'}, "rule[0].between", "HH:MM"),
        ({"between": '["06:00", "06:00"]'}, "rule[0].between", "empty window"),
        (
            {"between": '["06:00", "07:00"]', "timezone": '"Mars/Olympus"'},
            "rule[0].timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        ({"timezone": '"UTC"'}, "rule[0].timezone", "only used with between"),
        ({"action": None}, "rule[0].action", "required key is missing"),
        ({"action": '""'}, "rule[0].action", "action name or 'alert'"),
        ({"params": "[1]"}, "rule[0].params", "expected a table"),
        ({"params": "{ on = [false] }"}, "rule[0].params.on", "boolean, number or string"),
        ({"action": '"alert"'}, "rule[0].params", "an alert takes no params"),
        (
            {"action": '"alert"', "params": None, "alert": "false"},
            "rule[0].alert",
            "cannot be false",
        ),
        ({"alert": '"yes"'}, "rule[0].alert", "true or false"),
        ({"enabled": "1"}, "rule[0].enabled", "true or false"),
        ({"owner": "1"}, "rule[0].owner", "expected a string"),
    ],
)
def test_rule_errors_name_file_key_and_problem(
    tmp_path: Path, change: dict[str, str | None], key: str, problem: str
) -> None:
    path = write(tmp_path, "rules.toml", rule_body(**change))
    with pytest.raises(ConfigError) as err:
        r.load_rules_file(path)
    assert (err.value.source, err.value.key) == (str(path), key)
    assert problem in err.value.problem, err.value.problem
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_the_good_rule_body_is_good(tmp_path: Path) -> None:
    # The error cases above differ from this one by one key.
    (rule_,) = r.load_rules_file(write(tmp_path, "rules.toml", rule_body())).rules
    assert rule_.threshold is None and rule_.params == (("on", False),)


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('timezone = "Nowhere/Else"\n', "timezone", "unknown time zone"),
        ("rule = 3\n", "rule", "expected an array of tables [[rule]]"),
        ("[rules]\n", "rules", "unknown key (did you mean 'rule'?)"),
        ("[[rule]\n", "", "not valid TOML"),
    ],
)
def test_rules_file_errors(tmp_path: Path, body: str, key: str, problem: str) -> None:
    path = write(tmp_path, "rules.toml", body)
    with pytest.raises(ConfigError) as err:
        r.load_rules_file(path)
    assert (err.value.source, err.value.key) == (str(path), key)
    assert problem in err.value.problem


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ('[rules]\nfiles = "x.toml"\n', "rules.files", "list of rules file paths"),
        ('[rules]\nfile = ["x.toml"]\n', "rules.file", "did you mean 'files'?"),
        ("[rules]\nrule = {}\n", "rules.rule", "[[rules.rule]]"),
        ("rules = 1\n", "rules", "expected a table"),
    ],
)
def test_hub_config_rules_errors(tmp_path: Path, body: str, key: str, problem: str) -> None:
    path = write(tmp_path, "hub.toml", body)
    with pytest.raises(ConfigError) as err:
        r.load_rules(path)
    assert (err.value.source, err.value.key) == (str(path), key)
    assert problem in err.value.problem


def test_missing_rules_file_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "hub.toml", '[rules]\nfiles = ["gone.toml"]\n')
    with pytest.raises(ConfigError, match="cannot read the file") as err:
        r.load_rules(path)
    assert err.value.source == str(tmp_path / "gone.toml")


def test_the_example_rules_file_binds_to_plugs_and_meters() -> None:
    rs = r.load_rules_file(EXAMPLE)
    assert len(rs.rules) >= 5
    eng = r.Engine(rs)
    assert eng.bind(plug()) == ()
    assert eng.bind(e.Device("meter-1", KEY, (), None, "")) == ()
    assert "plug-over-limit" in eng.rules_of("plug-7")
    assert set(eng.rules_of("meter-1")) == {"undervoltage", "anomaly-high"}


# -- binding ----------------------------------------------------------------------------------


def test_missing_capability_is_reported_not_skipped() -> None:
    eng = r.Engine(r.RuleSet((rule(action="valve.close", params=()),)))
    (p,) = eng.bind(plug())
    assert (p.rule_id, p.device_id) == ("r1", "plug-7")
    assert "action 'valve.close' is not in its capabilities (relay.set, limit.set" in p.problem
    assert eng.problems() == (p,)
    assert eng.rules_of("plug-7") == ()
    assert eng.reading("plug-7", r.POWER_W, T0, 9999.0) == ()


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ((), "relay.set: on is required"),
        ((("on", 1),), "relay.set: on must be bool"),
        ((("on", False), ("force", True)), "takes no parameter 'force'"),
    ],
)
def test_params_are_checked_against_the_capability(
    params: tuple[tuple[str, m.ParamValue], ...], problem: str
) -> None:
    eng = r.Engine(r.RuleSet((rule(params=params),)))
    (p,) = eng.bind(plug())
    assert problem in p.problem and str(p).startswith("rule r1 on plug-7: params: ")


def test_param_kinds_follow_the_capability() -> None:
    eng = engine(rule(action="limit.set", params=(("watts", 1500),)))
    (d,) = eng.reading("plug-7", r.POWER_W, T0, 2500.0)
    assert d.params == (m.Param("watts", 1500.0),) and isinstance(d.params[0].value, float)


def test_limit_needs_a_registered_limit() -> None:
    eng = r.Engine(r.RuleSet((rule(threshold=None),)))
    (p,) = eng.bind(plug(limit_w=None))
    assert p.problem == 'threshold "limit" but the device has no limit_w'
    # Registering a limit later fixes it.
    assert eng.bind(plug(limit_w=100.0)) == ()
    assert eng.problems() == ()
    assert eng.reading("plug-7", r.POWER_W, T0, 150.0)


def test_alerts_bind_without_capabilities() -> None:
    meter = e.Device("meter-1", KEY, (), None, "")
    eng = r.Engine(r.RuleSet((rule(devices=("meter-*",), action=None, params=(), alert=True),)))
    assert eng.bind(meter) == ()
    (d,) = eng.reading("meter-1", r.POWER_W, T0, 2500.0)
    assert d.action is None and d.alert and d.params == ()
    with pytest.raises(ValueError, match="only alerts"):
        d.proposal()


def test_device_classes_by_id_glob_and_owner() -> None:
    rs = r.RuleSet(
        (
            rule(rule_id="kitchen", devices=("plug-*",), owner="kitchen*"),
            rule(rule_id="all", devices=("*",)),
            rule(rule_id="one", devices=("plug-7", "meter-?")),
            rule(rule_id="off", devices=("*",), enabled=False),
        )
    )
    eng = r.Engine(rs)
    eng.bind_all([plug("plug-7", owner="kitchen-2"), plug("plug-8"), plug("meter-1")])
    assert eng.rules_of("plug-7") == ("kitchen", "all", "one")
    assert eng.rules_of("plug-8") == ("all",)
    assert eng.rules_of("meter-1") == ("all", "one")


def test_rebinding_keeps_the_run_and_the_cooldown() -> None:
    eng = engine(rule(threshold=None, cooldown_ms=60_000))
    assert eng.reading("plug-7", r.POWER_W, T0, 2500.0)
    assert eng.reading("plug-7", r.POWER_W, T0 + 1000, 0.0) == ()
    # The device's limit changes: the rule is rebound with the new limit,
    # and its cooldown still runs.
    assert eng.bind(plug(limit_w=1000.0)) == ()
    assert eng.reading("plug-7", r.POWER_W, T0 + 2000, 1500.0) == ()
    assert eng.reading("plug-7", r.POWER_W, T0 + 60_000, 1500.0)
    # Reloading the same rules keeps the state as well.
    assert eng.load(eng.ruleset) == ()
    assert eng.reading("plug-7", r.POWER_W, T0 + 61_000, 1500.0) == ()


def test_unbind_forgets_the_device() -> None:
    eng = engine(rule())
    eng.unbind("plug-7")
    assert eng.reading("plug-7", r.POWER_W, T0, 2500.0) == ()
    assert eng.facts("plug-7") == () and eng.stats()["bound"] == 0


# -- decisions and facts ---------------------------------------------------------------------


def test_the_reference_decision() -> None:
    eng = engine(
        rule(threshold=None, for_ms=10_000, description="over the limit", alert=True),
        rule(
            rule_id="volt", sensor=r.VOLTAGE_V, above=False, threshold=207.0, action=None, params=()
        ),
    )
    assert feed(eng, [(T0, 1500.0), (T0 + 1000, 2450.0), (T0 + 6000, 2460.0)]) == []
    eng.reading("plug-7", r.VOLTAGE_V, T0 + 6000, 229.5)
    (d,) = eng.reading("plug-7", r.POWER_W, T0 + 11_200, 2450.0)
    assert d == r.Decision(
        rule_id="r1",
        device_id="plug-7",
        action="relay.set",
        params=(m.Param("on", False),),
        facts=(
            "power 2450 W is over the limit 2000 W for 10.2 s",
            "voltage 229.5 V is not below 207 V",
        ),
        ts_ms=T0 + 11_200,
        alert=True,
        sensor=r.POWER_W,
        value=2450.0,
        threshold=2000.0,
        since_ms=T0 + 1000,
        description="over the limit",
        tier="rules",
    )
    # The decision's command passes the guard as it is.
    v = g.Guard().check(d.proposal(), plug(), T0)
    assert v.outcome is g.Outcome.ALLOWED and v.params == d.params
    assert v.proposal.origin == "rules"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (
            (0, 2450.0, True, 2000.0, True, 10_200),
            "power 2450 W is over the limit 2000 W for 10.2 s",
        ),
        ((0, 150.0, True, 2000.0, True, None), "power 150 W is within the limit 2000 W"),
        ((0, 5.0, False, 20.0, True, 0), "power 5 W is under the limit 20 W for 0.0 s"),
        ((0, 25.0, False, 20.0, True, None), "power 25 W is not under the limit 20 W"),
        ((2, 200.0, False, 207.0, False, 5000), "voltage 200 V is below 207 V for 5.0 s"),
        ((2, 230.0, False, 207.0, False, None), "voltage 230 V is not below 207 V"),
        ((1, 12.3456, True, 10.0, False, 60_000), "energy 12.35 Wh is above 10 Wh for 60.0 s"),
        ((-1, 0.93, True, 0.8, False, 0), "anomaly score 0.93 is above 0.8 for 0.0 s"),
        ((9, 1.0, True, 2.0, False, None), "sensor 9 1 is not above 2"),
    ],
)
def test_fact_wording(args: tuple[int, float, bool, float, bool, int | None], text: str) -> None:
    assert r.fact(*args) == text


def test_facts_inside_the_hysteresis_band_stay_true() -> None:
    eng = engine(rule(threshold=None, hysteresis=100.0, for_ms=5000))
    feed(eng, [(T0, 2100.0), (T0 + 2000, 1950.0)])
    assert eng.facts("plug-7") == (
        "power 1950 W is not over the limit 2000 W but has not dropped below 1900 W: "
        "over the limit 2000 W for 2.0 s",
    )
    (d,) = eng.reading("plug-7", r.POWER_W, T0 + 5000, 1920.0)
    assert d.facts[0].startswith("power 1920 W is not over the limit 2000 W")


def test_facts_hold_first_and_merge_duplicates() -> None:
    eng = engine(
        rule(rule_id="a", threshold=None, action=None, params=()),
        rule(rule_id="b", threshold=2000.0, action=None, params=()),
        rule(rule_id="c", sensor=r.VOLTAGE_V, threshold=250.0, action=None, params=()),
        rule(rule_id="d", sensor=r.ENERGY_WH, threshold=1.0, action=None, params=()),
    )
    assert eng.facts("plug-7") == ()  # nothing seen yet
    eng.reading("plug-7", r.VOLTAGE_V, T0, 251.0)
    eng.reading("plug-7", r.POWER_W, T0, 100.0)
    assert eng.facts("plug-7") == (
        "voltage 251 V is above 250 V for 0.0 s",
        "power 100 W is within the limit 2000 W",
        "power 100 W is not above 2000 W",
    )
    assert eng.facts("nobody") == ()


def test_anomaly_scores_are_a_stream() -> None:
    eng = engine(
        rule(sensor=r.ANOMALY, threshold=0.8, hysteresis=0.1, for_ms=30_000, action=None, params=())
    )
    assert eng.anomaly("plug-7", T0, 0.85) == ()
    assert eng.anomaly("plug-7", T0 + 20_000, 0.75) == ()  # within the margin: still on
    (d,) = eng.anomaly("plug-7", T0 + 30_000, 0.9)
    assert d.facts == ("anomaly score 0.9 is above 0.8 for 30.0 s",)
    assert eng.reading("plug-7", r.POWER_W, T0 + 40_000, 0.95) == ()  # not the same stream


def test_batches_fire_like_single_readings() -> None:
    rules_ = (
        rule(threshold=None, for_ms=3000, hysteresis=50.0),
        rule(rule_id="v", sensor=r.VOLTAGE_V, above=False, threshold=210.0, action=None, params=()),
    )
    a, b = engine(*rules_), engine(*rules_)
    values = [1000.0, 2100.0, 2050.0, 1990.0, 2200.0, 2300.0, 100.0, 2500.0]
    values += [2600.0, 2700.0, 2800.0, 2900.0, 3000.0, 3100.0]
    readings = [
        (s, i * 500, v if s == r.POWER_W else 205.0 + i)
        for i, v in enumerate(values)
        for s in (r.POWER_W, r.VOLTAGE_V, r.ENERGY_WH)
    ]
    packed = b"".join(e.READING.pack(s, off, v) for s, off, v in readings)
    got = a.batch(e.Batch("plug-7", "hub-1", 1, 1, T0, packed))
    want = [d for s, off, v in readings for d in b.reading("plug-7", s, T0 + off, v)]
    assert got == want and len(got) == 2
    assert a.stats()["readings"] == len(readings)
    assert a.batch(e.Batch("plug-99", "hub-1", 1, 1, T0, packed)) == []


def test_stale_readings_are_ignored_and_counted() -> None:
    eng = engine(rule(for_ms=1000))
    assert feed(eng, [(T0 + 5000, 2500.0), (T0, 2500.0), (T0 + 5500, 2500.0)]) == []
    assert eng.stats()["stale"] == 1
    assert eng.reading("plug-7", r.POWER_W, T0 + 6000, 2500.0)


def test_readings_of_unruled_streams_and_devices_do_nothing() -> None:
    eng = engine(rule())
    assert eng.reading("plug-7", r.VOLTAGE_V, T0, 1e9) == ()
    assert eng.reading("plug-8", r.POWER_W, T0, 1e9) == ()
    assert eng.reading("plug-7", r.POWER_W, T0, math.nan) == ()
    assert eng.stats() == {"readings": 3, "decisions": 0, "stale": 0, "bound": 1, "problems": 0}


def test_state_stays_bounded() -> None:
    eng = engine(rule(for_ms=2000, cooldown_ms=5000), rule(rule_id="r2", threshold=100.0))
    (b1, b2) = eng._bound["plug-7"]
    assert not hasattr(b1, "__dict__")  # fixed slots, no room for history
    for i in range(20_000):
        eng.reading("plug-7", r.POWER_W, T0 + i * 100, float((i * 37) % 3000))
        eng.reading("plug-7", i % 50, T0 + i * 100, 1.0)
    assert eng._bound["plug-7"] == [b1, b2]
    assert list(eng._dispatch["plug-7"]) == [r.POWER_W]
    assert eng.stats()["decisions"] > 10


# -- property tests ---------------------------------------------------------------------------

Readings = list[tuple[int, float]]
T = 2000.0


@st.composite
def streams(
    draw: st.DrawFn, max_gap: int = 3000, levels: Sequence[float] | None = None
) -> Readings:
    gaps = draw(st.lists(st.integers(0, max_gap), min_size=1, max_size=60))
    lv = levels or (0.0, 1850.0, 1940.0, 1990.0, 2000.0, 2010.0, 2100.0, 2600.0)
    values = draw(
        st.lists(st.sampled_from(lv) | st.floats(0, 4000), min_size=len(gaps), max_size=len(gaps))
    )
    return list(zip(itertools.accumulate(gaps, initial=T0), values, strict=False))


def runs(readings: Readings, margin: float = 0.0, gap: int = 0) -> list[list[int]]:
    """Index lists of the condition's runs, from its definition: a run starts
    at a reading above T; it goes on through readings above T - margin, each
    at most ``gap`` ms (0: any) after the one before."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i, (ts, v) in enumerate(readings):
        goes_on = bool(cur) and v > T - margin and (gap == 0 or ts - readings[i - 1][0] <= gap)
        if goes_on:
            cur.append(i)
            continue
        if cur:
            out.append(cur)
        cur = [i] if v > T else []
    if cur:
        out.append(cur)
    return out


def oracle(
    readings: Readings,
    margin: float = 0.0,
    duration: int = 0,
    cooldown: int = 0,
    gap: int = 0,
    in_window: Callable[[int], bool] = lambda ts: True,
) -> list[int]:
    """The readings a rule must fire on: in each run, the first reading where
    the run has lasted ``duration``, the window is open and the cooldown since
    the last firing is over."""
    fired: list[int] = []
    for run in runs(readings, margin, gap):
        start = readings[run[0]][0]
        for i in run:
            ts = readings[i][0]
            cooled = not fired or ts - readings[fired[-1]][0] >= cooldown
            if ts - start >= duration and in_window(ts) and cooled:
                fired.append(i)
                break
    return fired


@settings(max_examples=400, deadline=None)
@given(streams(), st.integers(0, 20_000))
def test_fires_iff_the_condition_held_for_the_duration(readings: Readings, duration: int) -> None:
    eng = engine(rule(for_ms=duration))
    got = feed(eng, readings)
    # Independently of the oracle: the runs are the maximal stretches of
    # readings above T; a run fires exactly when it lasts the duration, on
    # the first reading where it has.
    want = []
    i = 0
    for above, group in itertools.groupby(readings, key=lambda x: x[1] > T):
        block = list(group)
        if above:
            start = block[0][0]
            lasted = [k for k, (ts, _) in enumerate(block) if ts - start >= duration]
            if lasted:
                want.append(i + lasted[0])
        i += len(block)
    assert got == want
    assert got == oracle(readings, duration=duration)


@settings(max_examples=300, deadline=None)
@given(streams(), st.integers(0, 20_000), st.integers(1, 5000))
def test_max_gap_ends_a_run(readings: Readings, duration: int, gap: int) -> None:
    eng = engine(rule(for_ms=duration, max_gap_ms=gap))
    assert feed(eng, readings) == oracle(readings, duration=duration, gap=gap)


@settings(max_examples=400, deadline=None)
@given(streams(), st.sampled_from((0.0, 10.0, 50.0, 100.0, 300.0)), st.integers(0, 5000))
def test_hysteresis_matches_its_definition(
    readings: Readings, margin: float, duration: int
) -> None:
    eng = engine(rule(for_ms=duration, hysteresis=margin))
    assert feed(eng, readings) == oracle(readings, margin, duration)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(1.0, 500.0),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80),
    st.lists(st.integers(1, 2000), min_size=80, max_size=80),
)
def test_a_signal_within_the_margin_fires_once(
    margin: float, wiggle: list[float], gaps: list[int]
) -> None:
    # Enter above T, then oscillate across T but never below T - margin:
    # one run, one firing, however often it crosses the threshold.
    values = [T + 1.0] + [T - margin * 0.999 + 2 * margin * w for w in wiggle]
    ts = list(itertools.accumulate(gaps[: len(values)], initial=T0))
    eng = engine(rule(hysteresis=margin))
    assert feed(eng, list(zip(ts, values, strict=False))) == [0]
    # Without hysteresis the same signal fires on every new crossing.
    eng = engine(rule())
    crossings = sum(1 for i, v in enumerate(values) if v > T and (i == 0 or values[i - 1] <= T))
    assert len(feed(eng, list(zip(ts, values, strict=False)))) == crossings


@settings(max_examples=400, deadline=None)
@given(
    streams(),
    st.integers(0, 30_000),
    st.integers(0, 5000),
    st.sampled_from((0.0, 100.0)),
)
def test_never_two_firings_within_the_cooldown(
    readings: Readings, cooldown: int, duration: int, margin: float
) -> None:
    eng = engine(rule(cooldown_ms=cooldown, for_ms=duration, hysteresis=margin))
    got = feed(eng, readings)
    times = [readings[i][0] for i in got]
    assert all(b - a >= cooldown for a, b in itertools.pairwise(times))
    assert got == oracle(readings, margin, duration, cooldown)


def test_a_firing_held_back_by_the_cooldown_comes_when_it_ends() -> None:
    eng = engine(rule(cooldown_ms=10_000))
    readings = [(T0, 2500.0), (T0 + 1000, 0.0), (T0 + 2000, 2500.0), (T0 + 9999, 2500.0)]
    readings += [(T0 + 10_000, 2500.0), (T0 + 11_000, 2500.0)]
    assert feed(eng, readings) == [0, 4]


ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")


def local_window(zone: str, start: int, end: int) -> Callable[[int], bool]:
    """Window membership, computed another way than the engine does."""
    tz = ZoneInfo(zone)

    def inside(ts: int) -> bool:
        t = datetime.fromtimestamp(ts / 1000, UTC).astimezone(tz)
        minute = t.hour * 60 + t.minute
        if start < end:
            return start <= minute < end
        return not end <= minute < start  # across midnight

    return inside


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(0, 1439),
    st.integers(0, 1439),
    st.integers(1_577_836_800_000, 1_893_456_000_000),  # 2020..2030
    st.lists(
        st.tuples(st.integers(0, 90_000) | st.integers(0, 4 * 3_600_000), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 600_000),
)
def test_time_windows(
    zone: str,
    start: int,
    end: int,
    t0: int,
    steps: list[tuple[int, bool]],
    duration: int,
) -> None:
    if start == end:
        end = (end + 1) % 1440
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    eng = engine(rule(for_ms=duration, window=r.Window(start, end, tz)))
    ts = list(itertools.accumulate((s for s, _ in steps), initial=t0))[1:]
    readings = [(t, 2500.0 if on else 0.0) for t, (_, on) in zip(ts, steps, strict=True)]
    inside = local_window(zone, start, end)
    got = feed(eng, readings)
    assert all(inside(readings[i][0]) for i in got)
    assert got == oracle(readings, duration=duration, in_window=inside)


def berlin(text: str) -> int:
    """ms of a Berlin local time like '2024-03-31 01:59'."""
    dt = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Europe/Berlin"))
    return int(dt.timestamp() * 1000)


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        ("2024-01-10 21:59", False),
        ("2024-01-10 22:00", True),
        ("2024-01-10 23:59", True),
        ("2024-01-11 00:00", True),
        ("2024-01-11 03:30", True),
        ("2024-01-11 05:59", True),
        ("2024-01-11 06:00", False),
        ("2024-01-11 12:00", False),
        # Across the spring-forward night: 02:00-03:00 does not exist.
        ("2024-03-31 01:59", True),
        ("2024-03-31 03:00", True),
        ("2024-03-31 06:00", False),
        ("2024-07-01 22:30", True),  # summer time, same local window
        ("2024-07-01 21:30", False),
    ],
)
def test_window_across_midnight(local: str, inside: bool) -> None:
    window = r.Window(22 * 60, 6 * 60, ZoneInfo("Europe/Berlin"))
    ts = berlin(local)
    assert window.contains(ts) is inside
    eng = engine(rule(window=window))
    assert bool(eng.reading("plug-7", r.POWER_W, ts, 2500.0)) is inside


def test_held_back_by_the_window_fires_when_it_opens() -> None:
    eng = engine(rule(window=r.Window(22 * 60, 6 * 60, ZoneInfo("Europe/Berlin"))))
    t = berlin("2024-01-10 21:58")
    readings = [(t + i * 30_000, 2500.0) for i in range(8)]  # 21:58:00 .. 22:01:30
    assert feed(eng, readings) == [4]  # 22:00:00


def test_window_edges_inside_an_hour() -> None:
    eng = engine(rule(window=r.Window(22 * 60 + 30, 6 * 60 + 15, ZoneInfo("Europe/Berlin"))))
    t = berlin("2024-01-10 22:29")
    readings = [(t + i * 10_000, 2500.0) for i in range(12)]  # 22:29:00 .. 22:30:50
    assert feed(eng, readings) == [6]  # 22:30:00
    t = berlin("2024-01-11 06:14")
    readings = [(t + i * 10_000, 2500.0 if i % 2 else 0.0) for i in range(12)]
    assert feed(eng, readings) == [1, 3, 5]  # 06:14:10, :30, :50; none from 06:15


def test_window_far_outside_the_calendar_is_closed() -> None:
    window = r.Window(0, 1439, UTC)
    assert not window.contains(2**63)
    eng = engine(rule(window=window))
    assert eng.reading("plug-7", r.POWER_W, 2**62, 2500.0) == ()


@settings(max_examples=100, deadline=None)
@given(streams(), st.integers(0, 5000), st.integers(0, 5000))
def test_same_readings_same_decisions(readings: Readings, duration: int, cooldown: int) -> None:
    rs = (rule(for_ms=duration, cooldown_ms=cooldown, hysteresis=50.0),)
    runs_ = []
    for _ in range(2):
        eng = engine(*rs)
        runs_.append([d for ts, v in readings for d in eng.reading("plug-7", 0, ts, v)])
    assert runs_[0] == runs_[1]
