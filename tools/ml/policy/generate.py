"""Seeded examples: a device, a structured policy, a world, and the interpreter's action.

For each example the generator picks a device (``devices.KINDS``), the action
the answer must have (uniformly over the device's actions and ``none``, so no
split rewards a constant answer), an ordered policy in which some rule (or the
default) names that action, and a world in which that rule is the first to
match; the label is what ``model.decide`` computes. Every example of a split
uses that split's layout families, exception styles, wordings and policy
shapes only. Example ``i`` of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Final

from tools.ml.policy import model as pm
from tools.ml.policy.devices import FIXED, REQUEST_BY_ACTION, DeviceKind
from tools.ml.policy.lexicon import Split
from tools.ml.policy.render import can_negate

ROOMS: Final = (
    "kitchen", "garage", "office", "living room", "bedroom", "hall", "workshop",
    "cellar", "attic", "studio", "laundry", "porch",
)  # fmt: skip
WINDOWS: Final = (
    (22 * 60, 6 * 60),
    (23 * 60, 7 * 60),
    (21 * 60 + 30, 5 * 60 + 30),
    (0, 6 * 60),
    (8 * 60, 18 * 60),
    (17 * 60, 21 * 60),
    (6 * 60, 9 * 60),
)
# Rules in a policy. The test split keeps policygen-4's counts (its draws,
# and so its scenarios, are unchanged); the training split leans to long
# policies, which a small model reads worst (a rule dropped or a condition
# carried to the next rule), and goes one rule beyond the test split.
RULE_COUNTS: Final = (1, 2, 2, 3, 3, 3, 4, 4, 5, 5)
TRAIN_RULE_COUNTS: Final = (1, 2, 3, 3, 4, 4, 5, 5, 6, 6)


def group(atom: pm.Atom) -> str:
    """Atoms of one group describe one fact; a rule names each group once."""
    return "power" if isinstance(atom, pm.Grace) else atom.kind


def shape(policy: pm.Policy) -> str:
    """The policy's shape: the groups each rule tests (negations marked !), its
    exceptions, and whether the default acts."""

    def lits(xs: tuple[pm.Lit, ...]) -> str:
        return ",".join(sorted(("" if x.positive else "!") + group(x.atom) for x in xs))

    rules = [lits(r.when) + (f"/unless:{lits(r.unless)}" if r.unless else "") for r in policy.rules]
    return " | ".join([*rules, "default:" + ("none" if policy.default.action == "none" else "act")])


def shape_split(sig: str) -> Split:
    """A quarter of the shapes belong to the test split, by a stable hash."""
    return "test" if int(hashlib.sha256(sig.encode()).hexdigest()[:8], 16) % 4 == 0 else "train"


# -- policies ------------------------------------------------------------------------------


def _requests(kind: DeviceKind) -> list[str]:
    return [REQUEST_BY_ACTION[c.action].target for c in kind.caps if c.action in REQUEST_BY_ACTION]


def _atom(grp: str, kind: DeviceKind, rng: random.Random) -> pm.Atom:
    if grp == "power":
        if rng.random() < 0.3:
            return pm.Grace(rng.random() < 0.6)
        return pm.Power(rng.choice(("over", "over", "near", "under")))
    if grp == "anomaly":
        return pm.Anomaly(rng.random() < 0.7)
    if grp == "occupancy":
        return pm.Occupied()
    if grp == "critical":
        return pm.Critical()
    if grp == "relay":
        return pm.Relay(rng.random() < 0.5)
    if grp == "time":
        return pm.Window(*rng.choice(WINDOWS))
    if grp == "tariff":
        return pm.TariffIs(rng.choice(("peak", "off-peak")))
    return pm.Asks(rng.choice(_requests(kind)), rng.random() < 0.5)


def _groups(kind: DeviceKind) -> list[str]:
    out = ["power", "power", "anomaly", "occupancy", "critical", "time", "tariff"]
    if kind.has_relay:
        out.append("relay")
    if _requests(kind):
        out.append("request")
    return out


def _action(action: str, rng: random.Random) -> pm.ActionSpec:
    if action == "none":
        return pm.ActionSpec("none")
    fixed = FIXED.get(action)
    if not fixed:
        return pm.ActionSpec(action)
    name, values = next(iter(fixed.items()))
    if action in REQUEST_BY_ACTION and rng.random() < 0.5:
        return pm.ActionSpec(action, ((name, pm.FROM_REQUEST),))
    return pm.ActionSpec(action, ((name, rng.choice(values)),))


def _rule(kind: DeviceKind, act: pm.ActionSpec, rng: random.Random) -> pm.Rule:
    pool = _groups(kind)
    when: list[pm.Lit] = []
    if act.params and act.params[0][1] == pm.FROM_REQUEST:
        when.append(pm.Lit(pm.Asks(REQUEST_BY_ACTION[act.action].target, True)))
    n = rng.choices((1, 2, 3), (55, 35, 10))[0]
    used = {group(x.atom) for x in when}
    while len(when) < n:
        grp = rng.choice(pool)
        if grp in used:
            continue
        used.add(grp)
        atom = _atom(grp, kind, rng)
        when.append(pm.Lit(atom, not (can_negate(atom) and rng.random() < 0.2)))
    unless: list[pm.Lit] = []
    if rng.random() < 0.3:
        spare = [g for g in ("power", "anomaly", "occupancy", "critical", "tariff", "time")]
        for grp in rng.sample([g for g in spare if g not in used], rng.choice((1, 1, 1, 2))):
            atom = _atom(grp, kind, rng)
            if can_negate(atom):
                unless.append(pm.Lit(atom))
    return pm.Rule(tuple(when), act, tuple(unless))


def random_policy(
    kind: DeviceKind, target: str, rng: random.Random, counts: Sequence[int] = RULE_COUNTS
) -> tuple[pm.Policy, int]:
    """A policy of ``counts`` (one drawn) rules where rule ``pos`` (or the
    default: ``pos == -1``) names ``target``."""
    actions = [c.action for c in kind.caps] + ["none"]
    others = [a for a in actions if a != target]
    n = rng.choice(counts)
    pos = rng.randrange(n + 1)
    if pos == n and target != "none" and rng.random() < 0.5:
        pos = rng.randrange(n)
    rules = [
        _rule(kind, _action(target if i == pos else rng.choice(others), rng), rng) for i in range(n)
    ]
    if pos == n:
        default = target
    elif target == "none" or rng.random() < 0.4:
        default = rng.choice(others)
    else:
        default = "none"
    spec = _action(default, rng)
    if any(v == pm.FROM_REQUEST for _, v in spec.params):  # a default has no request to use
        spec = pm.ActionSpec(default, ((spec.params[0][0], FIXED[default][spec.params[0][0]][0]),))
    return pm.Policy(tuple(rules), spec), (-1 if pos == n else pos)
