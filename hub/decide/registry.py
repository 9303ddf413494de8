"""The model registry: signed model versions, fetched between hubs, hot-swapped.

Replicated through Raft (hub/state/entries.py): MODEL_VERSION records (a version's
signed manifest) and MODEL_PUT activations (which version of a model every
node should run). The bytes travel out of band:

    aiot models push FILE --name N --sign-key K   upload to one hub
      PUT  /v1/models/blobs/<sha256>              the bytes (checked on arrival)
      POST /v1/models {manifest, signature}       the signed manifest -> MODEL_VERSION
    every other node, on applying MODEL_VERSION:  fetches the bytes by sha256
      GET  /v1/models/blobs/<sha256>              from a peer (the node table)
    aiot models activate NAME@VERSION             MODEL_PUT

Verification, before anything is stored or loaded: the signature (Ed25519)
must come from a key in the hub config's ``[models] trusted_keys``, the
manifest must name the record's model, version, kind, sha256 and size, and
the bytes must hash to that sha256. An unsigned, wrongly signed or tampered
model is refused and the old one keeps serving.

Activation on each node: load the new version off the event loop (a worker
thread: read, verify, build the onnxruntime session, smoke inference against
the manifest's recorded scores), then swap one reference; whoever scores
reads the reference once per window, so no decision is dropped or fails
during a swap. A failure keeps the old version and is reported per node
(``GET /v1/models``, ``aiot models list``). A node with no activation for
``anomaly`` serves the model shipped in ``models/anomaly/``.

The signed manifest (canonical JSON: sorted keys, no spaces)::

    {"created": ..., "kind": "onnx", "manifest": {...the model's own manifest...},
     "name": "anomaly", "sha256": "<hex>", "size": n, "version": "2"}
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.core.clock import wall_ms
from hub.core.keys import canonical
from hub.core.paths import SHIPPED_MODELS
from hub.decide.anomaly import AnomalyError, AnomalyModel, Manifest
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftError, RaftNode
from hub.state.store import Store
from protocol.errors import ReasonError

log = logging.getLogger("aiot.models")

SHIPPED: Final = SHIPPED_MODELS / "anomaly" / "anomaly.json"
_CHUNK: Final = 1 << 20


class ModelRefused(ReasonError):
    """A model (or its manifest) that must not be stored or loaded."""


# -- signatures -------------------------------------------------------------------------


def signed_manifest(
    name: str, version: str, kind: str, data: bytes, inner: dict[str, Any], created: str = ""
) -> bytes:
    return canonical(
        {
            "name": name,
            "version": version,
            "kind": kind,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "manifest": inner,
        }
    )


def version_record(manifest: bytes, signature: bytes, kid: str) -> e.ModelVersion:
    """The MODEL_VERSION entry for a signed manifest (ModelRefused if malformed)."""
    try:
        doc = json.loads(manifest)
        sha = bytes.fromhex(doc["sha256"])
        return e.ModelVersion(
            str(doc["name"]),
            str(doc["version"]),
            str(doc["kind"]),
            sha,
            int(doc["size"]),
            manifest,
            signature,
            kid,
            wall_ms(),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelRefused("bad_manifest", str(exc)) from None


def verify_signature(mv: e.ModelVersion, trusted: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """The manifest, if its signature is from a trusted key and it matches the record."""
    key = trusted.get(mv.key_id)
    if key is None:
        raise ModelRefused("untrusted_key", f"key {mv.key_id} is not in [models] trusted_keys")
    try:
        key.verify(mv.signature, mv.manifest)
    except InvalidSignature:
        raise ModelRefused("bad_signature", f"{mv.name}@{mv.version}") from None
    doc: dict[str, Any] = json.loads(mv.manifest)
    want = (mv.name, mv.version, mv.kind, mv.sha256.hex(), mv.size)
    got = (doc.get("name"), doc.get("version"), doc.get("kind"), doc.get("sha256"), doc.get("size"))
    if got != want:
        raise ModelRefused("manifest_mismatch", f"manifest says {got}, record says {want}")
    return doc


# -- loaded models ----------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    name: str
    version: str
    sha256: str
    model: Any  # an AnomalyModel (or a GGUF path for kind gguf)
    loaded_at: float
    load_ms: float


def load_bytes(mv: e.ModelVersion, data: bytes, doc: dict[str, Any]) -> Any:
    """Build the runnable model (worker thread). Raises ModelRefused."""
    if hashlib.sha256(data).digest() != mv.sha256 or len(data) != mv.size:
        raise ModelRefused("sha256_mismatch", f"{mv.name}@{mv.version}: the bytes differ")
    if mv.kind != "onnx":
        return None  # GGUF models are loaded by the LLM worker from the blob path
    try:
        inner = Manifest.from_dict(doc.get("manifest") or {})
        return AnomalyModel.from_bytes(data, inner)
    except AnomalyError as exc:
        raise ModelRefused("load_failed", str(exc)) from None


class ModelRegistry:
    """One node's side of the registry: blobs on disk, verification, active models."""

    def __init__(
        self,
        node_id: str,
        raft: RaftNode,
        blob_dir: Path,
        trusted: dict[str, Ed25519PublicKey],
        token: str,
        shipped: Path | None = SHIPPED,
    ) -> None:
        self.active: dict[str, Loaded] = {}  # name -> the version this node runs
        self.node_id = node_id
        self._raft = raft
        self.blob_dir = blob_dir
        self.trusted = trusted
        self._token = token
        self._shipped = shipped
        self.errors: dict[str, str] = {}  # name -> why the wanted version is not active
        self.loads = 0
        self.refused = 0
        self.on_load: Callable[[str, bool], None] | None = None
        self._wake = asyncio.Event()
        self._wake.set()
        blob_dir.mkdir(parents=True, exist_ok=True)

    # -- blobs --

    def blob_path(self, sha_hex: str) -> Path:
        if len(sha_hex) != 64 or any(c not in "0123456789abcdef" for c in sha_hex):
            raise ModelRefused("bad_sha256", sha_hex[:80])
        return self.blob_dir / sha_hex

    def has_blob(self, sha_hex: str) -> bool:
        return self.blob_path(sha_hex).exists()

    def store_blob(self, sha_hex: str, chunks: Iterable[bytes]) -> int:
        """Write bytes that must hash to ``sha_hex``; nothing is kept otherwise."""
        path = self.blob_path(sha_hex)
        tmp = path.with_suffix(".part")
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                n += len(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != sha_hex:
            tmp.unlink()
            raise ModelRefused("sha256_mismatch", f"the bytes hash to {h.hexdigest()}")
        os.replace(tmp, path)
        return n

    async def fetch(self, mv: e.ModelVersion) -> bool:
        """Get the bytes from a peer that has them."""
        sha = mv.sha256.hex()
        nodes = self._raft.read(Store.nodes)
        for n in nodes:
            if n.node_id == self.node_id:
                continue
            url = f"http://{n.http}/v1/models/blobs/{sha}"
            try:
                async with (
                    httpx.AsyncClient(timeout=60) as client,
                    client.stream(
                        "GET", url, headers={"Authorization": f"Bearer {self._token}"}
                    ) as r,
                ):
                    if r.status_code != 200:
                        continue
                    data = b"".join([c async for c in r.aiter_bytes(_CHUNK)])
                await asyncio.to_thread(self.store_blob, sha, [data])
                log.info("fetched model %s@%s from %s", mv.name, mv.version, n.node_id)
                return True
            except (httpx.HTTPError, ModelRefused, OSError) as exc:
                log.warning(
                    "fetching %s@%s from %s failed: %s", mv.name, mv.version, n.node_id, exc
                )
        return False

    # -- activation --

    def current(self, name: str) -> Any:
        loaded = self.active.get(name)
        return None if loaded is None else loaded.model

    def notice(self, results: Iterable[ApplyResult]) -> None:
        for r in results:
            if r.type in (e.EntryType.MODEL_VERSION, e.EntryType.MODEL_PUT) and (
                r.outcome is Outcome.APPLIED
            ):
                self._wake.set()
                return
        if not list(results):
            self._wake.set()

    async def run(self) -> None:
        await self._load_shipped()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except RaftError as exc:
                log.info("model registry paused: %s", exc)
                await asyncio.sleep(1)
                self._wake.set()

    async def _load_shipped(self) -> None:
        if self._shipped is None or "anomaly" in self.active or not self._shipped.exists():
            return
        t0 = time.monotonic()
        try:
            model = await asyncio.to_thread(AnomalyModel.load, self._shipped)
        except AnomalyError as exc:
            log.error("the shipped anomaly model does not load: %s", exc)
            self.errors["anomaly"] = str(exc)
            if self.on_load is not None:
                self.on_load("anomaly", False)
            return
        ms = (time.monotonic() - t0) * 1000
        self.active["anomaly"] = Loaded(
            "anomaly", f"shipped-{model.version}", model.sha256, model, time.time(), ms
        )
        if self.on_load is not None:
            self.on_load("anomaly", True)

    async def sync(self) -> None:
        """Fetch missing bytes; load what is activated but not active here."""
        versions = self._raft.read(lambda s: s.model_versions())
        missing = False
        for mv in versions:
            if not self.has_blob(mv.sha256.hex()) and not await self.fetch(mv):
                missing = True
        for want in self._raft.read(Store.models):
            have = self.active.get(want.name)
            if have is not None and have.version == want.version:
                continue
            chosen = next(
                (v for v in versions if v.name == want.name and v.version == want.version), None
            )
            if chosen is not None:
                await self.activate_local(chosen)
        if missing:
            await asyncio.sleep(2)  # a peer may get the bytes later
            self._wake.set()

    async def activate_local(self, mv: e.ModelVersion) -> None:
        t0 = time.monotonic()
        try:
            doc = verify_signature(mv, self.trusted)
            path = self.blob_path(mv.sha256.hex())
            if not path.exists():
                raise ModelRefused("no_bytes", "not fetched yet")
            data = await asyncio.to_thread(path.read_bytes)
            model = await asyncio.to_thread(load_bytes, mv, data, doc)
        except ModelRefused as exc:
            self.refused += 1
            self.errors[mv.name] = f"{mv.version}: {exc}"
            log.error("model %s@%s refused on %s: %s", mv.name, mv.version, self.node_id, exc)
            if self.on_load is not None:
                self.on_load(mv.name, False)
            return
        ms = (time.monotonic() - t0) * 1000
        old = self.active.get(mv.name)
        # The swap: one assignment; scorers read the reference per window.
        self.active[mv.name] = Loaded(mv.name, mv.version, mv.sha256.hex(), model, time.time(), ms)
        self.errors.pop(mv.name, None)
        self.loads += 1
        if self.on_load is not None:
            self.on_load(mv.name, True)
        log.info(
            "model %s@%s active on %s (was %s), loaded in %.1f ms",
            mv.name,
            mv.version,
            self.node_id,
            old.version if old else "none",
            ms,
        )
        del old  # the old session is released once no scorer holds it

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "version": loaded.version,
                "sha256": loaded.sha256,
                "load_ms": round(loaded.load_ms, 1),
                "error": self.errors.get(name),
            }
            for name, loaded in self.active.items()
        } | {
            name: {"version": None, "sha256": None, "load_ms": None, "error": err}
            for name, err in self.errors.items()
            if name not in self.active
        }


async def propose_activation(raft: RaftNode, name: str, version: str) -> ApplyResult:
    mv = next(
        (v for v in raft.read(lambda s: s.model_versions(name)) if v.version == version), None
    )
    if mv is None:
        raise ModelRefused("unknown_model_version", f"{name}@{version}")
    entry = e.PutModel(name, version, mv.sha256, mv.size, f"activated {name}@{version}", wall_ms())
    (res,) = await raft.propose(e.encode(entry), timeout=10.0)
    return res
