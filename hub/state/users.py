"""API users: password hashes and signed session tokens.

Users are replicated (USER_PUT entries, hub/state/entries.py): the proposer hashes
the password (scrypt, a random salt), so every replica stores the same bytes.
Tokens are not stored anywhere: a token is signed with a key derived from the
cluster secret, so any node verifies a token another node issued::

    v1.<user>.<expires_ms>.<signature>

The signature covers the user name, the expiry and a fingerprint of the
user's password hash: changing the password (or removing the user) revokes
every token issued before. The role is read from the registry on each
request, so a role change takes effect at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Final

from hub.state import entries as e

_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_SALT_BYTES: Final = 16
TOKEN_TTL_S: Final = 12 * 3600
MIN_PASSWORD: Final = 8


class AuthError(Exception):
    """A bad password or an invalid, expired or revoked token."""


def hash_password(password: str, salt: bytes | None = None) -> bytes:
    """salt (16 bytes) + scrypt digest (32 bytes)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    return salt + hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)


def check_password(user: e.User, password: str) -> bool:
    salt, digest = user.password_hash[:_SALT_BYTES], user.password_hash[_SALT_BYTES:]
    got = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(got, digest)


def _signing_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"aiot/session-token/v1", hashlib.sha256).digest()


def _signature(secret: str, name: str, expires_ms: int, password_hash: bytes) -> str:
    fingerprint = hashlib.sha256(password_hash).digest()[:8]
    msg = f"{name}.{expires_ms}.".encode() + fingerprint
    mac = hmac.new(_signing_key(secret), msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(secret: str, user: e.User, ttl_s: int = TOKEN_TTL_S) -> tuple[str, int]:
    """A token for ``user`` and its expiry (ms since the epoch)."""
    expires = int(time.time() * 1000) + ttl_s * 1000
    return (
        f"v1.{user.name}.{expires}.{_signature(secret, user.name, expires, user.password_hash)}",
        (expires),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    expires_ms: int
    signature: str


def parse(token: str) -> Claim:
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit():
        raise AuthError("not a session token")
    return Claim(parts[1], int(parts[2]), parts[3])


def verify(secret: str, claim: Claim, user: e.User | None) -> e.User:
    """The user the token speaks for, or AuthError."""
    if user is None or user.name != claim.name:
        raise AuthError("unknown user")
    if claim.expires_ms < time.time() * 1000:
        raise AuthError("token expired: log in again")
    want = _signature(secret, user.name, claim.expires_ms, user.password_hash)
    if not hmac.compare_digest(want.encode(), claim.signature.encode()):
        raise AuthError("token revoked or forged")
    return user
