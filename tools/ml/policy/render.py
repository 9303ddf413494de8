"""A structured policy in words: layout families, exception styles, wordings.

A layout family is how the rules are laid out (a numbered list, an
"otherwise" chain, bullets, ordinals, the default first); an exception style
is how a rule's ``unless`` is said ("unless", the negated condition,
"except when", "but not if"). Each family and style belongs to one split
(``LAYOUTS``, ``EXCEPTIONS``). A rendering keeps the structure its text
states: the ``and_not`` style moves the exceptions into the condition as
negations, and conditions are said in a shuffled order; the tests check that
every such rewrite gives the same action as the original policy.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from tools.ml.policy import model as pm
from tools.ml.policy.facts import clock
from tools.ml.policy.lexicon import REQUEST_WHAT, Split, Wording, negatable

# layout family -> split; exception style -> split
LAYOUTS: Final[dict[str, Split]] = {
    "numbered": "train",
    "chain": "train",
    "bullets": "train",
    "labelled": "train",
    "else_if": "train",
    "action_first": "train",
    "lettered": "train",
    "default_lead": "train",
    "default_bullets": "train",
    "default_but": "train",
    "semicolons": "train",
    "default_semicolons": "train",
    "ordinal": "test",
    "default_first": "test",
}
EXCEPTIONS: Final[dict[str, Split]] = {
    "unless": "train",
    "and_not": "train",
    "except_if": "train",
    "unless_first": "train",
    "but_not_when": "train",
    "excluding_when": "train",
    "save_when": "train",
    "other_than_when": "train",
    "but_never_when": "train",
    "except_where": "train",
    "with_the_exception": "train",
    "apart_from_when": "train",
    "skip_if": "train",
    "only_if_not": "train",
    "except_when": "test",
    "but_not_if": "test",
}
# exception style -> the words between a rule and its exception
EXCEPTION_WORDS: Final[dict[str, str]] = {
    "except_when": ", except when",
    "but_not_if": ", but not if",
    "except_if": ", except if",
    "but_not_when": ", but not when",
    "excluding_when": ", excluding when",
    "save_when": ", save when",
    "other_than_when": ", other than when",
    "but_never_when": ", but never when",
    "except_where": ", except where",
    "with_the_exception": ", with the exception of when",
    "apart_from_when": ", apart from when",
    "skip_if": "; skip this if",
    "only_if_not": ", but only if not",
}
ORDINALS: Final = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth")


@dataclass(frozen=True, slots=True)
class Rendering:
    text: str
    segments: tuple[str, ...]  # each rule's sentence, then the default's
    policy: pm.Policy  # the structure the text states
    layout: str
    exception: str  # "" when no rule has an exception
    wording: tuple[str, ...]  # the ids of the wordings used
    actions: tuple[str, ...] = ()  # each rule's action as the text words it, then the default's


def lit_key(lit: pm.Lit) -> tuple[str, dict[str, object]]:
    """The phrase key of a literal and the values its wording takes."""
    a, sign = lit.atom, "+" if lit.positive else "-"
    if isinstance(a, pm.Power):
        return f"power.{a.level}{sign}", {}
    if isinstance(a, pm.Grace):
        return f"grace.{'beyond' if a.beyond else 'within'}{sign}", {}
    if isinstance(a, pm.Anomaly):
        return f"anomaly.{'high' if a.high else 'normal'}{sign}", {}
    if isinstance(a, pm.Occupied):
        return f"occupancy{sign}", {}
    if isinstance(a, pm.Critical):
        return f"critical{sign}", {}
    if isinstance(a, pm.Relay):
        return f"relay.{'on' if a.on else 'off'}{sign}", {}
    if isinstance(a, pm.Window):
        return f"time{sign}", {"a": clock(a.start), "b": clock(a.end)}
    if isinstance(a, pm.TariffIs):
        return f"tariff.{a.period}{sign}", {}
    return f"request.{'ok' if a.acceptable else 'too_high'}{sign}", {"what": REQUEST_WHAT[a.target]}


def can_negate(atom: pm.Atom) -> bool:
    return negatable(lit_key(pm.Lit(atom))[0][:-1])


def _num(v: object) -> str:
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


def action_key(spec: pm.ActionSpec) -> tuple[str, dict[str, object]]:
    if spec.action == "none":
        return "act.none", {}
    if spec.action == "relay.set":
        return ("act.relay.on" if spec.params[0][1] is True else "act.relay.off"), {}
    if spec.action == "notify":
        return ("act.notify.urgent" if spec.params[0][1] is True else "act.notify.routine"), {}
    if not spec.params:
        return f"act.{spec.action}", {}
    value = spec.params[0][1]
    if value == pm.FROM_REQUEST:
        return f"act.{spec.action}.req", {}
    return f"act.{spec.action}", {"v": _num(value)}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


@dataclass
class _Words:
    w: Wording
    acts: list[str] = field(default_factory=list)  # each rule's action, as worded
    default_act: str = ""

    def cond(self, lits: tuple[pm.Lit, ...]) -> str:
        parts = []
        for lit in lits:
            key, fmt = lit_key(lit)
            parts.append(self.w.pick(key, **fmt))
        return " and ".join(parts)

    def act(self, spec: pm.ActionSpec) -> str:
        """A rule's action in words (the layouts word the rules in order)."""
        key, fmt = action_key(spec)
        phrase = self.w.pick(key, **fmt)
        self.acts.append(phrase)
        return phrase

    def default(self, spec: pm.ActionSpec) -> str:
        key, fmt = action_key(spec)
        self.default_act = self.w.pick(key, **fmt)
        return self.default_act


