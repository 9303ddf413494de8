"""What an LLM decision may say about one device, built from its capabilities.

A decision is one JSON object with three keys, generated in this order (the
reason first: a small model that has just written which policy sentence
applies names the matching action more often):

    {"reason": "power is over the limit: switch the relay off", "action": "relay.set",
     "params": {"on": false}}

``action`` is one of the device's capability actions or ``"none"``;
``params`` holds exactly the parameters that action declares (``{}`` for
``none`` and for actions without parameters); ``reason`` is a short plain
string.

Three views of the same rules, built from ``tuple[m.Capability, ...]``:

- ``json_schema(caps)``: the JSON Schema (draft 2020-12) of a decision, for
  documentation, the HTTP API and other tools.
- ``gbnf(caps)``: a llama.cpp grammar that only lets the model write such an
  object. It fixes the key order, forbids leading zeros, escapes and control
  characters, and limits digits and string lengths; it cannot express
  numeric bounds, so those are checked afterwards.
- ``parse(raw, caps)``: the validator every output goes through, grammar or
  not. It checks the shape, the kinds and the bounds exactly as the device's
  executor does (``edge/executor.py``: Int and Float values within
  ``min..max``, Text length within ``min..max``, Bool ignores them) and raises
  ``InvalidOutput`` with a reason otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

from protocol import messages as m
from protocol.errors import ReasonError

NONE_ACTION: Final = "none"
KEYS: Final = ("reason", "action", "params")
REASON_MAX: Final = 360  # characters (a fine-tuned adapter writes a trace of the rules)
TEXT_MAX: Final = 200  # characters, cap for Text params whose max is larger
_FRACTION_DIGITS: Final = 3


class InvalidOutput(ReasonError, ValueError):
    """The output is not a decision this device allows; ``reason`` says why."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A validated decision. ``params`` follow the capability's declared order."""

    action: str
    params: tuple[m.Param, ...]
    reason: str

    @property
    def is_none(self) -> bool:
        return self.action == NONE_ACTION

    def params_dict(self) -> dict[str, m.ParamValue]:
        return {p.name: p.value for p in self.params}

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "params": self.params_dict(), "reason": self.reason}


def actions(caps: tuple[m.Capability, ...]) -> tuple[str, ...]:
    """The action names a decision may use: the capabilities' own, then ``none``."""
    return (*(c.action for c in caps), NONE_ACTION)


def check_capabilities(caps: tuple[m.Capability, ...]) -> None:
    """Raise ValueError for capabilities no decision can be built from."""
    seen: set[str] = set()
    for c in caps:
        if not c.action or c.action == NONE_ACTION or c.action in seen:
            raise ValueError(f"capability action {c.action!r} is empty, reserved or repeated")
        if any(ch in c.action for ch in '"\\') or not c.action.isprintable():
            raise ValueError(f"capability action {c.action!r} has characters a grammar can't hold")
        seen.add(c.action)
        names: set[str] = set()
        for p in c.params:
            if not p.name or p.name in names or any(ch in p.name for ch in '"\\'):
                raise ValueError(f"{c.action}: parameter name {p.name!r} is empty or repeated")
            if not (math.isfinite(p.min) and math.isfinite(p.max)):
                raise ValueError(f"{c.action}: {p.name} bounds must be finite")
            names.add(p.name)


# -- JSON Schema ------------------------------------------------------------------------


def _param_schema(p: m.ParamSpec) -> dict[str, Any]:
    if p.kind is m.ParamKind.Bool:
        return {"type": "boolean"}
    if p.kind is m.ParamKind.Int:
        return {"type": "integer", "minimum": math.ceil(p.min), "maximum": math.floor(p.max)}
    if p.kind is m.ParamKind.Float:
        return {"type": "number", "minimum": p.min, "maximum": p.max}
    return {"type": "string", "minLength": max(0, math.ceil(p.min)), "maxLength": int(p.max)}


