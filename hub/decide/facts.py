"""Symbolic facts about a device and the prompt that carries them to the LLM.

A tiny model cannot compare numbers reliably, so it never sees raw readings.
The lower tiers (rules, the ONNX model) turn readings into short sentences,
and the prompt holds only those sentences, the policy in plain words and the
allowed actions:

    facts = (power_fact(over_for_s=12), relay_fact(True), critical_fact())
    messages = build_messages(PLUG_CAPABILITIES, facts, "Switch the relay off when ...")

``build_messages`` returns chat messages (a system message with the
device's actions and the answer format, two worked examples on an unrelated
device, then the question); the reason comes first in the answer, so the
model states which policy sentence applies before it names the action; the model's own chat template
(read from the GGUF) turns them into text, so any instruction-tuned GGUF
works. The static part (what the device can do, the answer format) comes
first and the facts last, so llama.cpp reuses the cached prefix from one
call to the next. A fine-tuned adapter is not asked for decisions: it
reads the policy once (``reading_messages``, ``ADAPTER_PROMPT_VERSION``,
under ``grammar.reading_gbnf``) into a reading, each rule as the fact keys
its conditions need and the action it names, one line a rule ("2:
anomaly=high, not home=yes, unless tariff=peak -> relay.set {"on": false}"),
and the hub checks each decision's facts, as keys (``fact_keys``), against
that reading (``hub.decide.reading``).
``PROMPT_VERSION`` changes whenever the wording changes:
eval reports and provenance carry it, and the trust gate accepts only a
report measured with the running version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Final

from hub.decide.grammar import NONE_ACTION
from protocol import messages as m

PROMPT_VERSION: Final = "decide-v1"  # the base model's: two worked examples
# A fine-tuned adapter's: it reads the policy (``reading_messages``) into the
# lines of ``grammar.reading_gbnf``; code checks the facts against them.
# reading-v2: the instructions before the device's actions, and doing nothing
# first among them, so that every reading prompt starts with the same 72 or
# so tokens (training runs them once a batch: docs/llm.md, "The shared head").
ADAPTER_PROMPT_VERSION: Final = "reading-v2"


def prompt_version(adapter: bool) -> str:
    """The version of the prompt the model gets: an adapter's reading, or the base model's."""
    return ADAPTER_PROMPT_VERSION if adapter else PROMPT_VERSION


# What the known actions do, in words the model can use. Unknown actions are
# listed by name only.
ACTION_HINTS: Final[dict[str, str]] = {
    "relay.set": "switch the power relay: on=false cuts the power, on=true restores it",
    "limit.set": "set the power limit of the device in watts",
    "sample.set": "set how often the device samples, in milliseconds",
    "reboot": "restart the device",
}
NONE_HINT: Final = "do nothing now (also when the operator must approve first)"


# -- facts ------------------------------------------------------------------------------


def power_fact(*, over_for_s: float | None = None, near: bool = False) -> str:
    """Power against the device's limit: over it for a while, near it, or under it."""
    if over_for_s is not None:
        return f"power is over the limit for {max(0, round(over_for_s))} s"
    return "power is near the limit" if near else "power is under the limit"


ANOMALY_HIGH: Final = 0.8  # an anomaly score from here up is stated as high


def anomaly_fact(score: float, high: float = ANOMALY_HIGH) -> str:
    """The ONNX anomaly score as a word (scores in 0..1; NaN counts as unknown)."""
    if math.isnan(score):
        return "anomaly score is unknown"
    return "anomaly score is high" if score >= high else "anomaly score is normal"


def relay_fact(on: bool) -> str:
    return "relay is on" if on else "relay is off"


def critical_fact() -> str:
    return "device is marked critical"


LONGER_THAN_GRACE: Final = "this is longer than the grace period"
WITHIN_GRACE: Final = "this is within the grace period"


def grace_fact(*, longer: bool) -> str:
    """How long power has been over the limit against the rule's grace period
    (its ``for_s``); it follows the power fact it refers to."""
    return LONGER_THAN_GRACE if longer else WITHIN_GRACE


def occupancy_fact(occupied: bool) -> str:
    return "someone is at home" if occupied else "nobody is at home"


def time_fact(minute_of_day: int) -> str:
    """The local time (the hub's ``[tariff] timezone``), to the minute."""
    h, mi = divmod(minute_of_day % 1440, 60)
    return f"the local time is {h:02d}:{mi:02d}"


