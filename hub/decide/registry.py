"""The model registry: signed model versions, fetched between hubs, hot-swapped;
and firmware releases, the same signed records of kind "firmware" (the
section "firmware releases" below), which are never fetched or loaded here.

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
import contextlib
import hashlib
import json
import logging
import os
import re
import ssl
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hub.core.clock import wall_ms
from hub.core.fsutil import sha256_file
from hub.core.keys import canonical
from hub.core.paths import SHIPPED_MODELS
from hub.core.validate import ConfigError
from hub.decide.anomaly import AnomalyError, AnomalyModel, Manifest
from hub.decide.rules import RuleSet, parse_rules_file
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


def verify_signature(
    mv: e.ModelVersion, trusted: dict[str, Ed25519PublicKey], keys: str = "[models] trusted_keys"
) -> dict[str, Any]:
    """The manifest, if its signature is from a trusted key and it matches the record
    (``keys`` names the key list in the error)."""
    key = trusted.get(mv.key_id)
    if key is None:
        raise ModelRefused("untrusted_key", f"key {mv.key_id} is not in {keys}")
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
    model: Any  # an AnomalyModel, a RuleSet, an Adapter (None for kind gguf)
    loaded_at: float
    load_ms: float


def load_bytes(mv: e.ModelVersion, data: bytes, doc: dict[str, Any]) -> Any:
    """Build the runnable model (worker thread). Raises ModelRefused."""
    if hashlib.sha256(data).digest() != mv.sha256 or len(data) != mv.size:
        raise ModelRefused("sha256_mismatch", f"{mv.name}@{mv.version}: the bytes differ")
    if mv.kind == FIRMWARE:
        raise ModelRefused("not_a_model", f"{mv.name}@{mv.version} is a firmware release")
    check_kind(mv)
    if mv.kind == RULES:
        return parse_rule_set(mv, data)
    if mv.kind == LORA:
        return adapter(mv, data, doc)
    if mv.kind != "onnx":
        return None  # GGUF models are loaded by the LLM worker from the blob path
    try:
        inner = Manifest.from_dict(doc.get("manifest") or {})
        return AnomalyModel.from_bytes(data, inner)
    except AnomalyError as exc:
        raise ModelRefused("load_failed", str(exc)) from None


# A rules file as a model version of kind "rules": the same signed records,
# fetched between hubs and activated like any model. Loading parses it as a
# rules file (hub/decide/rules.py); the decision engine runs the config's
# rules plus every active rule set (``rule_sets``), in name order.
RULES: Final = "rules"


RULES_NAME: Final = re.compile(r"rules(-[A-Za-z0-9._-]+)?")


def check_kind(mv: e.ModelVersion) -> None:
    """A rule set is named ``rules`` or ``rules-<set>``, and only a rule set
    is, so it never takes the place of a model the tiers load by name; the
    same for a LoRA adapter, named ``llm-adapter``. A fine-tuned adapter's
    manifest signed as kind gguf is refused: it is no base model."""
    if (mv.kind == RULES) != bool(RULES_NAME.fullmatch(mv.name)):
        raise ModelRefused(
            "bad_name",
            f"{mv.name}@{mv.version}: a version of kind rules is named rules or rules-<set>, "
            "and only such a version",
        )
    if (mv.kind == LORA) != (mv.name == LLM_ADAPTER):
        raise ModelRefused(
            "bad_name",
            f"{mv.name}@{mv.version}: a version of kind lora is named {LLM_ADAPTER}, "
            "and only such a version",
        )
    if mv.kind == "gguf" and _inner(mv).get("kind") == "lora-adapter":
        raise ModelRefused(
            "bad_kind", f"{mv.name}@{mv.version} is a LoRA adapter: register it as kind lora"
        )


def _inner(mv: e.ModelVersion) -> dict[str, Any]:
    with contextlib.suppress(ValueError, AttributeError):
        inner = json.loads(mv.manifest).get("manifest")
        if isinstance(inner, dict):
            return inner
    return {}


# A LoRA adapter (kind "lora", a GGUF adapter llama.cpp applies to its base
# model) named "llm-adapter": the LLM tier runs the activated one on its base
# (hub/decide/engine.py LlmTier). Its own manifest (what `aiot models
# finetune` writes) names the base's sha256 (``base_sha256``, or
# ``base.sha256``), which must be a known base: a shipped GGUF, the LLM
# tier's model, or a registered gguf version; its ``eval`` (the eval report
# of base + adapter) is what the trust gate reads.
LORA: Final = "lora"
LLM_ADAPTER: Final = "llm-adapter"
_GGUF_MAGIC: Final = b"GGUF"


@dataclass(frozen=True)
class Adapter:
    """A loaded LoRA version: what the LLM tier needs to run it."""

    name: str  # name@version
    sha256: str
    base_sha256: str
    report: dict[str, Any] | None  # the signed manifest's eval report
    path: Path | None = None  # the shipped adapter's file (None: the blob of its sha256)


def shipped_adapter(models_dir: Path) -> tuple[Adapter, str] | None:
    """The adapter shipped in ``models_dir`` (``llm-adapter/llm-adapter.gguf``
    and its manifest ``llm-adapter.json``, as `aiot models finetune` writes it),
    and its version; None when none is shipped. ModelRefused when the file is
    not the one its manifest names (sha256) or the manifest names no base."""
    man = models_dir / LLM_ADAPTER / f"{LLM_ADAPTER}.json"
    gguf = man.with_suffix(".gguf")
    if not man.is_file() or not gguf.is_file():
        return None
    try:
        doc = json.loads(man.read_text())
        sha, base = str(doc["sha256"]), doc["base"]["sha256"]
        version = str(doc.get("version") or "shipped")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelRefused("load_failed", f"{man}: not an adapter manifest ({exc})") from None
    if sha256_file(gguf) != sha:
        raise ModelRefused("sha256_mismatch", f"{gguf}: its sha256 is not the manifest's {sha}")
    if not isinstance(base, str) or not re.fullmatch(r"[0-9a-f]{64}", base):
        raise ModelRefused("no_base", f"{man}: names no base sha256")
    report = doc.get("eval")
    name = f"{LLM_ADAPTER}@shipped-{version}"
    return Adapter(name, sha, base, report if isinstance(report, dict) else None, gguf), version


def base_sha256(mv: e.ModelVersion) -> str:
    """The base model's sha256 an adapter's manifest names (ModelRefused if none)."""
    inner = _inner(mv)
    base = inner.get("base")
    sha = inner.get("base_sha256") or (base.get("sha256") if isinstance(base, dict) else None)
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ModelRefused(
            "no_base", f"{mv.name}@{mv.version}: the manifest names no base_sha256 (hex)"
        )
    return sha


def adapter(mv: e.ModelVersion, data: bytes, doc: dict[str, Any]) -> Adapter:
    if not data.startswith(_GGUF_MAGIC):
        raise ModelRefused("load_failed", f"{mv.name}@{mv.version}: not a GGUF file")
    report = (doc.get("manifest") or {}).get("eval")
    return Adapter(
        f"{mv.name}@{mv.version}",
        mv.sha256.hex(),
        base_sha256(mv),
        report if isinstance(report, dict) else None,
    )


def shipped_bases(models_dir: Path) -> dict[str, Path]:
    """The GGUFs shipped in ``models_dir`` by their manifests' sha256 (``NAME.json``
    next to ``NAME.gguf``; the worker checks the bytes when it loads one)."""
    out: dict[str, Path] = {}
    for man in sorted(models_dir.glob("*.json")) if models_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            doc = json.loads(man.read_text())
            path = models_dir / str(doc.get("file") or "")
            if doc.get("kind") == "gguf" and path.suffix == ".gguf" and path.is_file():
                out[str(doc["sha256"])] = path
    return out


def parse_rule_set(mv: e.ModelVersion, data: bytes) -> RuleSet:
    """A rules file's bytes as a RuleSet named ``name@version``. Raises ModelRefused."""
    source = f"{mv.name}@{mv.version}"
    try:
        return parse_rules_file(tomllib.loads(data.decode("utf-8")), source)
    except UnicodeDecodeError as exc:
        raise ModelRefused("load_failed", f"{source}: not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelRefused("load_failed", f"{source}: not TOML: {exc}") from None
    except ConfigError as exc:
        raise ModelRefused("load_failed", str(exc)) from None


class ModelRegistry:
    """One node's side of the registry: blobs on disk, verification, active models."""

    def __init__(
        self,
        node_id: str,
        raft: RaftNode,
        blob_dir: Path,
        trusted: dict[str, Ed25519PublicKey],
        token: str | Callable[[], str],  # a token, or what mints a fresh one per fetch
        shipped: Path | None = SHIPPED,
        peer_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.active: dict[str, Loaded] = {}  # name -> the version this node runs
        self._peer_tls = peer_tls  # HTTPS to peers, the cluster CA pinned; None: plain
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
        # Base models an adapter may name besides registered gguf versions:
        # the shipped GGUFs, and the LLM tier's own model (engine.py adds it).
        self.bases: dict[str, Path] = {}
        if shipped is not None:
            self.bases.update(shipped_bases(shipped.parent.parent))
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
            scheme = "http" if self._peer_tls is None else "https"
            url = f"{scheme}://{n.http}/v1/models/blobs/{sha}"
            try:
                async with (
                    httpx.AsyncClient(timeout=60, verify=self._peer_tls or True) as client,
                    client.stream(
                        "GET", url, headers={"Authorization": f"Bearer {self._peer_token()}"}
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

    def _peer_token(self) -> str:
        return self._token if isinstance(self._token, str) else self._token()

    def base_path(self, sha_hex: str) -> Path | None:
        """Where the base model with this sha256 is (None: not a known base)."""
        if sha_hex in self.bases:
            return self.bases[sha_hex]
        for v in self._raft.read(lambda s: s.model_versions()):
            if v.kind == "gguf" and v.sha256.hex() == sha_hex:
                return self.blob_path(sha_hex)
        return None

    def check_base(self, mv: e.ModelVersion) -> None:
        """An adapter's base must be known (ModelRefused says which it names)."""
        sha = base_sha256(mv)
        if self.base_path(sha) is None:
            raise ModelRefused(
                "unknown_base",
                f"{mv.name}@{mv.version} is for base model {sha}, which is neither a shipped "
                "GGUF, the LLM tier's model nor a registered gguf version",
            )

    # -- activation --

    def current(self, name: str) -> Any:
        loaded = self.active.get(name)
        return None if loaded is None else loaded.model

    def rule_sets(self) -> tuple[tuple[str, RuleSet], ...]:
        """The active rule sets ("name@version", rules), in name order."""
        return tuple(
            (f"{x.name}@{x.version}", x.model)
            for x in sorted(self.active.values(), key=lambda x: x.name)
            if isinstance(x.model, RuleSet)
        )

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

    def _load_shipped_adapter(self) -> None:
        """The shipped LoRA adapter runs unless the registry says otherwise:
        a version activated (or the adapter switched off) through Raft wins."""
        if self._shipped is None or LLM_ADAPTER in self.active:
            return
        if self._raft.read(lambda s: s.model(LLM_ADAPTER)) is not None:
            return
        try:
            found = shipped_adapter(self._shipped.parent.parent)
            if found is None:
                return
            adapter, version = found
            if adapter.base_sha256 not in self.bases:
                raise ModelRefused(
                    "unknown_base", f"{adapter.name} is for base {adapter.base_sha256}"
                )
        except ModelRefused as exc:
            log.error("the shipped LLM adapter is not used: %s", exc)
            self.errors[LLM_ADAPTER] = f"shipped: {exc}"
            return
        self.active[LLM_ADAPTER] = Loaded(
            LLM_ADAPTER, f"shipped-{version}", adapter.sha256, adapter, time.time(), 0.0
        )
        log.info("LLM adapter %s (shipped) on %s", adapter.name, self.node_id)

    async def _load_shipped(self) -> None:
        with contextlib.suppress(RaftError):
            self._load_shipped_adapter()
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
        # Firmware releases share the records but not the bytes (hub/ops/bundles.py).
        versions = [v for v in self._raft.read(lambda s: s.model_versions()) if v.kind != FIRMWARE]
        missing = False
        for mv in versions:
            if not self.has_blob(mv.sha256.hex()) and not await self.fetch(mv):
                missing = True
        for want in self._raft.read(Store.models):
            have = self.active.get(want.name)
            if not want.version:  # switched off (``propose_deactivation``)
                if self.active.pop(want.name, None) is not None:
                    log.info("model %s switched off on %s", want.name, self.node_id)
                continue
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
            if mv.kind == LORA:
                self.check_base(mv)
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
    if mv is None or mv.kind == FIRMWARE:
        raise ModelRefused("unknown_model_version", f"{name}@{version}")
    entry = e.PutModel(name, version, mv.sha256, mv.size, f"activated {name}@{version}", wall_ms())
    (res,) = await raft.propose(e.encode(entry), timeout=10.0)
    return res


async def propose_deactivation(raft: RaftNode, name: str) -> ApplyResult:
    """Switch model ``name`` off on every node (the LLM tier back to its plain
    base for ``llm-adapter``); activating a version switches it on again."""
    known = {v.name for v in raft.read(lambda s: s.model_versions()) if v.kind != FIRMWARE}
    if name not in known and name != LLM_ADAPTER and name != "anomaly":
        raise ModelRefused("unknown_model", name)
    (res,) = await raft.propose(e.encode(e.switched_off(name, wall_ms())), timeout=10.0)
    return res


# -- firmware releases ------------------------------------------------------------------
#
# A firmware release is a MODEL_VERSION of kind "firmware": name
# "firmware-<board>", version the firmware's own (FIRMWARE in edge/node.py),
# sha256 and size those of the bundle's manifest.json (hub/ops/bundles.py: its
# sha256 names the bundle), signed by a key of the hub config's
# ``[firmware] trusted_keys``. Its signed manifest::
#
#     {"created": ..., "kind": "firmware", "manifest": {"board": "esp32",
#      "mpy": 6, "platform": "esp32", "version": "0.2.0"}, "name":
#      "firmware-esp32", "sha256": "<hex>", "size": n, "version": "0.2.0"}
#
# The registry never fetches, loads or activates one as a model. An
# ota.update names a release by its sha256; `ota_params` refuses one that is
# not registered, not signed by a trusted firmware key, for another platform
# than the device runs, or older than what the device runs (unless
# allow_downgrade), and puts the signed manifest and its signature into the
# command, so the device checks them against its own pinned keys
# (edge/ota.py).

FIRMWARE: Final = "firmware"
OTA: Final = "ota.update"
# The device takes at most this many bytes of signed manifest (edge/executor.py).
MAX_RELEASE_MANIFEST: Final = 512
_VERSION: Final = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6}){0,3}")
_FIRMWARE_KEYS: Final = "[firmware] trusted_keys"


class ReleaseRefused(ReasonError):
    """An ota.update (or a release) the hub must not let through; ``reason``
    is machine-readable, ``detail`` says what to do."""


def release_name(board: str) -> str:
    return f"firmware-{board}"


def firmware_version(text: object) -> tuple[int, ...]:
    """ "0.2.0" -> (0, 2, 0); ValueError for anything but 1 to 4 dotted numbers."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise ValueError(f"firmware version {text!r}: expected numbers joined by dots (0.2.0)")
    return tuple(int(p) for p in text.split("."))


def release_manifest(bundle_manifest: bytes, created: str = "") -> bytes:
    """The manifest to sign for a bundle's manifest.json (ValueError if it is not one)."""
    try:
        m = json.loads(bundle_manifest)
        inner = {k: m[k] for k in ("platform", "board", "mpy", "version")}
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a bundle manifest.json (platform, board, mpy, version)") from None
    firmware_version(inner["version"])
    name = release_name(str(inner["board"]))
    return signed_manifest(name, inner["version"], FIRMWARE, bundle_manifest, inner, created)


def check_release(
    mv: e.ModelVersion, trusted: dict[str, Ed25519PublicKey], bundle: bytes | None = None
) -> dict[str, Any]:
    """The inner manifest (platform, board, mpy, version) of a release record
    signed by a trusted firmware key; with ``bundle`` (manifest.json's bytes),
    also that the release describes it. ReleaseRefused otherwise."""
    if mv.kind != FIRMWARE:
        raise ReleaseRefused("not_a_release", f"{mv.name}@{mv.version} is a {mv.kind} model")
    if len(mv.manifest) > MAX_RELEASE_MANIFEST:
        raise ReleaseRefused(
            "bad_release", f"signed manifest of {len(mv.manifest)} bytes (at most 512)"
        )
    try:
        doc = verify_signature(mv, trusted, _FIRMWARE_KEYS)
    except ModelRefused as exc:
        raise ReleaseRefused(exc.reason, exc.detail) from None
    inner = doc.get("manifest")
    try:
        if not isinstance(inner, dict):
            raise ValueError("no inner manifest")
        firmware_version(mv.version)
        if inner.get("version") != mv.version or mv.name != release_name(str(inner["board"])):
            raise ValueError(f"{mv.name}@{mv.version} does not match {inner}")
        if not isinstance(inner.get("platform"), str) or not isinstance(inner.get("mpy"), int):
            raise ValueError("platform and mpy missing")
    except (ValueError, KeyError) as exc:
        raise ReleaseRefused("bad_release", str(exc)) from None
    if bundle is not None:
        if hashlib.sha256(bundle).digest() != mv.sha256 or len(bundle) != mv.size:
            raise ReleaseRefused("bundle_mismatch", "the bundle's manifest.json is another one")
        m = json.loads(bundle)
        if {k: m.get(k) for k in inner} != inner:
            raise ReleaseRefused("bundle_mismatch", f"the bundle says {m.get('version')!r}")
    return dict(inner)


def releases(raft: RaftNode) -> list[e.ModelVersion]:
    """Every registered firmware release."""
    return [v for v in raft.read(lambda s: s.model_versions()) if v.kind == FIRMWARE]


def release_by_sha(raft: RaftNode, sha_hex: str) -> e.ModelVersion | None:
    return next((v for v in releases(raft) if v.sha256.hex() == sha_hex), None)


def _running(raft: RaftNode, device_id: str, reported: str | None) -> tuple[str | None, str | None]:
    """(version, platform) the hub believes the device runs: from the status
    this node last had from it ("0.2.0+b:1f2e3d4c") and the last update the
    ledger has DONE; the higher version, and a platform when a release names it."""
    found: list[tuple[tuple[int, ...], str, str | None]] = []
    listed = releases(raft)
    if reported:
        version, _, slot = reported.partition("+")
        short = slot.rpartition(":")[2] if ":" in slot else ""
        mv = next((v for v in listed if short and v.sha256.hex().startswith(short)), None)
        with contextlib.suppress(ValueError):
            found.append((firmware_version(version), version, _platform(mv)))
    for rec in reversed(raft.read(lambda s: s.commands(device_id))):
        if rec.command.action == OTA and rec.state is e.LedgerState.DONE:
            sha = next((str(p.value) for p in rec.command.params if p.name == "sha256"), "")
            mv = next((v for v in listed if v.sha256.hex() == sha), None)
            if mv is not None:
                found.append((firmware_version(mv.version), mv.version, _platform(mv)))
            break
    if not found:
        return None, None
    best = max(found, key=lambda f: f[0])
    return best[1], best[2] or next((f[2] for f in found if f[2]), None)


def _platform(mv: e.ModelVersion | None) -> str | None:
    if mv is None:
        return None
    inner = json.loads(mv.manifest).get("manifest") or {}
    platform = inner.get("platform")
    return platform if isinstance(platform, str) else None


def ota_params(
    raft: RaftNode,
    trusted: dict[str, Ed25519PublicKey],
    device_id: str,
    given: dict[str, Any],
    reported: str | None,
) -> dict[str, Any]:
    """The params of an ota.update for ``device_id``: ``given`` (url, sha256,
    allow_downgrade) with the release's signed manifest and signature, if the
    release may go to the device; ReleaseRefused otherwise. ``reported`` is
    the firmware the device last reported in its status on this node."""
    for name in ("release", "signature"):
        if name in given:
            raise ReleaseRefused(
                "bad_param", f"{name} comes from the release registry: send url and sha256"
            )
    sha = given.get("sha256")
    allow = given.get("allow_downgrade", False)
    if not isinstance(allow, bool):
        raise ReleaseRefused("bad_param", "allow_downgrade must be true or false")
    mv = release_by_sha(raft, sha) if isinstance(sha, str) else None
    if mv is None:
        raise ReleaseRefused(
            "unknown_release",
            f"no firmware release with sha256 {str(sha)[:64]!r}: "
            "sign and register it first (aiot firmware release)",
        )
    inner = check_release(mv, trusted)
    version, platform = _running(raft, device_id, reported)
    if platform is not None and inner["platform"] != platform:
        raise ReleaseRefused(
            "wrong_platform",
            f"{mv.name}@{mv.version} is for {inner['platform']}, {device_id} runs {platform}",
        )
    older = version is not None and firmware_version(mv.version) < firmware_version(version)
    if older and not allow:
        raise ReleaseRefused(
            "downgrade",
            f"{device_id} runs {version}, release {mv.version} is older: "
            "set allow_downgrade to install it anyway",
        )
    return {
        **given,
        "allow_downgrade": allow,
        "release": mv.manifest.decode(),
        "signature": mv.signature.hex(),
    }