def json_schema(caps: tuple[m.Capability, ...]) -> dict[str, Any]:
    """The JSON Schema of a decision for a device with ``caps``."""
    check_capabilities(caps)
    branches: list[dict[str, Any]] = []
    for c in (*caps, m.Capability(NONE_ACTION)):
        branches.append(
            {
                "type": "object",
                "properties": {
                    "action": {"const": c.action},
                    "params": {
                        "type": "object",
                        "properties": {p.name: _param_schema(p) for p in c.params},
                        "required": [p.name for p in c.params],
                        "additionalProperties": False,
                    },
                    "reason": {"type": "string", "maxLength": REASON_MAX},
                },
                "required": list(KEYS),
                "additionalProperties": False,
            }
        )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "decision",
        "oneOf": branches,
    }


# -- GBNF -------------------------------------------------------------------------------


def _gbnf_literal(text: str) -> str:
    # A GBNF string literal that matches the JSON string literal of ``text``.
    return '"\\"' + text.replace("\\", "\\\\").replace('"', '\\"') + '\\""'


_CHAR = r'[^"\\\x00-\x1F\x7F]'


def _same_length(lo: str, hi: str) -> list[str]:
    # GBNF sequences matching exactly the decimal strings lo..hi of one length.
    n = len(lo)
    if lo == hi:
        return [" ".join(f'"{d}"' for d in lo)]
    if lo == "0" * n and hi == "9" * n:
        return [" ".join(["[0-9]"] * n)]
    if n == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" {rest}' for rest in _same_length(lo[1:], hi[1:])]
    nines, zeros = "9" * (n - 1), "0" * (n - 1)
    lo_whole, hi_whole = lo[1:] == zeros, hi[1:] == nines
    first = int(lo[0]) if lo_whole else int(lo[0]) + 1
    last = int(hi[0]) if hi_whole else int(hi[0]) - 1
    out = [] if lo_whole else [f'"{lo[0]}" {rest}' for rest in _same_length(lo[1:], nines)]
    if first <= last:
        head = f'"{first}"' if first == last else f"[{first}-{last}]"
        out.append(" ".join([head] + ["[0-9]"] * (n - 1)))
    if not hi_whole:
        out += [f'"{hi[0]}" {rest}' for rest in _same_length(zeros, hi[1:])]
    return out


def _int_range(lo: int, hi: int) -> str:
    """GBNF for the decimal integers lo..hi (0 <= lo <= hi), no leading zeros."""
    alts: list[str] = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10**n - 1)
        if a <= b:
            alts += _same_length(str(a), str(b))
    return "(" + " | ".join(alts) + ")"


def _magnitude(lo: float, hi: float, fraction: bool) -> str | None:
    # |value| in lo..hi (0 <= lo <= hi), or None when no whole number fits.
    a, b = math.ceil(lo), math.floor(min(hi, 1e15))
    if a > b:
        return None
    if not fraction:
        return _int_range(a, b)
    frac = f'("." [0-9]{{1,{_FRACTION_DIGITS}}})?'
    top = _int_range(b, b) + f' ("." "0"{{1,{_FRACTION_DIGITS}}})?'
    if a == b:
        return "(" + top + ")"
    return f"({_int_range(a, b - 1)} {frac} | {top})"


def _number_rule(p: m.ParamSpec) -> str:
    """Numbers within the bounds: the grammar keeps the model inside them.

    Every string it allows is within min..max. Floats are written as whole
    numbers with up to three decimals, so a bound that is not a whole number
    is approached only to the nearest whole number inside it. Where no whole
    number fits, the rule falls back to any number and the validator decides.
    """
    fraction = p.kind is m.ParamKind.Float
    parts: list[str | None] = []
    if p.max >= 0:  # the non-negative side
        parts.append(_magnitude(max(p.min, 0.0), p.max, fraction))
    if p.min < 0:  # the negative side, as "-" and a magnitude
        m_ = _magnitude(max(-p.max, 0.0), -p.min, fraction)
        parts.append(None if m_ is None else '"-" ' + m_)
    found = [x for x in parts if x is not None]
    if found:
        return "(" + " | ".join(found) + ")"
    loose = '"-"? ("0" | [1-9] [0-9]{0,15})'
    return loose + (f' ("." [0-9]{{1,{_FRACTION_DIGITS}}})?' if fraction else "")


def _param_rule(p: m.ParamSpec) -> str:
    if p.kind is m.ParamKind.Bool:
        return '("true" | "false")'
    if p.kind in (m.ParamKind.Int, m.ParamKind.Float):
        return _number_rule(p)
    lo = max(0, math.ceil(p.min))
    hi = max(lo, min(TEXT_MAX, int(p.max)))
    return f'"\\"" {_CHAR}{{{lo},{hi}}} "\\""'


