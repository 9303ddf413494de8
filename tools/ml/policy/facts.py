"""A ``World`` as the symbolic facts the lower tiers state, in the hub's own wording.

Power, anomaly, relay, critical, grace, occupancy, local time and tariff are
worded by ``hub.decide.facts`` itself (the sentences the hub states); the
operator's requests are those of ``models/eval/decisions.jsonl``.
Facts have one wording each: the hub writes them, not the operator. Their
order is shuffled.
"""

from __future__ import annotations

import random
from typing import Final

from hub.decide import facts as hf
from tools.ml.policy.devices import REQUEST_BY_TARGET
from tools.ml.policy.model import World

LONGER_THAN_GRACE: Final = hf.LONGER_THAN_GRACE
WITHIN_GRACE: Final = hf.WITHIN_GRACE
TOO_HIGH: Final = hf.REQUEST_TOO_HIGH
OCCUPIED: Final = hf.occupancy_fact(True)
EMPTY: Final = hf.occupancy_fact(False)
time_fact = hf.time_fact
tariff_fact = hf.tariff_fact


def clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def groups(w: World) -> list[list[str]]:
    """Every fact the hub states about ``w``, in a fixed order; a sentence that
    refers to the one before it ("this is longer than the grace period") is
    kept with it."""
    out: list[list[str]] = []
    if w.power == "over":
        power = [hf.power_fact(over_for_s=w.over_for_s)]
        if w.grace_s is not None:
            power.append(LONGER_THAN_GRACE if w.over_for_s > w.grace_s else WITHIN_GRACE)
        out.append(power)
    else:
        out.append([hf.power_fact(near=w.power == "near")])
    if w.anomaly_high is not None:
        out.append([hf.anomaly_fact(0.95 if w.anomaly_high else 0.1)])
    if w.occupied is not None:
        out.append([OCCUPIED if w.occupied else EMPTY])
    if w.critical:
        out.append([hf.critical_fact()])
    if w.relay_on is not None:
        out.append([hf.relay_fact(w.relay_on)])
    if w.minute is not None:
        out.append([time_fact(w.minute)])
    if w.tariff is not None:
        out.append([tariff_fact(w.tariff)])
    if w.request is not None:
        request = [REQUEST_BY_TARGET[w.request.target].fact.format(v=w.request.value)]
        if not w.request.acceptable:
            request.append(TOO_HIGH)
        out.append(request)
    return out


def sentences(w: World) -> list[str]:
    return [x for g in groups(w) for x in g]


def shuffled(w: World, rng: random.Random) -> list[str]:
    """The facts in a random order (a sentence stays after the one it refers to)."""
    out = groups(w)
    rng.shuffle(out)
    return [x for g in out for x in g]
