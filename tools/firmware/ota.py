"""Over-the-air updates from the operator's side: upload a bundle to the
hubs, then send the device a signed ``ota.update`` command through the
replicated command ledger.

    sha, url = upload(client, Path("build/plug-1"))     # every node of the cluster
    record = send(client, "plug-1", url, sha)           # POST /v1/commands
    final = wait(client, record["command_id"], 600)

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

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
    """The HTTP URL of every node in the cluster table (the client's first)."""
    urls = [client.url]
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
        url = f"http://{h}:{port}"
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
            with HubClient(url, auth.partition(" ")[2]) as c:
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


def send(
    client: HubClient, device: str, url: str, sha: str, deadline_s: float = 1800.0
) -> dict[str, Any]:
    """Put the ota.update command into the ledger."""
    if len(url) > 200:
        raise OtaError(f"bundle URL longer than 200 characters: {url}")
    try:
        rec: dict[str, Any] = client.post(
            "/v1/commands",
            {
                "device": device,
                "action": ACTION,
                "params": {"url": url, "sha256": sha},
                "deadline_s": deadline_s,
            },
        )
    except HubError as exc:
        if exc.status == 422 and ACTION in str(exc):
            raise OtaError(
                f"{device} does not declare {ACTION} in its capabilities: flash it with a "
                "bundle that supports updates, and register it with the ota.update capability"
            ) from None
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