def tariff_fact(period: str) -> str:
    """The tariff period now: ``peak`` or ``off-peak`` (``Tariff.period_at``)."""
    return f"the tariff period is {period}"


REQUEST_TOO_HIGH: Final = "the request is above what the device accepts"

# What each fact says, as a key the adapter's trace can match: the compact
# prompt writes "- home=no" for "nobody is at home", and the reading and the
# trace write each condition of the policy as the key it needs ("2: not
# home=yes yes"), so a
# condition holds when its key is among the facts; comparing two short
# strings is what a small model does reliably, judging a sentence against a
# condition in other words is not. Sentences the hub did not word get no key.
_KEYED: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(pattern), key)
    for pattern, key in (
        (r"power is over the limit\b", "power=over"),
        (r"power is near the limit$", "power=near"),
        (r"power is under the limit$", "power=under"),
        (re.escape(LONGER_THAN_GRACE) + "$", "grace=out"),
        (re.escape(WITHIN_GRACE) + "$", "grace=within"),
        (r"anomaly score is (high|normal|unknown)$", "anomaly={0}"),
        (r"someone is at home$", "home=yes"),
        (r"nobody is at home$", "home=no"),
        (r"device is marked critical$", "critical=yes"),
        (r"relay is (on|off)$", "relay={0}"),
        (r"the local time is (\d\d:\d\d)$", "time={0}"),
        (r"the tariff period is (peak|off-peak)$", "tariff={0}"),
    )
)
_REQUEST: Final = re.compile(r"operator asks to set the (.+?) to ")
# The label of each key (before its "="): what a fact is about.
FACT_LABELS: Final = (
    "power",
    "grace",
    "anomaly",
    "home",
    "critical",
    "relay",
    "time",
    "tariff",
    "request",
)


def request_key(sentence: str, *, too_high: bool) -> str | None:
    """The key of an operator's request ("operator asks to set the fan speed to
    4" -> ``request=fan-speed ok``): what it asks to set, and whether the hub
    found it above what the device accepts."""
    hit = _REQUEST.match(sentence.strip())
    if hit is None:
        return None
    what = "-".join(hit.group(1).split())
    return f"request={what} {'too-high' if too_high else 'ok'}"


_REQUEST_VALUE: Final = re.compile(
    r"operator asks to set the .+? to (-?\d+(?:\.\d+)?)(?![\d,]|\.\d)"
)


def request_value(sentence: str) -> int | float | None:
    """The value an operator's request asks for ("operator asks to set the fan
    speed to 4" -> 4, "... heater to 21.5 degrees" -> 21.5), a whole number as
    an int; None when ``sentence`` is not a request or states no number."""
    hit = _REQUEST_VALUE.match(sentence.strip())
    if hit is None:
        return None
    value = float(hit.group(1))
    return int(value) if value.is_integer() else value


def fact_keys(facts: Sequence[str]) -> list[str | None]:
    """The key of each fact the hub worded, in order (None where it has none). A
    request's key depends on whether the hub also states it is too high; that
    statement carries the request's key too (the hub states one request at
    most: a second would take the first one's key)."""
    facts = [x.strip() for x in facts]
    too_high = REQUEST_TOO_HIGH in facts
    request = next((k for x in facts if (k := request_key(x, too_high=too_high)) is not None), None)
    out: list[str | None] = []
    for x in facts:
        if x == REQUEST_TOO_HIGH or request_key(x, too_high=too_high) is not None:
            out.append(request)
            continue
        key = None
        for pattern, template in _KEYED:
            hit = pattern.match(x)
            if hit is not None:
                key = template.format(*hit.groups())
                break
        out.append(key)
    return out


# -- the prompt -------------------------------------------------------------------------


def _num(x: float) -> str:
    # 3600000, not 3.6e+06: plain digits are what the model is asked to write.
    return str(int(x)) if x == int(x) else repr(x)


def _kind_words(p: m.ParamSpec) -> str:
    lo, hi = _num(p.min), _num(p.max)
    if p.kind is m.ParamKind.Bool:
        return f"{p.name}: true or false"
    if p.kind is m.ParamKind.Int:
        return f"{p.name}: a whole number from {lo} to {hi}"
    if p.kind is m.ParamKind.Float:
        return f"{p.name}: a number from {lo} to {hi}"
    return f"{p.name}: text of {lo} to {hi} characters"