def gbnf(caps: tuple[m.Capability, ...]) -> str:
    """A llama.cpp grammar that generates only decisions of the shape above."""
    check_capabilities(caps)
    lines = [
        'root ::= "{" "\\"reason\\": " reason ", \\"action\\": " action "}"',
        "action ::= " + " | ".join(f"act{i}" for i in range(len(caps) + 1)),
        f'reason ::= "\\"" {_CHAR}{{0,{REASON_MAX}}} "\\""',
    ]
    for i, c in enumerate((*caps, m.Capability(NONE_ACTION))):
        if c.params:
            fields = ' ", " '.join(
                _gbnf_literal(p.name) + ' ": " ' + _param_rule(p) for p in c.params
            )
            params = '"{" ' + fields + ' "}"'
        else:
            params = '"{}"'
        lines.append(f'act{i} ::= {_gbnf_literal(c.action)} ", \\"params\\": " {params}')
    return "\n".join(lines) + "\n"


def max_chars(caps: tuple[m.Capability, ...]) -> int:
    """An upper bound on the length of any output ``gbnf(caps)`` allows.

    A generated token adds at least one character, so a generation limit of
    this many tokens can never cut a decision short.
    """
    check_capabilities(caps)

    def value(p: m.ParamSpec) -> int:
        if p.kind is m.ParamKind.Bool:
            return 5
        if p.kind is m.ParamKind.Text:
            return 2 + max(0, min(TEXT_MAX, int(p.max)))
        return 20 + 1 + _FRACTION_DIGITS  # sign, up to 16 digits, a point, the decimals

    longest = max(
        len(json.dumps(c.action)) + sum(len(json.dumps(p.name)) + 4 + value(p) for p in c.params)
        for c in (*caps, m.Capability(NONE_ACTION))
    )
    return len('{"reason": "", "action": , "params": {}}') + longest + REASON_MAX


# -- the reading of a policy -------------------------------------------------------------

# A fine-tuned adapter reads a policy once before it decides
# (``hub.decide.facts.reading_messages``): one line a rule, its conditions as
# the fact keys they need (``hub.decide.facts.fact_keys``), "not" before a
# negated one and "unless" before an exception, then the action it names with
# its parameters, a value or ``request`` (the value the operator asks for):
#
#     1: power=over, grace=out -> relay.set {"on": false}
#     2: time in 22:00-06:00, unless not home=yes -> fan.set {"speed": request}
#     Default -> none {}
#
# The grammar admits only the keys the hub states and the device's actions;
# it numbers the rules 1, 2, 3 in order, and offers ``request`` only to a
# number parameter of a rule that needs a request the device accepts
# (``request=... ok``, not negated, not an exception), so that a rule that
# applies always has the value it names.
READING_RULES_MAX: Final = 9
_CONDS_MAX: Final = 6  # conditions of one rule, and as many exceptions
REQUEST_VALUE: Final = "request"
_NUMBERS: Final = (m.ParamKind.Int, m.ParamKind.Float)
_WHAT: Final = '"request=" [a-z0-9] [a-z0-9-]{0,31} " "'
_KEY_RULE: Final = (
    'key ::= "power=" ("over" | "near" | "under") | "grace=" ("out" | "within") '
    '| "anomaly=" ("high" | "normal") | "home=yes" | "critical=yes" '
    '| "relay=" ("on" | "off") | "tariff=" ("peak" | "off-peak") '
    '| "time in " clock "-" clock '
    f'| {_WHAT} ("ok" | "too-high")'
)


