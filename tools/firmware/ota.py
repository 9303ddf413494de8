"""Over-the-air updates from the operator's side: upload a bundle to the
hubs, sign and register it as a firmware release, then send the device a
signed ``ota.update`` command through the replicated command ledger.

    sha, url, nodes = upload(client, Path("build/plug-1"))  # every node of the cluster
    release(client, Path("build/plug-1"), key)              # POST /v1/firmware/releases
    record = send(client, "plug-1", url, sha)               # POST /v1/commands
    final = wait(client, record["command_id"], 600)

A release is the bundle's manifest.json signed with a firmware release key
(`aiot firmware keygen`; the hubs list its public key in ``[firmware]
trusted_keys``, devices pin it in their config as ``release_keys``). The hub
sends an ota.update only for a registered release, adds its signed manifest
and signature to the command, and refuses a downgrade unless
``allow_downgrade``; the device checks the signature and the version again
before it writes anything (edge/ota.py).

The device downloads ``url`` + each file, verifies every sha256 against the
manifest whose sha256 the command carries, stages the other app slot and
reboots into it; the command's ledger entry stays SENT until the new app is
connected and acknowledged (DONE, "running app b ...") or the loader rolled
back after its trial boots (FAILED, "rolled back to app a ..."). Meanwhile
the device's progress lands in the entry's history, one SENT step each:

    downloading into app b
    downloading 24 files (81234 bytes) into app b
    24 files (81234 bytes) verified in app b; rebooting to try it (3 boots)
    trial boot 1 of 3: app b (0.2.0+b~:1f2e3d4c)
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.core import keys
from hub.decide import registry
from tools.base.errors import ToolError
from tools.base.hubclient import HubClient, HubError
from tools.firmware.build import load_bundle

ACTION = "ota.update"


class OtaError(ToolError):
    pass


def bundle_payload(bundle: Path) -> tuple[str, dict[str, Any]]:
    """(sha256, POST /v1/firmware body) of a built bundle's ota/ directory."""
    info = load_bundle(bundle)
    ota = bundle / "ota"
    manifest = (ota / "manifest.json").read_bytes()
    files = {
        p.relative_to(ota).as_posix(): base64.b64encode(p.read_bytes()).decode()
        for p in sorted(ota.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    return str(info["bundle_sha256"]), {"manifest": manifest.decode(), "files": files}


def _node_urls(client: HubClient) -> list[str]:
    """The API URL of every node in the cluster table (the client's first),
    in the client's scheme (https on a cluster with TLS)."""
    urls = [client.url]
    scheme = httpx.URL(client.url).scheme
    try:
        nodes = client.get("/v1/cluster")["nodes"]
    except HubError:
        return urls
    host = httpx.URL(client.url).host
    for n in nodes:
        h, _, port = str(n.get("http") or "").rpartition(":")
        if not port:
            continue
        if h in ("0.0.0.0", "::", "[::]", ""):
            h = host
        url = f"{scheme}://{h}:{port}"
        if url not in urls:
            urls.append(url)
    return urls


def upload(client: HubClient, bundle: Path) -> tuple[str, str, list[str]]:
    """Upload to every node; (sha256, the bundle's URL on the client's node, nodes stored on)."""
    sha, body = bundle_payload(bundle)
    stored: list[str] = []
    errors: list[str] = []
    # The same admin token serves every node (it derives from the cluster secret).
    auth = client._http.headers.get("authorization", "")
    for url in _node_urls(client):
        try:
            with HubClient(url, auth.partition(" ")[2], ca=client.ca) as c:
                out = c.post("/v1/firmware", body)
        except HubError as exc:
            errors.append(f"{url}: {exc}")
            continue
        if out.get("sha256") != sha:
            errors.append(f"{url}: stored as {out.get('sha256')}, expected {sha}")
            continue
        stored.append(url)
    if client.url not in stored:
        raise OtaError("upload failed: " + "; ".join(errors))
    return sha, f"{client.url}/v1/firmware/{sha}/", stored


def release_key(path: Path) -> Ed25519PrivateKey:
    """A firmware release key from its file (`aiot firmware keygen`)."""
    try:
        return keys.private_key(path)
    except ValueError as exc:
        raise OtaError(str(exc)) from None


def release(client: HubClient, bundle: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign the bundle's release and register it (the bundle must be on the
    client's node: `upload`). A release already registered is kept as it is:
    ``registered`` says whether this call registered it."""
    try:
        manifest = (bundle / "ota" / "manifest.json").read_bytes()
    except OSError as exc:
        raise OtaError(f"{bundle} is not a built bundle: {exc.strerror}") from None
    sha = hashlib.sha256(manifest).hexdigest()
    for rel in client.get("/v1/firmware/releases"):
        if rel["sha256"] == sha:
            return {**rel, "registered": False}
    try:
        signed = registry.release_manifest(manifest)
    except ValueError as exc:
        raise OtaError(f"{bundle}: {exc}") from None
    signature, kid = keys.sign(signed, key)
    body = {
        "manifest": signed.decode(),
        "signature": base64.b64encode(signature).decode(),
        "key_id": kid,
    }
    try:
        out: dict[str, Any] = client.post("/v1/firmware/releases", body)
    except HubError as exc:
        if exc.status == 409 and "model_version_exists" in str(exc):
            raise OtaError(
                f"another bundle is already released as this version ({exc}): "
                "set a new FIRMWARE version in edge/node.py and build again"
            ) from None
        if exc.status == 422 and "untrusted_key" in str(exc):
            raise OtaError(
                f"the hub does not trust key {kid}: list its public key in "
                "[firmware] trusted_keys on every node"
            ) from None
        raise
    return {**out, "registered": True}


def send(
    client: HubClient,
    device: str,
    url: str,
    sha: str,
    deadline_s: float = 1800.0,
    allow_downgrade: bool = False,
) -> dict[str, Any]:
    """Put the ota.update command for the release ``sha`` into the ledger."""
    if len(url) > 200:
        raise OtaError(f"bundle URL longer than 200 characters: {url}")
    try:
        rec: dict[str, Any] = client.post(
            "/v1/commands",
            {
                "device": device,
                "action": ACTION,
                "params": {"url": url, "sha256": sha, "allow_downgrade": allow_downgrade},
                "deadline_s": deadline_s,
            },
        )
    except HubError as exc:
        if exc.status == 422 and f"no action {ACTION!r}" in str(exc):
            raise OtaError(
                f"{device} does not declare {ACTION} in its capabilities: flash it with a "
                "bundle that supports updates, and register it with the ota.update capability"
            ) from None
        if exc.status in (409, 422) and "ota.update refused" in str(exc):
            raise OtaError(str(exc)) from None
        raise
    return rec


def wait(
    client: HubClient,
    command_id: str,
    timeout: float,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll the ledger until the command is final (or the time is up).

    ``on_step`` gets each entry of the command's history once, as it
    appears: the states and the device's progress (the download, the
    reboot, each trial boot)."""
    deadline = time.monotonic() + timeout
    rec: dict[str, Any] = {}
    shown = 0
    while True:
        try:
            rec = client.get(f"/v1/commands/{command_id}")
        except HubError as exc:
            if exc.status != 404:
                raise
        history = rec.get("history") or []
        if on_step is not None:
            for step in history[shown:]:
                on_step(step)
        shown = max(shown, len(history))
        if rec.get("state") not in (None, "PENDING", "SENT") or time.monotonic() > deadline:
            return rec
        time.sleep(1.0)
