"""API users: password hashes and signed session tokens.

Users are replicated (USER_PUT entries, hub/state/entries.py): the proposer hashes
the password (scrypt, a random salt), so every replica stores the same bytes.
Tokens are not stored anywhere: a token is signed with a key derived from the
cluster secret, so any node verifies a token another node issued::

    v1.<user>.<expires_ms>.<signature>

A user name may hold dots (``ann.lee``): the expiry (digits) and the
signature (URL-safe base64) never do, so a token splits at its last two dots.
Anything else (another version, a name the registry could not hold, a
non-decimal expiry, a signature of the wrong shape, over MAX_TOKEN
characters) is refused as "not a session token" before any lookup.

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
import re
import threading
import time
from dataclasses import dataclass
from typing import Final

from hub.state import entries as e

_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_SALT_BYTES: Final = 16
TOKEN_TTL_S: Final = 12 * 3600
MIN_PASSWORD: Final = 8
MAX_TOKEN: Final = 256
_EXPIRY: Final = re.compile(r"[0-9]{1,16}")
_SIGNATURE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url


class AuthError(Exception):
    """A bad password or an invalid, expired or revoked token."""


def hash_password(password: str, salt: bytes | None = None) -> bytes:
    """salt (16 bytes) + scrypt digest (32 bytes)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    return salt + hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)


def check_password(user: e.User, password: str) -> bool:
    return _matches(user.password_hash, password)


def _matches(password_hash: bytes, password: str) -> bool:
    salt, digest = password_hash[:_SALT_BYTES], password_hash[_SALT_BYTES:]
    got = hashlib.scrypt(password.encode(errors="surrogatepass"), salt=salt, **_SCRYPT)
    return hmac.compare_digest(got, digest)


_dummy: bytes | None = None
_dummy_lock = threading.Lock()


def _dummy_hash() -> bytes:
    """A hash no password matches (made once, on first use): what an unknown
    user's password is checked against."""
    global _dummy
    with _dummy_lock:
        if _dummy is None:
            _dummy = hash_password(base64.b64encode(os.urandom(24)).decode())
        return _dummy


def check_login(user: e.User | None, password: str) -> e.User | None:
    """``user`` when ``password`` is theirs, else None. An unknown user
    (None) costs the same scrypt as a known one, against a dummy hash, so
    the time of an answer does not tell which user names exist."""
    ok = _matches(user.password_hash if user is not None else _dummy_hash(), password)
    return user if ok and user is not None else None


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
    """The claim of a ``v1.<user>.<expires_ms>.<signature>`` token, or
    AuthError("not a session token") for anything of another shape."""
    version, _, rest = token.partition(".")
    parts = rest.rsplit(".", 2)
    if (
        len(token) > MAX_TOKEN
        or version != "v1"
        or len(parts) != 3
        or not e.USER_NAME.fullmatch(parts[0])
        or not _EXPIRY.fullmatch(parts[1])
        or not _SIGNATURE.fullmatch(parts[2])
    ):
        raise AuthError("not a session token")
    return Claim(parts[0], int(parts[1]), parts[2])


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
