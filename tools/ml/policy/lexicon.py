"""The operator's words: several phrasings of every condition and action.

Each phrase key has a list of wordings. The last third of each list (at least
one) is kept for the test split, the rest for training, so the test split
holds wordings the training split never had. A wording's id is
``key#index``; examples record the ids they use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

Split = Literal["train", "test"]

# {dev}: the device's name; {a}, {b}: clock times; {v}: a value.
PHRASES: Final[dict[str, tuple[str, ...]]] = {
    # conditions: key + for the literal, key - for its negation
    "power.over+": (
        "power is over the limit",
        "the {dev} draws more than its limit",
        "consumption is above the limit",
        "the load exceeds the power limit",
    ),
    "power.over-": (
        "power is not over the limit",
        "the {dev} does not draw more than its limit",
        "the load does not exceed the power limit",
    ),
    "power.near+": (
        "power is near the limit",
        "the {dev} is close to its limit",
        "the load is approaching the limit",
    ),
    "power.near-": (
        "power is not near the limit",
        "the {dev} is not close to its limit",
        "the load is not approaching the limit",
    ),
    "power.under+": (
        "power is under the limit",
        "the {dev} stays below its limit",
        "consumption is below the limit",
    ),
    "power.under-": (
        "power is not under the limit",
        "the {dev} does not stay below its limit",
        "consumption is not below the limit",
    ),
    "grace.beyond+": (
        "power has been over the limit for longer than the grace period",
        "the overload has lasted beyond the grace period",
        "the grace period of the overload has run out",
    ),
    "grace.within+": (
        "power is over the limit but still within the grace period",
        "the overload is still inside the grace period",
        "the grace period of the overload has not run out yet",
    ),
    "anomaly.high+": (
        "the anomaly score is high",
        "the anomaly detector flags the {dev}",
        "the readings of the {dev} look abnormal",
    ),
    "anomaly.high-": (
        "the anomaly score is not high",
        "the anomaly detector does not flag the {dev}",
        "the readings of the {dev} do not look abnormal",
    ),
    "anomaly.normal+": (
        "the anomaly score is normal",
        "the anomaly detector finds nothing unusual",
        "the readings of the {dev} look normal",
    ),
    "anomaly.normal-": (
        "the anomaly score is not normal",
        "the anomaly detector finds something unusual",
        "the readings of the {dev} do not look normal",
    ),
    "occupancy+": ("someone is at home", "the home is occupied", "people are in the house"),
    "occupancy-": ("nobody is at home", "the home is empty", "no one is in the house"),
    "critical+": (
        "the device is marked critical",
        "the {dev} is critical",
        "the {dev} is flagged as critical",
    ),
    "critical-": (
        "the device is not marked critical",
        "the {dev} is not critical",
        "the {dev} is not flagged as critical",
    ),
    "relay.on+": (
        "the relay is on",
        "the {dev} is switched on",
        "the relay of the {dev} is closed",
    ),
    "relay.off+": (
        "the relay is off",
        "the {dev} is switched off",
        "the relay of the {dev} is open",
    ),
    "time+": (
        "the time is between {a} and {b}",
        "it is from {a} to {b}",
        "the clock is inside the hours {a} to {b}",
    ),
    "time-": (
        "the time is not between {a} and {b}",
        "it is outside {a} to {b}",
        "the clock is outside the hours {a} to {b}",
    ),
    "tariff.peak+": (
        "the tariff period is peak",
        "electricity is at the peak rate",
        "the peak tariff applies",
    ),
    "tariff.peak-": (
        "the tariff period is not peak",
        "electricity is not at the peak rate",
        "the peak tariff does not apply",
    ),
    "tariff.off-peak+": (
        "the tariff period is off-peak",
        "electricity is at the off-peak rate",
        "the off-peak tariff applies",
    ),
    "tariff.off-peak-": (
        "the tariff period is not off-peak",
        "electricity is not at the off-peak rate",
        "the off-peak tariff does not apply",
    ),
    "request.ok+": (
        "the operator asks for a new {what} the device accepts",
        "there is an operator request for a {what} within what the device accepts",
        "the operator requests a {what} that the device allows",
    ),
    "request.too_high+": (
        "the operator asks for a {what} above what the device accepts",
        "the requested {what} is more than the device accepts",
        "the operator's {what} request exceeds what the device allows",
    ),
    # actions
    "act.none": ("do nothing", "take no action", "leave the {dev} as it is"),
    "act.relay.off": ("switch the relay off", "cut the power to the {dev}", "turn the {dev} off"),
    "act.relay.on": (
        "switch the relay on",
        "restore the power to the {dev}",
        "turn the {dev} back on",
    ),
    "act.limit.set": (
        "set the limit to {v} W",
        "change the power limit to {v} W",
        "make the limit {v} W",
    ),
    "act.limit.set.req": (
        "set the limit to exactly the value the operator asked for",
        "apply the limit the operator requested",
        "use the limit from the operator's request",
    ),
    "act.sample.set": (
        "sample every {v} ms",
        "set the sampling interval to {v} ms",
        "take a reading every {v} ms",
    ),
    "act.reboot": ("reboot the device", "restart the {dev}", "give the {dev} a restart"),
    "act.notify.urgent": (
        "send an urgent notification",
        "alert the operator urgently",
        "notify the operator, marked urgent",
    ),
    "act.notify.routine": (
        "send a routine notification",
        "notify the operator, not urgently",
        "notify the operator, marked not urgent",
    ),
    "act.fan.speed": ("set the fan speed to {v}", "run the fan at level {v}", "put the fan on {v}"),
    "act.fan.speed.req": (
        "set the fan to the speed the operator asked for",
        "use the fan speed the operator requested",
        "apply the requested fan speed",
    ),
    "act.heater.set": (
        "set the heater to {v} degrees",
        "heat to {v} degrees",
        "put the thermostat at {v} degrees",
    ),
    "act.heater.set.req": (
        "set the heater to the temperature the operator asked for",
        "heat to the temperature the operator requested",
        "apply the requested heater temperature",
    ),
    "act.charge.set": (
        "set the charging current to {v} A",
        "limit charging to {v} A",
        "charge at {v} A",
    ),
    "act.charge.set.req": (
        "set the charging current to what the operator asked for",
        "charge at the current the operator requested",
        "apply the requested charging current",
    ),
    "act.light.dim": (
        "dim the light to {v} percent",
        "set the brightness to {v} percent",
        "bring the light to {v} percent",
    ),
}

# What a request is for, in the operator's words.
REQUEST_WHAT: Final = {
    "limit": "power limit",
    "fan": "fan speed",
    "heater": "heater temperature",
    "charge": "charging current",
}


def indices(key: str, split: Split) -> range:
    """The wordings of ``key`` that ``split`` may use."""
    n = len(PHRASES[key])
    held = max(1, n // 3)
    return range(n - held, n) if split == "test" else range(0, n - held)


def negatable(key: str) -> bool:
    return f"{key}-" in PHRASES


@dataclass
class Wording:
    """Picks wordings for one split and records which it used."""

    split: Split
    rng: random.Random
    dev: str
    used: list[str] = field(default_factory=list)

    def pick(self, key: str, **fmt: object) -> str:
        i = self.rng.choice(indices(key, self.split))
        wid = f"{key}#{i}"
        if wid not in self.used:
            self.used.append(wid)
        return PHRASES[key][i].format(dev=self.dev, **fmt)
