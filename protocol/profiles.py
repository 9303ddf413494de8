"""Device profiles: the capabilities each kind of device advertises.

The one source for the hub (a device registered without capabilities gets the
plug's), the decision evaluation (scenario files name a set: ``plug``,
``meter``, ``relay``) and the benchmarks. The firmware carries the plug's
table in the device's own form (edge/executor.py ``PLUG_CAPABILITIES``, as
``Encoder.message`` takes it); tests/unit/test_profiles.py checks that the two
agree field for field.

``min``/``max`` bound Int and Float values and the length of Text; Bool
ignores them (hub/decide/guard.py and the device apply the same rules).
"""

from __future__ import annotations

from typing import Final

from protocol.messages import Capability, ParamKind, ParamSpec

RELAY_SET: Final = Capability("relay.set", (ParamSpec("on", ParamKind.Bool, 0.0, 1.0),))
LIMIT_SET: Final = Capability("limit.set", (ParamSpec("watts", ParamKind.Float, 0.0, 3680.0),))
SAMPLE_SET: Final = Capability(
    "sample.set", (ParamSpec("interval_ms", ParamKind.Int, 100.0, 3600000.0),)
)
REBOOT: Final = Capability("reboot", ())
# Firmware over the air (docs/flashing.md): operators only, never a model
# (hub/decide/guard.py OPERATOR_ONLY). url is the bundle's base URL on a hub,
# sha256 the hex sha256 of its manifest.json, allow_downgrade lets an older
# release replace the running one; release (the signed release manifest) and
# signature (its Ed25519 signature, hex) are put in by the hub from its
# release registry (hub/decide/registry.py) and checked again by the device
# against the release keys pinned in its config (edge/ota.py).
OTA_UPDATE: Final = Capability(
    "ota.update",
    (
        ParamSpec("url", ParamKind.Text, 12.0, 200.0),
        ParamSpec("sha256", ParamKind.Text, 64.0, 64.0),
        ParamSpec("allow_downgrade", ParamKind.Bool, 0.0, 1.0),
        ParamSpec("release", ParamKind.Text, 2.0, 512.0),
        ParamSpec("signature", ParamKind.Text, 128.0, 128.0),
    ),
)

# The energy plug: a relay, its limit, its sampling interval, reboot, OTA.
PLUG_CAPABILITIES: Final = (RELAY_SET, LIMIT_SET, SAMPLE_SET, REBOOT, OTA_UPDATE)
# A meter only measures; a bare relay only switches.
METER_CAPABILITIES: Final = (SAMPLE_SET, REBOOT)
RELAY_CAPABILITIES: Final = (RELAY_SET,)

PROFILES: Final[dict[str, tuple[Capability, ...]]] = {
    "plug": PLUG_CAPABILITIES,
    "meter": METER_CAPABILITIES,
    "relay": RELAY_CAPABILITIES,
}
