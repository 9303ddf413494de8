"""Ed25519 keys: who may sign model versions (and, later, firmware and policies).

Keys travel as base64 of their 32 raw bytes, which `aiot models keygen` prints
and the hub config's ``[models] trusted_keys`` lists. A key's id is the first
16 hex characters of the sha256 of its raw public bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes_raw()
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes (what `aiot models keygen` prints)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a base64 string, got {text!r}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not a base64 Ed25519 public key: {exc}") from None


def trusted(texts: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id; ValueError names the first bad one."""
    return {key_id(k): k for k in (public_key(t) for t in texts)}


def private_key(path: Path) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a base64 Ed25519 private key: {exc}") from None


def keygen() -> tuple[str, str]:
    """(private, public) as base64 of the raw keys."""
    k = Ed25519PrivateKey.generate()
    priv = base64.b64encode(k.private_bytes_raw()).decode()
    pub = base64.b64encode(k.public_key().public_bytes_raw()).decode()
    return priv, pub


def write_keygen(out: Path) -> str:
    """A new key: the private one written to ``out`` (mode 0600; never over
    an existing file: FileExistsError), the public one returned (base64)."""
    priv, pub = keygen()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(priv + "\n")
    return pub


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a signature covers: JSON with sorted keys and no spaces."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign(data: bytes, key: Ed25519PrivateKey) -> tuple[bytes, str]:
    """(signature, key id)."""
    return key.sign(data), key_id(key.public_key())
