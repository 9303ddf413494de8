"""A fine-tuned adapter's reading of a policy, and the decision it gives for the facts.

The adapter reads the operator's policy once, in words, into a reading
(``grammar.reading_gbnf``; docs/llm.md, "The prompt"): one line a rule, its
conditions as the fact keys they need, then the action with its parameters:

    1: power=over, grace=out -> relay.set {"on": false}
    2: time in 22:00-06:00, unless not home=yes -> fan.set {"speed": request}
    Default -> none {}

This module never sees the policy's words; it checks the hub's facts, as keys
(``facts.fact_keys``), against the lines the model wrote. The first rule whose
conditions all hold and none of whose exceptions holds gives the action; the
default, when none does. A condition holds when its key is among the facts,
a negated one when it is not; a time window is checked against the local
time the facts state (start inclusive, end exclusive, across midnight when
the end is before the start), and holds for no time when none is stated.
``request`` as a parameter is the value the operator asks for.

A decision checked this way costs microseconds: the model's time goes into
the reading, once per policy and adapter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hub.decide import facts as f
from hub.decide import grammar
from protocol import messages as m

REQUEST_VALUE: Final = grammar.REQUEST_VALUE
# No condition holds " -> ", and the parameters start at the first " {".
_RULE: Final = re.compile(r"([1-9]): (.+?) -> (.+?) (\{.*\})")
_DEFAULT: Final = re.compile(r"Default -> (.+?) (\{.*\})")
# The keys the reading grammar admits (grammar.reading_gbnf).
_CLOCK_TEXT: Final = r"(?:[01]\d|2[0-3]):[0-5]\d"
_KEY: Final = re.compile(
    r"power=(?:over|near|under)|grace=(?:out|within)|anomaly=(?:high|normal)|home=yes"
    r"|critical=yes|relay=(?:on|off)|tariff=(?:peak|off-peak)"
    rf"|time in {_CLOCK_TEXT}-{_CLOCK_TEXT}|request=[a-z0-9][a-z0-9-]{{0,31}} (?:ok|too-high)"
)
_WINDOW: Final = re.compile(r"time in ([0-2]\d):([0-5]\d)-([0-2]\d):([0-5]\d)")
_CLOCK: Final = re.compile(r"time=([0-2]\d):([0-5]\d)")
# ``request`` as a JSON value: after a colon, not inside a string.
_REQUEST_PARAM: Final = re.compile(r'(:\s*)request(?=\s*[,}])(?=(?:[^"]*"[^"]*")*[^"]*$)')


class InvalidReading(ValueError):
    """A reading this module cannot check facts against; the message says where."""


@dataclass(frozen=True, slots=True)
class Cond:
    key: str  # a fact key, or "time in HH:MM-HH:MM"
    negated: bool = False

    def holds(self, keys: frozenset[str], minute: int | None) -> bool:
        window = _WINDOW.fullmatch(self.key)
        if window is None:
            found = self.key in keys
        elif minute is None:
            found = False
        else:
            h1, m1, h2, m2 = (int(x) for x in window.groups())
            start, end = h1 * 60 + m1, h2 * 60 + m2
            across = start > end  # the window runs across midnight
            found = (minute >= start or minute < end) if across else start <= minute < end
        return found != self.negated

    def __str__(self) -> str:
        return f"not {self.key}" if self.negated else self.key


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of a reading; ``number`` 0 is the default."""

    number: int
    when: tuple[Cond, ...]
    unless: tuple[Cond, ...]
    action: str
    params: str  # the parameters as written: JSON, ``request`` standing for a value

    def applies(self, keys: frozenset[str], minute: int | None) -> bool:
        return all(c.holds(keys, minute) for c in self.when) and not any(
            c.holds(keys, minute) for c in self.unless
        )


@dataclass(frozen=True, slots=True)
class Reading:
    text: str
    rules: tuple[Rule, ...]
    default: Rule


def parse(text: str) -> Reading:
    """A reading from the text an adapter wrote, or InvalidReading."""
    lines = text.strip().splitlines()
    if not lines:
        raise InvalidReading("the reading is empty")
    rules = []
    for n, line in enumerate(lines[:-1], 1):
        hit = _RULE.fullmatch(line.strip())
        if hit is None:
            raise InvalidReading(f"line {n} is not a rule: {line[:80]!r}")
        number, body, action, params = hit.groups()
        when: list[Cond] = []
        unless: list[Cond] = []
        for part in body.split(", "):
            into = when
            if part.startswith("unless "):
                into, part = unless, part.removeprefix("unless ")
            elif unless:
                raise InvalidReading(f"line {n}: a condition after an exception: {part!r}")
            negated = part.startswith("not ")
            key = part.removeprefix("not ")
            if not _KEY.fullmatch(key):
                raise InvalidReading(f"line {n}: not a fact key: {part!r}")
            into.append(Cond(key, negated))
        if not when:
            raise InvalidReading(f"line {n}: a rule with no condition")
        if int(number) != n:  # the decision's reason names the rule by its number
            raise InvalidReading(f"line {n} is numbered {number}")
        rules.append(Rule(n, tuple(when), tuple(unless), action, params))
    last = _DEFAULT.fullmatch(lines[-1].strip())
    if last is None:
        raise InvalidReading(f"the last line is not the default: {lines[-1][:80]!r}")
    default = Rule(0, (), (), last.group(1), last.group(2))
    return Reading(text, tuple(rules), default)


def request_value(facts: Sequence[str]) -> int | float | None:
    """The value of the operator's request among the hub's facts: that of the
    sentence ``facts.fact_keys`` keys as the request (the first), if any."""
    for x in facts:
        if f.request_key(x, too_high=False) is not None:
            return f.request_value(x)
    return None


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    decision: grammar.Decision


def decide(reading: Reading, facts: Sequence[str], caps: tuple[m.Capability, ...]) -> Match:
    """The decision ``reading`` gives for ``facts`` on a device with ``caps``;
    InvalidReading when the rule that applies names an action or parameters
    the device does not accept (or ``request`` with no request stated)."""
    keys = frozenset(k for k in f.fact_keys(facts) if k)
    minute = next(
        (int(c.group(1)) * 60 + int(c.group(2)) for k in keys if (c := _CLOCK.fullmatch(k))),
        None,
    )
    rule = next((r for r in reading.rules if r.applies(keys, minute)), reading.default)
    params_text = rule.params
    if _REQUEST_PARAM.search(params_text):
        value = request_value(facts)
        if value is None:
            raise InvalidReading(f"{_name(rule)} uses the request, and no request is stated")
        params_text = _REQUEST_PARAM.sub(lambda h: h.group(1) + json.dumps(value), params_text)
    try:
        params = json.loads(params_text)
    except ValueError as exc:
        raise InvalidReading(f"{_name(rule)}: parameters are not JSON: {exc}") from None
    obj = {"reason": why(rule), "action": rule.action, "params": params}
    try:
        decision = grammar.validate(obj, caps)
    except grammar.InvalidOutput as exc:
        raise InvalidReading(f"{_name(rule)}: {exc.reason}") from None
    return Match(rule, decision)


def _name(rule: Rule) -> str:
    return f"rule {rule.number}" if rule.number else "the default"


def why(rule: Rule) -> str:
    """The decision's reason: the line of the reading that applied, as written."""
    if not rule.number:
        return "Default: no rule of the reading applies."
    conds = [str(c) for c in rule.when] + [f"unless {c}" for c in rule.unless]
    return f"Rule {rule.number}: {', '.join(conds)}."
