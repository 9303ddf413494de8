"""When the LLM tier is consulted without a rule firing: a device's facts changed.

The lower tiers act on thresholds; the operator's policy in words may ask for
more (switch the heater off during the peak tariff, lower the limit when
power comes near it). So the engine also consults the LLM when what it would
state about a device changes, not only after a rule fired. What counts is the
device's *state*: power against its limit (over, near, under), the anomaly
score (high or normal), the tariff period and whether it is critical. The
clock and durations ("over the limit for 12 s") change all the time and are
stated, not watched.

    watch = FactWatch()
    if watch.observe("plug-1", State("near", None, "peak", False), now_ms):
        ...  # consult the LLM with the device's facts

A device's first state (a new leader, a new device) is its baseline: nothing
is consulted for it, only for a change from there. A device is consulted at
most once per ``min_interval_ms``: a change within it is asked about once the
interval is over, if it still holds; one that came back asks for nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

NEAR_FRACTION: Final = 0.9  # power at or above this share of the limit is near it


def power_state(watts: float, limit_w: float | None) -> str | None:
    """``over``, ``near`` or ``under`` the device's limit; None without a limit
    (or without a finite reading)."""
    if limit_w is None or limit_w <= 0 or not math.isfinite(watts):
        return None
    if watts > limit_w:
        return "over"
    return "near" if watts >= NEAR_FRACTION * limit_w else "under"


@dataclass(frozen=True, slots=True)
class State:
    """What a consultation depends on, without the clock."""

    power: str | None  # power_state
    anomaly_high: bool | None  # None: not scored yet
    tariff: str | None  # "peak", "off-peak", None: no time-of-use tariff
    critical: bool


class FactWatch:
    def __init__(self, min_interval_ms: int = 10_000, max_devices: int = 100_000) -> None:
        self.min_interval_ms = min_interval_ms
        self.max_devices = max_devices
        self._base: dict[str, State] = {}  # the state last consulted on (or the first seen)
        self._asked_ms: dict[str, int] = {}
        self.changes = 0  # consultations asked for

    def observe(self, device_id: str, state: State, now_ms: int) -> bool:
        """Note the device's state; True when it differs from the one last
        consulted on (or first seen) and a consultation is due. A change that
        comes back within the interval asks for nothing."""
        base = self._base.get(device_id)
        if base is None:
            if len(self._base) < self.max_devices:  # bounded against a flood of ids
                self._base[device_id] = state
            return False
        if state == base:
            return False
        last = self._asked_ms.get(device_id)
        if last is not None and now_ms - last < self.min_interval_ms:
            return False  # asked again once the interval is over, if it still holds
        self._base[device_id] = state
        self._asked_ms[device_id] = now_ms
        self.changes += 1
        return True

    def forget(self, device_id: str | None = None) -> None:
        """A removed device, or everything (this node stopped leading)."""
        if device_id is None:
            self._base.clear()
            self._asked_ms.clear()
        else:
            self._base.pop(device_id, None)
            self._asked_ms.pop(device_id, None)
