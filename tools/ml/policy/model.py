"""Structured policies over the facts the lower tiers state, and their reference interpreter.

A ``World`` is what the hub knows about one device at one moment (numbers
included: how long power has been over the limit, the grace period, the
local time). The model never sees it: ``tools.ml.policy.facts`` states it as
the symbolic sentences the lower tiers write. A ``Policy`` is an ordered list
of ``Rule``s and a default action; ``decide`` gives the action of the first
rule that matches, or the default.

A rule matches when every literal of ``when`` holds and no literal of
``unless`` holds ("..., unless E" and "except when E, ..." both mean this).
A literal is an atom with a polarity: ``Lit(Power("over"), False)`` is
"power is not over the limit".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, TypeAlias

PowerLevel: TypeAlias = Literal["over", "near", "under"]
Tariff: TypeAlias = Literal["peak", "off-peak"]
ParamValue: TypeAlias = bool | int | float


@dataclass(frozen=True, slots=True)
class Request:
    """An operator's request for a new value: ``target`` is a request kind of
    ``tools.ml.policy.devices.REQUESTS`` (``limit``, ``fan``, ...)."""

    target: str
    value: int
    acceptable: bool  # within what the device accepts


@dataclass(frozen=True, slots=True)
class World:
    """One device at one moment. ``None``: the hub states nothing about it."""

    power: PowerLevel = "under"
    over_for_s: int = 0  # how long power has been over the limit (power == "over")
    grace_s: int | None = None  # the grace period the rules apply, if any
    anomaly_high: bool | None = None
    occupied: bool | None = None
    critical: bool = False  # stated only when true, as the hub does
    relay_on: bool | None = None  # None: the device has no relay
    minute: int | None = None  # local time, minutes after midnight
    tariff: Tariff | None = None
    request: Request | None = None


# -- atoms ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Power:
    level: PowerLevel
    kind: ClassVar[str] = "power"

    def holds(self, w: World) -> bool:
        return w.power == self.level


@dataclass(frozen=True, slots=True)
class Grace:
    """Power over the limit for longer than the grace period (``beyond``) or within it."""

    beyond: bool
    kind: ClassVar[str] = "grace"

    def holds(self, w: World) -> bool:
        if w.power != "over" or w.grace_s is None:
            return False
        return (w.over_for_s > w.grace_s) == self.beyond


@dataclass(frozen=True, slots=True)
class Anomaly:
    high: bool
    kind: ClassVar[str] = "anomaly"

    def holds(self, w: World) -> bool:
        return w.anomaly_high is not None and w.anomaly_high == self.high


@dataclass(frozen=True, slots=True)
class Occupied:
    kind: ClassVar[str] = "occupancy"

    def holds(self, w: World) -> bool:
        return w.occupied is True


@dataclass(frozen=True, slots=True)
class Critical:
    kind: ClassVar[str] = "critical"

    def holds(self, w: World) -> bool:
        return w.critical


@dataclass(frozen=True, slots=True)
class Relay:
    on: bool
    kind: ClassVar[str] = "relay"

    def holds(self, w: World) -> bool:
        return w.relay_on is not None and w.relay_on == self.on


@dataclass(frozen=True, slots=True)
class Window:
    """Local time in ``start`` (inclusive) .. ``end`` (exclusive), minutes after
    midnight; a window whose end is before its start runs across midnight."""

    start: int
    end: int
    kind: ClassVar[str] = "time"

    def holds(self, w: World) -> bool:
        if w.minute is None:
            return False
        if self.start <= self.end:
            return self.start <= w.minute < self.end
        return w.minute >= self.start or w.minute < self.end


@dataclass(frozen=True, slots=True)
class TariffIs:
    period: Tariff
    kind: ClassVar[str] = "tariff"

    def holds(self, w: World) -> bool:
        return w.tariff == self.period


@dataclass(frozen=True, slots=True)
class Asks:
    """The operator asks for a new value of ``target``, one the device accepts
    (``acceptable``) or one above what it accepts."""

    target: str
    acceptable: bool = True
    kind: ClassVar[str] = "request"

    def holds(self, w: World) -> bool:
        r = w.request
        return r is not None and r.target == self.target and r.acceptable == self.acceptable


Atom: TypeAlias = Power | Grace | Anomaly | Occupied | Critical | Relay | Window | TariffIs | Asks


@dataclass(frozen=True, slots=True)
class Lit:
    atom: Atom
    positive: bool = True

    def holds(self, w: World) -> bool:
        return self.atom.holds(w) == self.positive


# -- rules and actions ---------------------------------------------------------------------

FROM_REQUEST: Final = "from-request"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """An action with its parameters; a parameter whose value is ``FROM_REQUEST``
    takes the value of the operator's request."""

    action: str
    params: tuple[tuple[str, ParamValue | str], ...] = ()

    def resolve(self, w: World) -> dict[str, ParamValue]:
        out: dict[str, ParamValue] = {}
        for name, value in self.params:
            if value == FROM_REQUEST:
                if w.request is None:
                    raise ValueError(f"{self.action}: {name} is the request's, but there is none")
                out[name] = w.request.value
            elif isinstance(value, str):
                raise ValueError(f"{self.action}: {name}={value!r} is not a parameter value")
            else:
                out[name] = value
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    when: tuple[Lit, ...]
    act: ActionSpec
    unless: tuple[Lit, ...] = ()

    def matches(self, w: World) -> bool:
        return all(x.holds(w) for x in self.when) and not any(x.holds(w) for x in self.unless)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    default: ActionSpec = field(default_factory=lambda: ActionSpec("none"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the interpreter chose: the action, its parameters, and the rule
    (index into ``policy.rules``; -1 for the default)."""

    action: str
    params: dict[str, ParamValue]
    rule: int


def decide(policy: Policy, w: World) -> Outcome:
    """The reference interpreter: the first rule that matches wins, else the default."""
    for i, rule in enumerate(policy.rules):
        if rule.matches(w):
            return Outcome(rule.act.action, rule.act.resolve(w), i)
    return Outcome(policy.default.action, policy.default.resolve(w), -1)


def atoms(policy: Policy) -> list[Atom]:
    """Every atom the policy refers to, in order of first appearance."""
    out: list[Atom] = []
    for r in policy.rules:
        for lit in (*r.when, *r.unless):
            if lit.atom not in out:
                out.append(lit.atom)
    return out