def describe_actions(caps: Sequence[m.Capability], *, none_first: bool = False) -> str:
    lines = []
    for c in caps:
        hint = ACTION_HINTS.get(c.action, "")
        params = "; ".join(_kind_words(p) for p in c.params) or "no params"
        lines.append(f"- {c.action}: {hint + '. ' if hint else ''}Params: {params}.")
    none = f"- {NONE_ACTION}: {NONE_HINT}. Params: no params."
    return "\n".join([none, *lines] if none_first else [*lines, none])


# Two worked examples on a device unlike any real one (a water pump), so the
# model sees the answer format and the habit of stating which policy sentence
# applies before naming the action. They teach the format, not the answers:
# they share no policy, fact or action with the devices it decides for.
_EXAMPLE_DEVICE: Final = "(example, a water pump with actions pump.stop and none)\n"
_EXAMPLE_POLICY: Final = (
    "When the tank is full, stop the pump. "
    "When the tank is empty, do nothing, the operator refills it."
)
EXAMPLES: Final[tuple[tuple[tuple[str, ...], dict[str, object]], ...]] = (
    (
        ("tank is empty", "pump is off"),
        {"reason": "the tank is empty: the policy says do nothing", "action": "none", "params": {}},
    ),
    (
        ("pump is on", "tank is full"),
        {
            "reason": "the tank is full: the policy says stop the pump",
            "action": "pump.stop",
            "params": {},
        },
    ),
)


def _question(facts: Iterable[str], policy: str) -> str:
    return f"Policy: {policy.strip()}\nFacts:\n{_facts(facts)}\nWhat is the action now?"


def _facts(facts: Iterable[str]) -> str:
    lines = [f"- {x.strip()}" for x in facts if x.strip()]
    return "\n".join(lines) or "- nothing to report"


READ_ASK: Final = "Read the policy."


def _reading_system(caps: Sequence[m.Capability], policy: str) -> str:
    # What every device shares first (the instructions, then doing nothing),
    # then its own actions, then the policy.
    return (
        "Read the operator's policy for one device.\n"
        "Write one line a rule, in the policy's order: its conditions as the fact keys "
        "they need, then -> and its action. Last, the default.\n"
        f"Actions:\n{describe_actions(caps, none_first=True)}\n"
        f"Policy: {policy.strip()}"
    )


def reading_messages(caps: Sequence[m.Capability], policy: str) -> list[dict[str, str]]:
    """The messages that ask a fine-tuned adapter to read ``policy`` once; the
    answer, under ``grammar.reading_gbnf(caps)``, is its reading (``hub.decide.reading``)."""
    return [
        {"role": "system", "content": _reading_system(caps, policy)},
        {"role": "user", "content": READ_ASK},
    ]


def reading_conversation(
    caps: Sequence[m.Capability], policy: str, reading: str
) -> list[dict[str, str]]:
    """``reading_messages`` and the reading: what an adapter is trained on."""
    return [*reading_messages(caps, policy), {"role": "assistant", "content": reading}]


def build_messages(
    caps: Sequence[m.Capability], facts: Iterable[str], policy: str
) -> list[dict[str, str]]:
    """Chat messages asking the base model for one decision: system, two
    worked examples, the question."""
    system = (
        "You are the decision module of a home energy hub. You choose the one action to "
        "take now for one device, following the operator's policy exactly and using only "
        "the facts given.\n"
        "The device accepts these actions:\n"
        f"{describe_actions(caps)}\n"
        'Answer with one JSON object: {"reason": ..., "action": ..., "params": {...}}. '
        "In the reason, first quote the sentence of the policy that applies to the facts; "
        "then give the action it asks for."
    )
    messages = [{"role": "system", "content": system}]
    for example_facts, answer in EXAMPLES:
        question = _question(example_facts, _EXAMPLE_POLICY)
        messages.append({"role": "user", "content": _EXAMPLE_DEVICE + question})
        messages.append({"role": "assistant", "content": json.dumps(answer)})
    messages.append({"role": "user", "content": _question(facts, policy)})
    return messages


def prompt_sha256(messages: Sequence[dict[str, str]]) -> str:
    """The hash recorded in provenance: canonical JSON of the messages, UTF-8."""
    text = json.dumps(list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
