"""Worlds for a policy: random states of a device, pushed to make one rule apply.

``random_world`` states every fact the policy refers to (so a negated
condition is never about an unstated fact) and some others as distractors.
``make(lit, world, rng)`` returns a world in which the literal holds, choosing
boundary values often: a local time at a window's first or last minute or
just outside it, an overload exactly as long as the grace period (which is
still within it, as the hub states). A world whose time is a window's end
minute is not used: "from 22:00 to 06:00" at 06:00 reads either way.
"""

from __future__ import annotations

import random
from dataclasses import replace

from tools.ml.policy import model as pm
from tools.ml.policy.devices import REQUEST_BY_ACTION, REQUEST_BY_TARGET, DeviceKind

GRACES = (10, 30, 60, 120)
OVER_FOR = (3, 5, 8, 12, 20, 30, 45, 60, 90, 120, 240)
LEVELS: tuple[pm.PowerLevel, ...] = ("over", "near", "under")


def _request(target: str, acceptable: bool, rng: random.Random) -> pm.Request:
    rk = REQUEST_BY_TARGET[target]
    return pm.Request(target, rng.choice(rk.choices if acceptable else rk.too_high), acceptable)


def random_world(kind: DeviceKind, policy: pm.Policy, rng: random.Random) -> pm.World:
    kinds = {a.kind for a in pm.atoms(policy)}

    def stated(k: str, p: float = 0.3) -> bool:
        return k in kinds or rng.random() < p

    targets = [
        REQUEST_BY_ACTION[c.action].target for c in kind.caps if c.action in REQUEST_BY_ACTION
    ]
    asked = [a.target for a in pm.atoms(policy) if isinstance(a, pm.Asks)]
    request = None
    if targets and rng.random() < (0.6 if asked else 0.1):
        request = _request(rng.choice(asked or targets), rng.random() < 0.75, rng)
    return pm.World(
        power=rng.choices(LEVELS, (4, 3, 3))[0],
        over_for_s=rng.choice(OVER_FOR),
        grace_s=rng.choice(GRACES) if stated("grace", 0.15) else None,
        anomaly_high=rng.random() < 0.5 if stated("anomaly") else None,
        occupied=rng.random() < 0.5 if stated("occupancy") else None,
        critical=rng.random() < (0.5 if "critical" in kinds else 0.15),
        relay_on=rng.random() < 0.6 if kind.has_relay else None,
        minute=rng.randrange(0, 1440, 5) if stated("time", 0.2) else None,
        tariff=rng.choice(("peak", "off-peak")) if stated("tariff", 0.2) else None,
        request=request,
    )


def _window_minute(win: pm.Window, inside: bool, rng: random.Random) -> int:
    length = (win.end - win.start) % 1440
    if inside:
        return rng.choice(
            (win.start, (win.end - 1) % 1440, (win.start + rng.randrange(length)) % 1440)
        )
    outside = (win.start - 1, win.end + 1, win.end + 1 + rng.randrange(1440 - length - 1))
    return rng.choice(outside) % 1440


def _grace(w: pm.World, beyond: bool, rng: random.Random) -> pm.World:
    grace = w.grace_s if w.grace_s is not None else rng.choice(GRACES)
    if beyond:
        over = grace + rng.choice((1, 5, 20, 60, 200))
    else:
        over = max(1, grace - rng.choice((0, 0, 1, 5, grace // 2)))
    return replace(w, power="over", grace_s=grace, over_for_s=over)


def make(lit: pm.Lit, w: pm.World, rng: random.Random) -> pm.World:
    """``w`` changed so that ``lit`` holds."""
    a, pos = lit.atom, lit.positive
    if isinstance(a, pm.Power):
        level = a.level if pos else rng.choice([x for x in LEVELS if x != a.level])
        return replace(w, power=level)
    if isinstance(a, pm.Grace):
        if pos or rng.random() < 0.6:
            return _grace(w, a.beyond == pos, rng)
        return replace(w, power=rng.choice(("near", "under")))
    if isinstance(a, pm.Anomaly):
        return replace(w, anomaly_high=a.high == pos)
    if isinstance(a, pm.Occupied):
        return replace(w, occupied=pos)
    if isinstance(a, pm.Critical):
        return replace(w, critical=pos)
    if isinstance(a, pm.Relay):
        return replace(w, relay_on=a.on == pos)
    if isinstance(a, pm.Window):
        return replace(w, minute=_window_minute(a, pos, rng))
    if isinstance(a, pm.TariffIs):
        other: pm.Tariff = "off-peak" if a.period == "peak" else "peak"
        return replace(w, tariff=a.period if pos else other)
    if pos:
        return replace(w, request=_request(a.target, a.acceptable, rng))
    if rng.random() < 0.5:
        return replace(w, request=None)
    return replace(w, request=_request(a.target, not a.acceptable, rng))


def world_for(
    kind: DeviceKind, policy: pm.Policy, pos: int, rng: random.Random, tries: int
) -> pm.World | None:
    """A world in which rule ``pos`` (-1: the default) is the first to apply, or None."""
    ends = {a.end for a in pm.atoms(policy) if isinstance(a, pm.Window)}
    for _ in range(tries):
        w = random_world(kind, policy, rng)
        for i, rule in enumerate(policy.rules):
            if i == pos:
                continue
            # Earlier rules: often pushed to fail; later ones sometimes to match
            # too, so that the order decides.
            if (i < pos or pos == -1) and rng.random() < 0.7:
                lit = rng.choice((*rule.when,))
                w = make(pm.Lit(lit.atom, not lit.positive), w, rng)
            elif i > pos >= 0 and rng.random() < 0.3:
                for lit in rule.when:
                    w = make(lit, w, rng)
        if pos >= 0:
            for lit in policy.rules[pos].when:
                w = make(lit, w, rng)
            for lit in policy.rules[pos].unless:
                w = make(pm.Lit(lit.atom, not lit.positive), w, rng)
        if w.minute in ends:
            continue
        if pm.decide(policy, w).rule == pos:
            return w
    return None
