"""The MQTT topic layout (see the table in protocol/README.md).

aiot/v1/<device_id>/up       device -> hub   TelemetryBatch       QoS 1
aiot/v1/<device_id>/status   device -> hub   DeviceStatus         QoS 1, retained, last will
aiot/v1/<device_id>/ack      device -> hub   CommandResult        QoS 1
aiot/v1/<device_id>/down     hub -> device   CommitAck, Command   QoS 1
"""

from __future__ import annotations

import re
from typing import Final

PREFIX: Final = "aiot/v1"
CHANNELS: Final = ("up", "status", "ack", "down")
DEVICE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TopicError(ValueError):
    """A topic outside the aiot/v1 layout."""


def valid_device_id(device_id: str) -> bool:
    return DEVICE_ID.fullmatch(device_id) is not None


def topic(device_id: str, channel: str) -> str:
    if not valid_device_id(device_id):
        raise TopicError(f"bad device id {device_id!r}: want {DEVICE_ID.pattern}")
    if channel not in CHANNELS:
        raise TopicError(f"bad channel {channel!r}: want one of {', '.join(CHANNELS)}")
    return f"{PREFIX}/{device_id}/{channel}"


def parse(name: str) -> tuple[str, str]:
    """(device_id, channel) of a topic, or TopicError."""
    parts = name.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"topic {name!r} is not {PREFIX}/<device_id>/<channel>")
    device_id, channel = parts[2], parts[3]
    if not valid_device_id(device_id) or channel not in CHANNELS:
        raise TopicError(f"topic {name!r} has a bad device id or channel")
    return device_id, channel


def subscription(channel: str) -> str:
    """The filter a hub uses for one channel of every device."""
    if channel not in CHANNELS:
        raise TopicError(f"bad channel {channel!r}")
    return f"{PREFIX}/+/{channel}"