def reading_gbnf(caps: tuple[m.Capability, ...]) -> str:
    """A llama.cpp grammar for a reading of a policy (above) for a device with ``caps``."""
    check_capabilities(caps)
    n = _CONDS_MAX - 1
    last = READING_RULES_MAX
    lines = ["root ::= r1 | default"]
    for k in range(1, last + 1):
        after = f"(r{k + 1} | default)" if k < last else "default"
        lines.append(f'r{k} ::= "{k}: " body "\\n" {after}')
    lines += [
        'default ::= "Default -> " act',
        f'unless ::= (", unless " cond){{0,{n}}}',
        f'body ::= cond (", " cond){{0,{n}}} unless " -> " act '
        f'| (cond ", "){{0,{n - 1}}} asks (", " cond){{0,{n - 1}}} unless " -> " askact',
        'cond ::= "not "? key',
        f'asks ::= {_WHAT} "ok"',
        _KEY_RULE,
        'clock ::= ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9]',
    ]
    every = (*caps, m.Capability(NONE_ACTION))
    for kind, ask in (("act", False), ("askact", True)):
        lines.append(f"{kind} ::= " + " | ".join(f"{kind}{i}" for i in range(len(every))))
        for i, c in enumerate(every):
            if c.params:
                fields = ' ", " '.join(
                    f'{_gbnf_literal(p.name)} ": " ({_param_rule(p)}'
                    + (f' | "{REQUEST_VALUE}")' if ask and p.kind in _NUMBERS else ")")
                    for p in c.params
                )
                params = '"{" ' + fields + ' "}"'
            else:
                params = '"{}"'
            name = c.action.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{kind}{i} ::= "{name} " {params}')
    return "\n".join(lines) + "\n"


# The longest reading, in tokens: the data's longest, of five rules, is about
# 170; a reading that runs on to this is cut there (an adapter that has not
# learnt to read rambles on), and kept as it is.
READING_MAX_TOKENS: Final = 400


# -- validation -------------------------------------------------------------------------


def _reject_constant(name: str) -> float:
    raise InvalidOutput(f"non-standard JSON number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidOutput(f"key {key!r} given twice")
        out[key] = value
    return out


def _value(action: str, p: m.ParamSpec, v: Any) -> m.ParamValue:
    where = f"{action}: {p.name}"
    if p.kind is m.ParamKind.Bool:
        if not isinstance(v, bool):
            raise InvalidOutput(f"{where} must be a boolean")
        return v
    if p.kind is m.ParamKind.Text:
        if not isinstance(v, str):
            raise InvalidOutput(f"{where} must be a string")
        if not p.min <= len(v) <= p.max:
            raise InvalidOutput(f"{where} length {len(v)} outside {p.min:g}..{p.max:g}")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidOutput(f"{where} must be a number")
    if p.kind is m.ParamKind.Int and not isinstance(v, int):
        raise InvalidOutput(f"{where} must be an integer")
    # Written so that NaN fails too.
    if not p.min <= v <= p.max:
        raise InvalidOutput(f"{where}={v} outside {p.min:g}..{p.max:g}")
    return float(v) if p.kind is m.ParamKind.Float else v


def validate(obj: Any, caps: tuple[m.Capability, ...]) -> Decision:
    """A decision from an already parsed JSON value, or InvalidOutput."""
    if not isinstance(obj, dict):
        raise InvalidOutput("output is not a JSON object")
    if set(obj) != set(KEYS):
        raise InvalidOutput(f"keys must be exactly {', '.join(KEYS)}; got {sorted(map(str, obj))}")
    action, params, reason = obj["action"], obj["params"], obj["reason"]
    if not isinstance(action, str):
        raise InvalidOutput("action must be a string")
    if not isinstance(reason, str):
        raise InvalidOutput("reason must be a string")
    if len(reason) > REASON_MAX:
        raise InvalidOutput(f"reason longer than {REASON_MAX} characters")
    if not isinstance(params, dict):
        raise InvalidOutput("params must be an object")
    if action == NONE_ACTION:
        cap = m.Capability(NONE_ACTION)
    else:
        found = [c for c in caps if c.action == action]
        if not found:
            raise InvalidOutput(f"action {action!r} is not one of {', '.join(actions(caps))}")
        cap = found[0]
    declared = [p.name for p in cap.params]
    if set(params) != set(declared):
        raise InvalidOutput(
            f"{action}: params must be exactly {{{', '.join(declared)}}}; got {sorted(params)}"
        )
    return Decision(
        action,
        tuple(m.Param(p.name, _value(action, p, params[p.name])) for p in cap.params),
        reason,
    )


def parse(raw: str, caps: tuple[m.Capability, ...]) -> Decision:
    """Validate a model's raw output text: strict JSON, one decision, nothing else."""
    try:
        obj = json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except InvalidOutput:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidOutput(f"not valid JSON: {exc}") from None
    return validate(obj, caps)
