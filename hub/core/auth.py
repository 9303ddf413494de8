"""Credentials the hub derives from a secret instead of storing.

Every hub node must hand the same broker password to a device and accept the
same admin tokens, without a second replicated secret to keep in step. So
they come from what the cluster already replicates or shares, with
HMAC-SHA256:

    device broker password = HMAC(device key, "aiot/mqtt-password/v1")
    hub broker password    = HMAC(cluster secret, "aiot/mqtt-hub/v1/" + node id)
    monitor broker password= HMAC(cluster secret, "aiot/mqtt-monitor/v1")
    admin token key        = HMAC(cluster secret, "aiot/admin-token/v2")

Cluster admin tokens are minted, not derived: whoever holds the cluster
secret (a node, or `aiot` given a node's config) signs one with the admin
token key::

    a1.<id>.<issued_ms>.<expires_ms>.<signature>

``id`` is 16 random lowercase hex digits, the times are milliseconds since
the epoch (ASCII digits), and the signature is the unpadded base64url
HMAC-SHA256 of everything before it (``a1.<id>.<issued_ms>.<expires_ms>``).
A token of any other shape (over MAX_ADMIN_TOKEN characters, another
version, a field out of its pattern) is "not an admin token" before any HMAC
is computed; the signature is compared in constant time. A verified token
is still refused when it has expired, when it says it was issued more than
CLOCK_SKEW_MS ahead of the verifier's clock, or when it claims a lifetime
over the verifier's limit (never over MAX_ADMIN_TTL_S). Revocation (one
token id, or every token issued before a cut-off) is replicated state,
checked by the HTTP layer against the store (hub/http/principal.py,
hub/state/DESIGN.md "Admin token revocations"): this module knows no store.

Whoever holds the cluster secret already controls the cluster (it opens the
Raft port), so a token minted from it grants nothing new; what expiry and
revocation add is that a token handed to a person or a script stops working
without the secret changing. A device's broker password is worth no more
than its key, which signs its batches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

from hub.core.clock import wall_ms

HUB_USER: Final = "hub"
MONITOR_USER: Final = "monitor"

ADMIN_PREFIX: Final = "a1."
ADMIN_TTL_S: Final = 3600  # what admin_token() mints, and `aiot token create` by default
MAX_ADMIN_TTL_S: Final = 365 * 86_400  # no admin token lives longer, whatever the config says
CLOCK_SKEW_MS: Final = 300_000  # how far ahead of a verifier a token's issue time may be
MAX_ADMIN_TOKEN: Final = 128
TOKEN_ID: Final = re.compile(r"[0-9a-f]{16}")
_ADMIN: Final = re.compile(
    r"a1\.(?P<id>[0-9a-f]{16})\.(?P<issued>[0-9]{1,15})\.(?P<expires>[0-9]{1,15})"
    r"\.(?P<sig>[A-Za-z0-9_-]{43})"
)


class TokenError(ValueError):
    """An admin token that does not verify: malformed, forged, expired,
    issued in the future, too long-lived, or revoked. The message says which."""


@dataclass(frozen=True, slots=True)
class AdminToken:
    """What a verified admin token claims: its id and its issue and expiry
    times (ms since the epoch)."""

    token_id: str
    issued_ms: int
    expires_ms: int


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


def _admin_signature(secret: str, body: str) -> str:
    key = hmac.new(secret.encode(), b"aiot/admin-token/v2", hashlib.sha256).digest()
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def mint_admin_token(
    secret: str, ttl_s: int = ADMIN_TTL_S, now_ms: int | None = None
) -> tuple[str, AdminToken]:
    """A new admin token valid for ``ttl_s`` seconds from now, and its claim."""
    if not 1 <= ttl_s <= MAX_ADMIN_TTL_S:
        raise ValueError(f"an admin token lives 1 s to {MAX_ADMIN_TTL_S} s, not {ttl_s}")
    issued = wall_ms() if now_ms is None else now_ms
    claim = AdminToken(secrets.token_hex(8), issued, issued + ttl_s * 1000)
    body = f"{ADMIN_PREFIX}{claim.token_id}.{claim.issued_ms}.{claim.expires_ms}"
    return f"{body}.{_admin_signature(secret, body)}", claim


def admin_token(secret: str, ttl_s: int = ADMIN_TTL_S) -> str:
    """A fresh admin token (by default valid for an hour): what nodes and
    tools holding the cluster secret send as ``Authorization: Bearer``."""
    return mint_admin_token(secret, ttl_s)[0]


def is_admin_token(token: str) -> bool:
    """Whether ``token`` claims to be an admin token (not a user's session token)."""
    return token.startswith(ADMIN_PREFIX)


def parse_admin_token(token: str) -> tuple[AdminToken, str]:
    """The claim and signature of a token of the admin shape; TokenError
    "not an admin token" for anything else, before any HMAC."""
    match = _ADMIN.fullmatch(token) if len(token) <= MAX_ADMIN_TOKEN else None
    if match is None:
        raise TokenError("not an admin token")
    claim = AdminToken(match["id"], int(match["issued"]), int(match["expires"]))
    return claim, match["sig"]


def verify_admin_token(
    secret: str, token: str, now_ms: int, max_ttl_s: int = MAX_ADMIN_TTL_S
) -> AdminToken:
    """The claim of an admin token this cluster's secret signed, unexpired,
    issued no later than CLOCK_SKEW_MS after ``now_ms`` and living at most
    ``max_ttl_s``; TokenError otherwise. Revocation is the caller's check."""
    claim, signature = parse_admin_token(token)
    body = token[: len(token) - len(signature) - 1]
    if not hmac.compare_digest(_admin_signature(secret, body).encode(), signature.encode()):
        raise TokenError("admin token not signed by this cluster")
    lifetime_ms = claim.expires_ms - claim.issued_ms
    if lifetime_ms <= 0 or lifetime_ms > min(max_ttl_s, MAX_ADMIN_TTL_S) * 1000:
        raise TokenError(f"admin token lifetime outside 1 s..{max_ttl_s} s")
    if claim.issued_ms > now_ms + CLOCK_SKEW_MS:
        raise TokenError("admin token issued in the future: check the clocks")
    if claim.expires_ms <= now_ms:
        raise TokenError("admin token expired: mint a new one (aiot token create)")
    return claim


def reserved_name(name: str) -> bool:
    """Broker user names the hub keeps for itself: never a device id."""
    return name in (MONITOR_USER, HUB_USER) or name.startswith(HUB_USER + "-")
