"""Credentials the hub derives instead of storing.

Every hub node must hand the same broker password to a device and accept the
same admin token, without a second replicated secret to keep in step. So they
are derived, with HMAC-SHA256, from what the cluster already replicates or
shares:

    device broker password = HMAC(device key, "aiot/mqtt-password/v1")
    hub broker password    = HMAC(cluster secret, "aiot/mqtt-hub/v1/" + node id)
    monitor broker password= HMAC(cluster secret, "aiot/mqtt-monitor/v1")
    admin token            = HMAC(cluster secret, "aiot/admin-token/v1")

Whoever holds the cluster secret already controls the cluster (it opens the
Raft port), so an admin token derived from it grants nothing new. A device's
broker password is worth no more than its key, which signs its batches.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

HUB_USER: Final = "hub"
MONITOR_USER: Final = "monitor"


def _derive(key: bytes, label: str, size: int = 32) -> str:
    return hmac.new(key, label.encode(), hashlib.sha256).hexdigest()[:size]


def device_password(device_key: bytes) -> str:
    return _derive(device_key, "aiot/mqtt-password/v1")


def hub_password(secret: str, node_id: str) -> str:
    return _derive(secret.encode(), "aiot/mqtt-hub/v1/" + node_id)


def hub_user(node_id: str) -> str:
    """The hub's broker user on its own broker (one per node, for the logs)."""
    return f"{HUB_USER}-{node_id}"[:64]


def monitor_password(secret: str) -> str:
    return _derive(secret.encode(), "aiot/mqtt-monitor/v1")


def admin_token(secret: str) -> str:
    return _derive(secret.encode(), "aiot/admin-token/v1", 64)


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def reserved_name(name: str) -> bool:
    """Broker user names the hub keeps for itself: never a device id."""
    return name in (MONITOR_USER, HUB_USER) or name.startswith(HUB_USER + "-")
