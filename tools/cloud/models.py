"""Down to the sites: signed model versions into the cloud's object store,
signed rules files into its policies bucket, and the sites' own reports read
back (`aiot cloud push-model`, `aiot cloud push-rules`, `aiot cloud sites`).

An object in ``aiot-models`` is named ``<name>@<version>``; its bytes are the
model's, and its description is a JSON object with the signed manifest and
its signature (the same Ed25519 signature `aiot models push` makes,
hub/decide/registry.py), the target (``fleet``, or ``site:<id>``) and
whether the sites activate it on arrival. Each site checks the signature
with its own trusted keys before it registers anything (hub/ops/clouddown.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js.api import ObjectMeta
from nats.js.errors import NoKeysError

from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET, check_site
from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import connect


@dataclass(frozen=True, slots=True)
class Pushed:
    name: str
    version: str
    sha256: str
    size: int
    target: str


def target_of(site: str | None) -> str:
    if site is None:
        return "fleet"
    try:
        return f"site:{check_site(site)}"
    except ValueError as exc:
        raise CloudError(str(exc)) from None


def _offer(
    manifest: bytes, signature: bytes, key_id: str, target: str, activate: bool
) -> dict[str, Any]:
    """What a site reads about a version it is offered (hub/ops/clouddown.py Offer)."""
    return {
        "manifest": base64.b64encode(manifest).decode(),
        "signature": base64.b64encode(signature).decode(),
        "key_id": key_id,
        "target": target,
        "activate": activate,
    }


def push_model(
    creds: Creds,
    data: bytes,
    manifest: bytes,
    signature: bytes,
    key_id: str,
    target: str,
    activate: bool,
) -> Pushed:
    """Put one signed model version into the object store."""
    doc = json.loads(manifest)
    description = json.dumps(
        _offer(manifest, signature, key_id, target, activate), separators=(",", ":")
    )
    name = f"{doc['name']}@{doc['version']}"

    async def put() -> None:
        nc = await connect(creds)
        try:
            obs = await nc.jetstream().object_store(MODELS_BUCKET)
            await obs.put(name, data, meta=ObjectMeta(name=name, description=description))
        finally:
            await nc.close()

    _run(put(), 120.0)
    return Pushed(doc["name"], doc["version"], doc["sha256"], int(doc["size"]), target)


POLICY_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def push_policy(
    creds: Creds,
    data: bytes,
    manifest: bytes,
    signature: bytes,
    key_id: str,
    target: str,
    activate: bool,
) -> Pushed:
    """Put one signed rules file into the policies bucket, under
    ``<name>.<version>``: the same description as a model's, with the bytes
    in ``data`` (base64)."""
    doc = json.loads(manifest)
    key = f"{doc['name']}.{doc['version']}"
    if not POLICY_KEY.fullmatch(key):
        raise CloudError(f"{key!r} cannot be a key of the policies bucket")
    offer = _offer(manifest, signature, key_id, target, activate)
    value = json.dumps({**offer, "data": base64.b64encode(data).decode()}, separators=(",", ":"))

    async def put() -> None:
        nc = await connect(creds)
        try:
            kv = await nc.jetstream().key_value(POLICIES_BUCKET)
            await kv.put(key, value.encode())
        finally:
            await nc.close()

    _run(put(), 60.0)
    return Pushed(doc["name"], doc["version"], doc["sha256"], int(doc["size"]), target)


def site_reports(creds: Creds) -> list[dict[str, Any]]:
    """Each site's last report (hub/ops/clouddown.py puts it), by site id."""

    async def read() -> list[dict[str, Any]]:
        nc = await connect(creds)
        try:
            kv = await nc.jetstream().key_value(SITES_BUCKET)
            try:
                keys = await kv.keys()
            except NoKeysError:  # an empty bucket
                return []
            out = []
            for key in sorted(keys):
                entry = await kv.get(key)
                try:
                    out.append(json.loads(entry.value or b"{}"))
                except ValueError:
                    out.append({"site": key, "error": "not JSON"})
            return out
        finally:
            await nc.close()

    return list(_run(read(), 30.0))


def _run(coro: Any, timeout: float) -> Any:
    try:
        return asyncio.run(asyncio.wait_for(coro, timeout))
    except TimeoutError:
        raise CloudError(f"the cloud did not answer within {timeout:.0f} s") from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CloudError(f"cannot read {path}: {exc.strerror}") from None
