"""The rules tier of the decision engine: declared conditions, reading by reading.

    ruleset = load_rules(Path("hub.toml"))          # ConfigError on anything wrong
    engine = Engine(ruleset)
    problems = engine.bind_all(store.devices())     # rules a device cannot run
    for d in engine.batch(applied_batch):           # or engine.reading(...) one by one
        verdict = guard.check(d.proposal(), device, now_ms) if d.action else None
        ...
    engine.anomaly("plug-7", ts_ms, 0.93)           # scores from the ONNX tier
    engine.facts("plug-7")                          # symbolic facts for the LLM prompt

A rule watches one stream of one device: a sensor (``power_w``, ``energy_wh``,
``voltage_v`` or a sensor id, as edge/sensors.py numbers them) or the ONNX
tier's anomaly score (``anomaly``). Its condition is a threshold, ``above`` or
``below`` a number or ``"limit"`` (the device's registered ``limit_w``), with:

- ``hysteresis``: once entered, the condition holds until the value crosses
  back past the threshold by this margin (above: it holds while value >
  threshold - hysteresis; below: while value < threshold + hysteresis). With
  0 it holds exactly while value > threshold (or < for below);
- ``for_s``: it must have held continuously, from the first reading of the
  run to the current reading, for at least this long in reading time;
- ``max_gap_s``: two consecutive readings further apart than this end the run
  (0, the default: any gap);
- ``between``: it fires only at readings whose local time (in ``timezone``)
  lies in [start, end), which may cross midnight;
- ``cooldown_s``: no second firing within this long after a firing, per rule
  and device.

A rule fires at most once per run of its condition (a run ends when the
condition clears); when its duration is reached outside the window or inside
a cooldown, it fires at the first later reading of the same run where both
allow it. Time comes from readings only (no clock), so the same readings give
the same decisions. A reading older than the last one of its stream is
ignored (counted as ``stale``).

Its action is one of the device's capabilities with its params (checked when
the rule is bound to a device: a device that lacks the action, the params or
a ``limit_w`` gets a ``BindProblem``, never a silently skipped rule), or
``"alert"`` (notify, no command).

State is one small fixed record per (rule, device): no history is kept.

The format (the hub config's ``[rules]`` table, or a rules file)::

    # hub.toml                               # rules file (models/rules/energy.toml)
    [rules]                                  timezone = "Europe/Berlin"
    timezone = "UTC"                         [[rule]]
    shipped = ["energy"]                     id = "plug-over-limit"
    files = ["rules/more.toml"]              ...
    [[rules.rule]]
    id = "..."

``shipped`` names rule sets of the shipped models' ``rules/`` folder
(``energy`` is ``rules/energy.toml`` in ``[models] shipped_dir``, by default
the models installed with the hub), so a config that names them keeps
working wherever the hub is installed; ``files`` are rules files by path,
relative to the config file. The table's own rules come first, then the
shipped sets, then the files; a rule id may be defined only once.

    [[rule]]
    id = "plug-over-limit"                   # [A-Za-z0-9][A-Za-z0-9._-]{0,63}, unique
    description = "Switch a plug off ..."    # plain words, for explanations
    enabled = true
    devices = ["plug-*"]                     # device id globs (fnmatch), required
    owner = "kitchen*"                       # optional: a glob on the device's owner
    sensor = "power_w"                       # power_w | energy_wh | voltage_v | anomaly | 0..65535
    above = "limit"                          # or below; a number or "limit"
    hysteresis = 100.0                       # default 0
    for_s = 10                               # default 0
    max_gap_s = 0                            # default 0 (no limit)
    between = ["22:00", "06:00"]             # optional; local time, start inclusive
    timezone = "Europe/Berlin"               # optional; default the file's (UTC)
    cooldown_s = 300                         # default 0
    action = "relay.set"                     # a capability, or "alert"
    params = { on = false }
    alert = true                             # also notify; always true for "alert"
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, Final

from hub.core.config import shipped_models
from hub.core.paths import SHIPPED_MODELS
from hub.core.validate import (
    ConfigError,
    Key,
    Schema,
    Table,
    boolean,
    did_you_mean,
    duration_ms,
    finite,
    globs,
    key_path,
    list_of,
    matching,
    number,
    params,
    path,
    read_toml,
    string,
    time_window,
    time_zone,
)
from hub.decide.guard import ParamError, Proposal, normalize_params
from hub.state import entries as e
from protocol import messages as m

# Sensor ids of the energy scenario, as edge/sensors.py numbers them (a unit
# test checks that the two agree), and the anomaly score stream.
POWER_W: Final = 0
ENERGY_WH: Final = 1
VOLTAGE_V: Final = 2
ANOMALY: Final = -1
SENSORS: Final = {"power_w": POWER_W, "energy_wh": ENERGY_WH, "voltage_v": VOLTAGE_V}
STREAM_NAMES: Final = {**SENSORS, "anomaly": ANOMALY}
LABELS: Final = {
    POWER_W: ("power", "W"),
    ENERGY_WH: ("energy", "Wh"),
    VOLTAGE_V: ("voltage", "V"),
    ANOMALY: ("anomaly score", ""),
}
ALERT: Final = "alert"
TIER: Final = "rules"

RULE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULES_DIR: Final = "rules"  # the shipped rule sets, in the shipped models' folder
_MAX_S: Final = 7 * 86_400
_NEVER: Final = -(2**63)
_UTC: Final[tzinfo] = UTC
_NONE: Final[tuple[Decision, ...]] = ()


# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Local time of day [start, end) in minutes after midnight; end < start
    crosses midnight."""

    start_min: int
    end_min: int
    tz: tzinfo

    def minute_of_day(self, ts_ms: int) -> int | None:
        try:
            t = datetime.fromtimestamp(ts_ms // 1000, self.tz)
        except (OverflowError, ValueError, OSError):
            return None
        return t.hour * 60 + t.minute

    def contains_minute(self, minute: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def contains(self, ts_ms: int) -> bool:
        minute = self.minute_of_day(ts_ms)
        return minute is not None and self.contains_minute(minute)

    def __str__(self) -> str:
        s, t = self.start_min, self.end_min
        return f"{s // 60:02d}:{s % 60:02d}-{t // 60:02d}:{t % 60:02d} {self.tz}"


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    devices: tuple[str, ...]  # device id globs
    sensor: int  # a sensor id, or ANOMALY
    above: bool  # False: below
    threshold: float | None  # None: the device's limit_w
    action: str | None  # None: alert only
    params: tuple[tuple[str, m.ParamValue], ...] = ()
    alert: bool = False
    owner: str | None = None  # a glob on Device.owner
    hysteresis: float = 0.0
    for_ms: int = 0
    max_gap_ms: int = 0  # 0: no limit
    cooldown_ms: int = 0
    window: Window | None = None
    description: str = ""
    enabled: bool = True
    source: str = ""  # the file it came from
    key: str = ""  # its key there, e.g. "rules.rule[2]"

    def matches(self, device: e.Device) -> bool:
        if not any(fnmatch.fnmatchcase(device.device_id, g) for g in self.devices):
            return False
        return self.owner is None or fnmatch.fnmatchcase(device.owner, self.owner)


@dataclass(frozen=True, slots=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()

    def __add__(self, other: RuleSet) -> RuleSet:
        seen = {r.rule_id: r for r in self.rules}
        for r in other.rules:
            if r.rule_id in seen:
                first = seen[r.rule_id]
                raise ConfigError(
                    r.source,
                    f"{r.key}.id",
                    f"rule id {r.rule_id!r} is already defined in {first.source} {first.key}",
                )
            seen[r.rule_id] = r
        return RuleSet(self.rules + other.rules)

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.rule_id == rule_id), None)


@dataclass(frozen=True, slots=True)
class BindProblem:
    """A rule that matches a device but cannot run on it."""

    rule_id: str
    device_id: str
    problem: str
    source: str = ""
    key: str = ""

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}: " if self.source else ""
        return f"{where}rule {self.rule_id} on {self.device_id}: {self.problem}"


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule fired. ``action`` None means alert only (no command)."""

    rule_id: str
    device_id: str
    action: str | None
    params: tuple[m.Param, ...]
    facts: tuple[str, ...]  # the trigger first, then the device's other facts
    ts_ms: int  # the trigger reading's time
    alert: bool
    sensor: int  # the trigger reading
    value: float
    threshold: float
    since_ms: int  # when the condition's run began
    description: str = ""
    tier: str = TIER

    def proposal(self) -> Proposal:
        """The command for the guard; ValueError for an alert-only decision."""
        if self.action is None:
            raise ValueError(f"rule {self.rule_id} only alerts")
        return Proposal(self.device_id, self.action, self.params, TIER)


# -- parsing -----------------------------------------------------------------------------


def _stream(value: Any) -> int:
    if isinstance(value, str) and value in STREAM_NAMES:
        return STREAM_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return value
    names = ", ".join(STREAM_NAMES)
    raise ValueError(f"expected one of {names} or a sensor id 0..65535, got {value!r}")


def _threshold(value: Any) -> float | None:
    if value == "limit":
        return None
    try:
        return finite(value)
    except ValueError:
        raise ValueError(f'expected a number or "limit", got {value!r}') from None


def _action(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > 255:
        raise ValueError(f"expected a capability's action name or 'alert', got {value!r}")
    return value


_SECONDS: Final = duration_ms(_MAX_S)
# A rule's keys; above or below, between and timezone are read by parse_rule.
RULE: Final = Schema(
    Rule,
    {
        "id": Key("rule_id", matching(RULE_ID, "1-64 characters of A-Z a-z 0-9 . _ -")),
        "description": string,
        "enabled": boolean,
        "devices": globs,
        "owner": string,
        "sensor": _stream,
        "hysteresis": number(0, 1e12),
        "for_s": Key("for_ms", _SECONDS),
        "max_gap_s": Key("max_gap_ms", _SECONDS),
        "cooldown_s": Key("cooldown_ms", _SECONDS),
        "action": _action,
        "params": params,
        "alert": boolean,
    },
    others=("above", "below", "between", "timezone"),
)


def parse_rule(raw: Any, source: Path | str, key: str, tz: tzinfo) -> Rule:
    """One rule table; ``key`` names it in errors (e.g. ``rule[0]``)."""
    t = RULE.table(source, key, raw)
    if ("above" in t) == ("below" in t):
        raise t.error("above", "set exactly one of above and below")
    side = "above" if "above" in t else "below"
    threshold = t.get(side, _threshold)
    window = _window(t, tz)
    rule = RULE.read(
        t, above=side == "above", threshold=threshold, window=window, source=str(source), key=key
    )
    if threshold is None and rule.sensor == ANOMALY:
        raise t.error(side, '"limit" is for power, not anomaly scores')
    if rule.action != ALERT:
        return rule
    if rule.params:
        raise t.error("params", "an alert takes no params")
    if "alert" in t and not rule.alert:
        raise t.error("alert", 'cannot be false with action = "alert"')
    return replace(rule, action=None, alert=True)


def _window(t: Table, tz: tzinfo) -> Window | None:
    if "between" in t:
        start, end = t.get("between", time_window)
        return Window(start, end, t.get("timezone", time_zone, tz))
    if "timezone" in t:
        raise t.error("timezone", "only used with between")
    return None


def _rule_list(t: Table, source: Path | str, tz: tzinfo) -> RuleSet:
    raw = t.raw.get("rule", [])
    if not isinstance(raw, list):
        raise t.error("rule", f"expected an array of tables [[{t.key('rule')}]], got {raw!r}")
    out = RuleSet()
    for i, item in enumerate(raw):
        out = out + RuleSet((parse_rule(item, source, key_path(t.name, "rule", i), tz),))
    return out


def parse_rules_file(doc: Any, source: Path | str) -> RuleSet:
    """A rules file's document: top-level ``timezone`` and ``[[rule]]``."""
    t = Table(source, "", doc, ("timezone", "rule"))
    return _rule_list(t, source, t.get("timezone", time_zone, _UTC))