def _restate(policy: pm.Policy, style: str, rng: random.Random) -> pm.Policy:
    """The structure as the text will state it: the and_not style moves the
    exceptions into the condition, negated; conditions in a shuffled order."""
    rules = []
    for r in policy.rules:
        when, unless = list(r.when), list(r.unless)
        if style == "and_not" and unless:
            when += [pm.Lit(x.atom, not x.positive) for x in unless]
            unless = []
        rng.shuffle(when)
        rules.append(pm.Rule(tuple(when), r.act, tuple(unless)))
    return pm.Policy(tuple(rules), policy.default)


def _clause(words: _Words, rule: pm.Rule, style: str, lead: str, *, act_first: bool = False) -> str:
    """One rule as '<lead> <condition>, <action>[ exception]'; lead '' for bullets;
    ``act_first``: '<action> <lead> <condition>[ exception]'."""
    cond, act = words.cond(rule.when), words.act(rule.act)
    exc = " or ".join(words.cond((x,)) for x in rule.unless)
    if act_first:
        head = f"{act} {lead.lower()} {cond}"
    else:
        head = f"{lead} {cond}, {act}" if lead else f"{cond}: {act}"
    if not exc:
        return head
    if style in EXCEPTION_WORDS:
        return f"{head}{EXCEPTION_WORDS[style]} {exc}"
    if style == "unless_first" and not act_first:
        return f"unless {exc}, {head[:1].lower() + head[1:]}"
    return f"{head}, unless {exc}"


Layout = Callable[[_Words, pm.Policy, str, random.Random], tuple[str, list[str]]]


