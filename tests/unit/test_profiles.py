"""Device profiles (protocol/profiles.py) are the one source the device agrees with."""

from __future__ import annotations

from typing import Any

import pytest

from edge import executor
from protocol import messages as m
from protocol import profiles

pytestmark = pytest.mark.unit


def _device_form(caps: tuple[m.Capability, ...]) -> list[dict[str, Any]]:
    """The profile in the form edge/executor.py keeps it (wire enum values)."""
    return [
        {
            "action": c.action,
            "params": [
                {"name": p.name, "kind": int(p.kind), "min": p.min, "max": p.max} for p in c.params
            ],
        }
        for c in caps
    ]


def test_the_firmware_plug_table_is_the_plug_profile() -> None:
    assert _device_form(profiles.PLUG_CAPABILITIES) == executor.PLUG_CAPABILITIES


def test_a_changed_bound_would_be_caught() -> None:
    changed = list(profiles.PLUG_CAPABILITIES)
    watts = m.ParamSpec("watts", m.ParamKind.Float, 0.0, 3000.0)
    changed[1] = m.Capability("limit.set", (watts,))
    assert _device_form(tuple(changed)) != executor.PLUG_CAPABILITIES


def test_every_profile_names_distinct_actions() -> None:
    for name, caps in profiles.PROFILES.items():
        actions = [c.action for c in caps]
        assert len(actions) == len(set(actions)), name
    assert profiles.PROFILES["plug"] is profiles.PLUG_CAPABILITIES