def load_rules_file(path: Path) -> RuleSet:
    return parse_rules_file(read_toml(path), path)


_SET_NAME: Final = matching(RULE_ID, "the name of a rule set, like 'energy'")


def shipped_sets(shipped_dir: Path) -> list[str]:
    """The names of the rule sets in the shipped models' folder, sorted."""
    return sorted(p.stem for p in (shipped_dir / RULES_DIR).glob("*.toml"))


def _shipped_files(t: Table, shipped_dir: Path) -> tuple[Path, ...]:
    """The files ``shipped`` names; a name without a file is an error
    naming the key, the folder and the sets there are."""
    names: tuple[str, ...] = t.get("shipped", list_of(_SET_NAME, "a list of rule set names"), ())
    folder = shipped_dir / RULES_DIR
    files = []
    for i, name in enumerate(names):
        file = folder / f"{name}.toml"
        if not file.is_file():
            there = shipped_sets(shipped_dir)
            have = f"it has {', '.join(there)}" if there else "it has none"
            raise t.error(
                "shipped",
                f"no rule set {name!r} in {folder} ({have}){did_you_mean(name, there)}",
                i,
            )
        files.append(file)
    return tuple(files)


def parse_rules(
    raw: Any, source: Path, name: str = "rules", shipped_dir: Path = SHIPPED_MODELS
) -> RuleSet:
    """A hub config's ``[rules]`` table: ``timezone``, ``[[rules.rule]]``,
    ``shipped`` (rule sets in ``shipped_dir``'s ``rules/``) and ``files``
    (relative to the config file), loaded in that order."""
    t = Table(source, name, raw, ("timezone", "shipped", "files", "rule"))
    out = _rule_list(t, source, t.get("timezone", time_zone, _UTC))
    shipped = _shipped_files(t, shipped_dir)
    files: tuple[Path, ...] = t.get("files", list_of(path, "a list of rules file paths"), ())
    for file in (*shipped, *files):
        out = out + load_rules_file(file)
    return out


