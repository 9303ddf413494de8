"""The devices the data covers: capability sets, the actions' parameters, requests.

The plug's actions come from ``protocol/profiles.py``; the others (a fan, a
heater, a charger, notifications) are actions beyond the plug's, so the model
learns to read the capability list rather than to remember the plug's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from protocol import messages as m
from protocol import profiles

BOOL, INT, FLOAT = m.ParamKind.Bool, m.ParamKind.Int, m.ParamKind.Float

NOTIFY: Final = m.Capability("notify", (m.ParamSpec("urgent", BOOL, 0.0, 1.0),))
FAN_SPEED: Final = m.Capability("fan.speed", (m.ParamSpec("level", INT, 0.0, 5.0),))
HEATER_SET: Final = m.Capability("heater.set", (m.ParamSpec("celsius", FLOAT, 5.0, 30.0),))
CHARGE_SET: Final = m.Capability("charge.set", (m.ParamSpec("amps", INT, 6.0, 32.0),))
LIGHT_DIM: Final = m.Capability("light.dim", (m.ParamSpec("percent", INT, 0.0, 100.0),))

R, L, S, RB = profiles.RELAY_SET, profiles.LIMIT_SET, profiles.SAMPLE_SET, profiles.REBOOT


@dataclass(frozen=True, slots=True)
class DeviceKind:
    name: str  # used in device names: "kitchen heater", "heater-3"
    caps: tuple[m.Capability, ...]

    @property
    def has_relay(self) -> bool:
        return any(c.action == "relay.set" for c in self.caps)


# Capability sets, from the plug's own to ones that share none of its actions.
KINDS: Final[tuple[DeviceKind, ...]] = (
    DeviceKind("plug", (R, L, S, RB)),
    DeviceKind("plug", (R, L, RB, NOTIFY)),
    DeviceKind("meter", (S, RB)),
    DeviceKind("meter", (S, NOTIFY)),
    DeviceKind("switch", (R,)),
    DeviceKind("switch", (R, NOTIFY)),
    DeviceKind("fan", (FAN_SPEED, R, NOTIFY)),
    DeviceKind("fan", (FAN_SPEED, RB)),
    DeviceKind("heater", (HEATER_SET, R, NOTIFY)),
    DeviceKind("heater", (HEATER_SET, L, RB)),
    DeviceKind("charger", (CHARGE_SET, R, NOTIFY)),
    DeviceKind("charger", (CHARGE_SET, L, S)),
    DeviceKind("lamp", (LIGHT_DIM, R)),
    DeviceKind("lamp", (LIGHT_DIM, NOTIFY, RB)),
)


@dataclass(frozen=True, slots=True)
class RequestKind:
    """What an operator may ask for: the action and parameter it sets, and the
    sentence the hub states (``{v}`` the requested value)."""

    target: str
    action: str
    param: str
    fact: str
    choices: tuple[int, ...]  # acceptable values the data uses
    too_high: tuple[int, ...]  # values above what the device accepts


REQUESTS: Final[tuple[RequestKind, ...]] = (
    RequestKind(
        "limit",
        "limit.set",
        "watts",
        "operator asks to set the limit to {v} W",
        (500, 800, 1000, 1200, 1500, 2000, 2500, 3000),
        (4000, 5000, 7500),
    ),
    RequestKind(
        "fan",
        "fan.speed",
        "level",
        "operator asks to set the fan speed to {v}",
        (1, 2, 3, 4),
        (7, 9),
    ),
    RequestKind(
        "heater",
        "heater.set",
        "celsius",
        "operator asks to set the heater to {v} degrees",
        (16, 18, 19, 20, 21, 22, 24),
        (35, 40),
    ),
    RequestKind(
        "charge",
        "charge.set",
        "amps",
        "operator asks to set the charging current to {v} A",
        (6, 8, 10, 13, 16, 20, 25),
        (40, 63),
    ),
)
REQUEST_BY_ACTION: Final = {r.action: r for r in REQUESTS}
REQUEST_BY_TARGET: Final = {r.target: r for r in REQUESTS}

# Fixed parameter values a rule may set (the request's value is the other source).
FIXED: Final[dict[str, dict[str, tuple[Any, ...]]]] = {
    "relay.set": {"on": (False, True)},
    "limit.set": {"watts": (600, 1000, 1500, 2000)},
    "sample.set": {"interval_ms": (500, 1000, 5000, 60000)},
    "notify": {"urgent": (True, False)},
    "fan.speed": {"level": (0, 1, 3, 5)},
    "heater.set": {"celsius": (12, 16, 19, 21)},
    "charge.set": {"amps": (6, 10, 16, 32)},
    "light.dim": {"percent": (0, 20, 50, 100)},
}


def caps_json(caps: tuple[m.Capability, ...]) -> list[dict[str, Any]]:
    """Capabilities in the HTTP API's form, as scenario files hold them."""
    return [
        {
            "action": c.action,
            "params": [
                {"name": p.name, "kind": p.kind.name.lower(), "min": p.min, "max": p.max}
                for p in c.params
            ],
        }
        for c in caps
    ]