def _numbered(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    head = rng.choice(
        (
            "Rules for the {dev}; the first rule that applies wins:",
            "Policy for the {dev} (apply the first matching rule):",
        )
    ).format(dev=words.w.dev)
    lead = rng.choice(("When", "If"))
    segs = [_cap(_clause(words, r, style, lead)) + "." for r in p.rules]
    segs.append(f"Otherwise, {words.default(p.default)}.")
    lines = [f"{i}. {s}" for i, s in enumerate(segs, 1)]
    return "\n".join([head, *lines]), segs


def _chain(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    segs = []
    for i, r in enumerate(p.rules):
        clause = _clause(words, r, style, "if")
        segs.append(_cap(clause) + "." if i == 0 else f"Otherwise, {clause}.")
    segs.append(f"Otherwise, {words.default(p.default)}.")
    return " ".join(segs), segs


def _bullets(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    head = rng.choice(
        (
            "Follow the first line that applies to the {dev}:",
            "For the {dev}, go down this list and stop at the first match:",
        )
    ).format(dev=words.w.dev)
    segs = [_clause(words, r, style, "") for r in p.rules]
    segs.append(f"in any other case: {words.default(p.default)}")
    return "\n".join([head, *(f"- {s}" for s in segs)]), segs


def _labelled(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    head = rng.choice(
        (
            "The {dev} follows these rules, checked from the top:",
            "Decide for the {dev} with the first rule that matches:",
            "",
        )
    ).format(dev=words.w.dev)
    lead = rng.choice(("if", "when", "whenever"))
    segs = [_cap(_clause(words, r, style, lead)) + "." for r in p.rules]
    segs.append(_cap(f"{words.default(p.default)}."))
    lines = [f"Rule {i}: {s}" for i, s in enumerate(segs[:-1], 1)]
    lines.append(f"{rng.choice(('Default', 'Fallback', 'Else'))}: {segs[-1]}")
    return "\n".join([x for x in (head, *lines) if x]), segs


def _else_if(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    segs = []
    for i, r in enumerate(p.rules):
        clause = _clause(words, r, style, "if")
        segs.append(_cap(clause) + "." if i == 0 else f"Else {clause}.")
    segs.append(
        f"{rng.choice(('Else', 'In every other case', 'If not'))}, {words.default(p.default)}."
    )
    return " ".join(segs), segs


def _action_first(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    head = rng.choice(
        (
            "For the {dev}, in order of priority:",
            "What to do with the {dev} (the first line that applies counts):",
        )
    ).format(dev=words.w.dev)
    lead = rng.choice(("when", "if"))
    segs = [_cap(_clause(words, r, style, lead, act_first=True)) + "." for r in p.rules]
    segs.append(f"{rng.choice(('In all other cases', 'Otherwise'))}, {words.default(p.default)}.")
    lines = [f"{i}) {s}" for i, s in enumerate(segs, 1)]
    return "\n".join([head, *lines]), segs


def _lettered(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    head = f"Go through these for the {words.w.dev} and act on the first that is true."
    lead = rng.choice(("if", "when"))
    segs = [_clause(words, r, style, lead) + ";" for r in p.rules]
    segs.append(_cap(f"{words.default(p.default)} if none is true."))
    letters = "abcdefgh"
    lines = [f"({letters[i]}) {s}" for i, s in enumerate(segs[:-1])]
    return " ".join([head, *lines, segs[-1]]), segs


def _ordinal(words: _Words, p: pm.Policy, style: str, rng: random.Random) -> tuple[str, list[str]]:
    segs = [f"{ORDINALS[i]}, {_clause(words, r, style, 'when')}." for i, r in enumerate(p.rules)]
    segs.append(f"If none of these applies, {words.default(p.default)}.")
    return " ".join(segs), segs


def _default_first(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    default = f"Normally, {words.default(p.default)}."
    intro = (
        f"The exceptions for the {words.w.dev}, in order of priority "
        "(the earliest that applies wins):"
    )
    segs = [_clause(words, r, style, "when") for r in p.rules]
    text = f"{default} {intro} " + "; ".join(segs) + "."
    return text, [*segs, default]


def _default_lead(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    default = rng.choice(("By default, {a}.", "As a rule, {a}.", "{A} by default.")).format(
        a=(a := words.default(p.default)), A=_cap(a)
    )
    head = rng.choice(
        (
            "These come before that, the first that applies to the {dev}:",
            "But for the {dev} these override it, top one first:",
        )
    ).format(dev=words.w.dev)
    lead = rng.choice(("If", "When"))
    segs = [_cap(_clause(words, r, style, lead)) + "." for r in p.rules]
    lines = [f"{i}. {x}" for i, x in enumerate(segs, 1)]
    return "\n".join([default, head, *lines]), [*segs, default]


def _default_bullets(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    default = rng.choice(
        (
            "Unless a line below applies, {a}.",
            "If no line below matches, {a}.",
        )
    ).format(a=words.default(p.default))
    head = f"Lines for the {words.w.dev}, the highest that matches counts:"
    segs = [_clause(words, r, style, "") for r in p.rules]
    return "\n".join([default, head, *(f"* {x}" for x in segs)]), [*segs, default]


def _default_but(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    default = rng.choice(("Usually {a}.", "Mostly, {a}.")).format(a=words.default(p.default))
    segs = []
    for i, r in enumerate(p.rules):
        clause = _clause(words, r, style, "if")
        segs.append(f"But {clause}." if i == 0 else f"Failing that, {clause}.")
    return " ".join([default, *segs]), [*segs, default]


def _semicolons(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    head = rng.choice(("For the {dev}:", "What the {dev} does, in this order:")).format(
        dev=words.w.dev
    )
    lead = rng.choice(("if", "when"))
    segs = [_clause(words, r, style, lead) for r in p.rules]
    last = rng.choice(("and if none of that holds, {a}", "otherwise {a}", "else {a}"))
    segs.append(last.format(a=words.default(p.default)))
    return f"{head} " + "; ".join(segs) + ".", segs


def _default_semicolons(
    words: _Words, p: pm.Policy, style: str, rng: random.Random
) -> tuple[str, list[str]]:
    default = rng.choice(
        ("{A} unless something below applies.", "The usual action: {a}.", "In general, {a}.")
    ).format(a=(a := words.default(p.default)), A=_cap(a))
    intro = rng.choice(
        (
            "Overrides for the {dev}, checked in turn, the first true one deciding:",
            "Before that, check these in turn and take the first that fits:",
            "Special cases for the {dev}, highest priority first:",
        )
    ).format(dev=words.w.dev)
    lead = rng.choice(("if", "when"))
    segs = [_clause(words, r, style, lead) for r in p.rules]
    return f"{default} {intro} " + "; ".join(segs) + ".", [*segs, default]


LAYOUT_FUNCS: Final[dict[str, Layout]] = {
    "semicolons": _semicolons,
    "default_semicolons": _default_semicolons,
    "default_lead": _default_lead,
    "default_bullets": _default_bullets,
    "default_but": _default_but,
    "numbered": _numbered,
    "chain": _chain,
    "bullets": _bullets,
    "labelled": _labelled,
    "else_if": _else_if,
    "action_first": _action_first,
    "lettered": _lettered,
    "ordinal": _ordinal,
    "default_first": _default_first,
}


def render(
    policy: pm.Policy, dev: str, split: Split, rng: random.Random, layout: str | None = None
) -> Rendering:
    """The policy in words of ``split``: a layout family and exception style of it."""
    layout = layout or rng.choice(sorted(k for k, v in LAYOUTS.items() if v == split))
    if LAYOUTS[layout] != split:
        raise ValueError(f"layout {layout!r} belongs to the {LAYOUTS[layout]} split")
    has_exc = any(r.unless for r in policy.rules)
    style = rng.choice(sorted(k for k, v in EXCEPTIONS.items() if v == split)) if has_exc else ""
    if style == "and_not" and not all(can_negate(x.atom) for r in policy.rules for x in r.unless):
        style = "unless"
    stated = _restate(policy, style, rng)
    words = _Words(Wording(split, rng, dev))
    text, segs = LAYOUT_FUNCS[layout](words, stated, style, rng)
    if len(words.acts) != len(stated.rules) or not words.default_act:
        raise ValueError(f"{layout}: {len(words.acts)} actions worded for {len(stated.rules)}")
    actions = (*words.acts, words.default_act)
    return Rendering(text, tuple(segs), stated, layout, style, tuple(words.w.used), actions)