def load_rules(config_path: Path) -> RuleSet:
    """The rules of a hub config file: its ``[rules]`` table, the shipped
    rule sets it names (from its ``[models] shipped_dir``) and its files."""
    doc = read_toml(config_path)
    shipped_dir = shipped_models(doc, config_path)
    return parse_rules(doc.get("rules"), config_path, shipped_dir=shipped_dir)


# -- facts ---------------------------------------------------------------------------------


def _num(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{round(v, 2):g}" if abs(v) < 1e6 else f"{v:.0f}"


def _label(sensor: int) -> tuple[str, str]:
    return LABELS.get(sensor, (f"sensor {sensor}", ""))


def fact(
    sensor: int,
    value: float,
    above: bool,
    threshold: float,
    is_limit: bool,
    held_ms: int | None,
    hold: float | None = None,
) -> str:
    """One symbolic fact, true of the last reading, e.g.
    ``power 2450 W is over the limit 2000 W for 10.2 s``. ``held_ms`` None:
    the condition does not hold; ``hold``: the hysteresis level it holds to."""
    name, unit = _label(sensor)
    u = f" {unit}" if unit else ""
    if is_limit:
        beyond, short = ("over", "over") if above else ("under", "under")
        what = f"the limit {_num(threshold)}{u}"
    else:
        beyond, short = ("above", "above") if above else ("below", "below")
        what = f"{_num(threshold)}{u}"
    head = f"{name} {_num(value)}{u}"
    over = value > threshold if above else value < threshold
    if held_ms is None:
        if is_limit and above:
            return f"{head} is within {what}"
        return f"{head} is not {beyond} {what}"
    secs = f"{held_ms / 1000:.1f} s"
    if over or hold is None:
        return f"{head} is {beyond} {what} for {secs}"
    back = "dropped below" if above else "risen above"
    return (
        f"{head} is not {short} {what} but has not {back} {_num(hold)}{u}: "
        f"{short} {what} for {secs}"
    )


# -- the engine ----------------------------------------------------------------------------


class _Bound:
    """One rule bound to one device: its constants and its small state."""

    __slots__ = (
        "above",
        "action",
        "active",
        "cooldown_ms",
        "device_id",
        "fired",
        "for_ms",
        "gap_ms",
        "hold",
        "last_ts",
        "last_value",
        "next_ok",
        "params",
        "rule",
        "since",
        "stale",
        "threshold",
        "win_minute",
        "win_ok",
        "window",
    )

    def __init__(self, rule: Rule, device_id: str, threshold: float, params: tuple[m.Param, ...]):
        self.rule = rule
        self.device_id = device_id
        self.above = rule.above
        self.threshold = threshold
        self.hold = threshold - rule.hysteresis if rule.above else threshold + rule.hysteresis
        self.for_ms = rule.for_ms
        self.gap_ms = rule.max_gap_ms
        self.cooldown_ms = rule.cooldown_ms
        self.window = rule.window
        self.action = rule.action
        self.params = params
        self.active = False  # the condition holds (a run is on)
        self.since = 0  # the run's first reading
        self.fired = False  # fired during this run
        self.next_ok = _NEVER  # end of the cooldown
        self.last_ts = _NEVER
        self.last_value = math.nan
        self.stale = 0
        self.win_minute = _NEVER  # UTC minute of the cached window answer
        self.win_ok = False

    def carry(self, old: _Bound) -> None:
        """Keep the run, the firing and the cooldown of the previous binding."""
        self.active, self.since, self.fired = old.active, old.since, old.fired
        self.next_ok, self.last_ts, self.last_value = old.next_ok, old.last_ts, old.last_value
        self.stale = old.stale

    def step(self, ts: int, v: float) -> bool:
        """Take a reading; True when the rule fires on it."""
        if ts < self.last_ts:
            self.stale += 1
            return False
        if self.active and (
            (self.gap_ms and ts - self.last_ts > self.gap_ms)
            or not (v > self.hold if self.above else v < self.hold)
        ):
            self.active = False
        if not self.active and (v > self.threshold if self.above else v < self.threshold):
            self.active = True
            self.since = ts
            self.fired = False
        self.last_ts = ts
        self.last_value = v
        if not self.active or self.fired or ts - self.since < self.for_ms or ts < self.next_ok:
            return False
        if self.window is not None and not self._in_window(ts):
            return False
        self.fired = True
        self.next_ok = ts + self.cooldown_ms
        return True

    def _in_window(self, ts: int) -> bool:
        window = self.window
        assert window is not None
        minute = ts // 60_000
        if minute == self.win_minute:
            return self.win_ok
        local = window.minute_of_day(ts)
        ok = local is not None and window.contains_minute(local)
        # The answer holds for the whole UTC minute unless the zone's offset
        # has seconds in it (historic local mean times).
        if local is not None:
            off = datetime.fromtimestamp(ts // 1000, window.tz).utcoffset()
            if off is not None and off.total_seconds() % 60 == 0:
                self.win_minute, self.win_ok = minute, ok
        return ok

    def fact(self) -> str | None:
        if self.last_ts == _NEVER:
            return None
        held = self.last_ts - self.since if self.active else None
        return fact(
            self.rule.sensor,
            self.last_value,
            self.above,
            self.threshold,
            self.rule.threshold is None,
            held,
            self.hold,
        )


class Engine:
    """Rules bound to devices, fed readings in timestamp order per device.

    Not thread-safe: the leader's decision loop owns it."""

    def __init__(self, ruleset: RuleSet | None = None) -> None:
        self.ruleset = ruleset or RuleSet()
        self._devices: dict[str, e.Device] = {}
        # device id -> stream -> bound rules
        self._dispatch: dict[str, dict[int, list[_Bound]]] = {}
        self._bound: dict[str, list[_Bound]] = {}
        self._problems: dict[str, tuple[BindProblem, ...]] = {}
        self.readings = 0
        self.decisions = 0

    # -- binding --

    def _bind_one(self, rule: Rule, device: e.Device) -> _Bound | BindProblem:
        def problem(text: str) -> BindProblem:
            return BindProblem(rule.rule_id, device.device_id, text, rule.source, rule.key)

        threshold = rule.threshold
        if threshold is None:
            if device.limit_w is None:
                return problem('threshold "limit" but the device has no limit_w')
            threshold = device.limit_w
        params: tuple[m.Param, ...] = ()
        if rule.action is not None:
            cap = next((c for c in device.capabilities if c.action == rule.action), None)
            if cap is None:
                have = ", ".join(c.action for c in device.capabilities) or "none"
                return problem(f"action {rule.action!r} is not in its capabilities ({have})")
            try:
                params, _ = normalize_params(cap, dict(rule.params))
            except ParamError as exc:
                return problem(f"params: {exc.detail}")
        return _Bound(rule, device.device_id, threshold, params)

    def bind(self, device: e.Device) -> tuple[BindProblem, ...]:
        """(Re)bind the rules that match ``device`` (registered or changed);
        a rule bound before keeps its state. Returns the device's problems."""
        old = {b.rule.rule_id: b for b in self._bound.get(device.device_id, ())}
        bound: list[_Bound] = []
        problems: list[BindProblem] = []
        for rule in self.ruleset.rules:
            if not rule.enabled or not rule.matches(device):
                continue
            got = self._bind_one(rule, device)
            if isinstance(got, BindProblem):
                problems.append(got)
                continue
            prev = old.get(rule.rule_id)
            if prev is not None and prev.rule.sensor == rule.sensor:
                got.carry(prev)
            bound.append(got)
        self._devices[device.device_id] = device
        self._bound[device.device_id] = bound
        dispatch: dict[int, list[_Bound]] = {}
        for b in bound:
            dispatch.setdefault(b.rule.sensor, []).append(b)
        if dispatch:
            self._dispatch[device.device_id] = dispatch
        else:
            self._dispatch.pop(device.device_id, None)
        self._problems[device.device_id] = tuple(problems)
        return tuple(problems)

    def bind_all(self, devices: Iterable[e.Device]) -> tuple[BindProblem, ...]:
        out: list[BindProblem] = []
        for d in devices:
            out.extend(self.bind(d))
        return tuple(out)

    def unbind(self, device_id: str) -> None:
        """Forget a removed device and its rules' state."""
        self._devices.pop(device_id, None)
        self._dispatch.pop(device_id, None)
        self._bound.pop(device_id, None)
        self._problems.pop(device_id, None)

    def load(self, ruleset: RuleSet) -> tuple[BindProblem, ...]:
        """Replace the rules (a reloaded file) and rebind every known device;
        rules whose id and stream stay keep their state."""
        self.ruleset = ruleset
        return self.bind_all(list(self._devices.values()))

    def problems(self) -> tuple[BindProblem, ...]:
        return tuple(p for ps in self._problems.values() for p in ps)

    def rules_of(self, device_id: str) -> tuple[str, ...]:
        """Ids of the rules bound to the device."""
        return tuple(b.rule.rule_id for b in self._bound.get(device_id, ()))

    # -- feeding --

    def reading(self, device_id: str, sensor: int, ts_ms: int, value: float) -> Sequence[Decision]:
        """One reading; the decisions it triggers (usually none)."""
        self.readings += 1
        streams = self._dispatch.get(device_id)
        if streams is None:
            return _NONE
        bound = streams.get(sensor)
        if bound is None:
            return _NONE
        fired = [b for b in bound if b.step(ts_ms, value)]
        if not fired:
            return _NONE
        # Decisions after every rule of the stream took the reading, so
        # their facts all describe the same moment.
        return [self._decision(b, value) for b in fired]

    def anomaly(self, device_id: str, ts_ms: int, score: float) -> Sequence[Decision]:
        """An anomaly score from the ONNX tier for the device's window ending at ts_ms."""
        return self.reading(device_id, ANOMALY, ts_ms, score)

    def batch(self, batch: e.Batch) -> list[Decision]:
        """Every reading of an applied batch, in order."""
        n = len(batch.packed) // e.READING.size
        self.readings += n
        streams = self._dispatch.get(batch.device_id)
        out: list[Decision] = []
        if streams is None:
            return out
        base = batch.base_ts_ms
        for sensor, offset, value in e.READING.iter_unpack(batch.packed):
            bound = streams.get(sensor)
            if bound is not None:
                ts = base + offset
                fired = [b for b in bound if b.step(ts, value)]
                if fired:
                    out.extend(self._decision(b, value) for b in fired)
        return out

    def _decision(self, b: _Bound, value: float) -> Decision:
        self.decisions += 1
        rule = b.rule
        trigger = b.fact()
        assert trigger is not None
        others = [f for f in self.facts(b.device_id) if f != trigger]
        return Decision(
            rule.rule_id,
            b.device_id,
            b.action,
            b.params,
            (trigger, *others),
            b.last_ts,
            rule.alert,
            rule.sensor,
            value,
            b.threshold,
            b.since,
            rule.description,
        )

    # -- facts --

    def facts(self, device_id: str) -> tuple[str, ...]:
        """The device's current symbolic facts, one per bound rule that has
        seen a reading (same facts merged), those that hold first."""
        held: list[str] = []
        other: list[str] = []
        for b in self._bound.get(device_id, ()):
            f = b.fact()
            if f is None:
                continue
            (held if b.active else other).append(f)
        return tuple(dict.fromkeys(held + other))

    def stats(self) -> dict[str, int]:
        bound = [b for bs in self._bound.values() for b in bs]
        return {
            "readings": self.readings,
            "decisions": self.decisions,
            "stale": sum(b.stale for b in bound),
            "bound": len(bound),
            "problems": sum(len(p) for p in self._problems.values()),
        }
