"""Down from the cloud: model versions into this site's registry, and the
site's report up (docs/cloud.md "Down to the sites").

While this node leads, it watches the cloud's object store ``aiot-models``
(tools/cloud/models.py puts each signed version there, for the fleet or for
one site) and the key-value bucket ``aiot-policies`` (signed rules files,
model versions of kind "rules", their bytes in the entry itself). For a
version meant for this site and not yet registered here:

1. it checks the signature against this hub's own ``[models] trusted_keys``
   and the manifest against the object (hub/decide/registry.py) — a version
   signed by a key the site does not trust is refused, and said so in the
   status, whatever the cloud says;
2. it stores the bytes (they must hash to the manifest's sha256);
3. it proposes the MODEL_VERSION through Raft (the other nodes fetch the
   bytes from it, as for `aiot models push`), then, if the version asks for
   it, the activation (MODEL_PUT): every node hot-swaps.

A version already registered is never activated again from the cloud, so a
local rollback stays. Every ``REPORT_S`` the leader puts the site's report
into the key-value bucket ``aiot-sites``, under the site's id: when, from
which node, the models each node of the site was told to run (the replicated
activations) and what this node runs, and the export's status.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import nats

from hub.core.clock import wall_ms
from hub.core.cloudcfg import CloudConfig
from hub.decide.registry import (
    FIRMWARE,
    RULES,
    ModelRefused,
    ModelRegistry,
    check_kind,
    parse_rule_set,
    propose_activation,
    verify_signature,
    version_record,
)
from hub.link.cloudlink import close_link, open_link
from hub.state import entries as e
from hub.state.raft import RaftError, RaftNode
from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET

log = logging.getLogger("aiot.cloud")

REPORT_S: Final = 10.0
WAIT_S: Final = 1.0  # how long one wait for the next object lasts


@dataclass(frozen=True, slots=True)
class Offer:
    """One object of the models bucket, as the cloud describes it."""

    object_name: str
    manifest: bytes
    signature: bytes
    key_id: str
    target: str
    activate: bool

    @classmethod
    def parse(cls, object_name: str, description: str | None) -> Offer:
        try:
            doc = json.loads(description or "")
            return cls(
                object_name,
                base64.b64decode(doc["manifest"], validate=True),
                base64.b64decode(doc["signature"], validate=True),
                str(doc["key_id"]),
                str(doc["target"]),
                bool(doc.get("activate", False)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelRefused("bad_offer", f"{object_name}: {exc}") from None

    def for_site(self, site: str) -> bool:
        return self.target in ("fleet", f"site:{site}")


class CloudDown:
    def __init__(
        self,
        cfg: CloudConfig,
        raft: RaftNode,
        registry: ModelRegistry,
        node_id: str,
        export_status: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.raft = raft
        self.registry = registry
        self.node_id = node_id
        self.export_status = export_status
        self.received: list[str] = []  # name@version registered from the cloud
        self.refused: dict[str, str] = {}  # object -> why
        self.reports = 0
        self.last_error: str | None = None

    def _leading(self) -> bool:
        return self.raft.status().is_leader

    async def run(self) -> None:
        while True:
            if not self._leading():
                await asyncio.sleep(0.5)
                continue
            try:
                await self._lead()
            except (OSError, TimeoutError, nats.errors.Error, RaftError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cloud models paused", extra={"reason": self.last_error})
                await asyncio.sleep(2.0)

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"cloud unreachable: {exc or type(exc).__name__}"

    async def _lead(self) -> None:
        nc = await open_link(self.cfg, f"aiot-{self.cfg.site}-{self.node_id}-down", self._on_error)
        try:
            js = nc.jetstream(domain=self.cfg.domain)
            obs = await js.object_store(MODELS_BUCKET)
            sites = await js.key_value(SITES_BUCKET)
            policies = await js.key_value(POLICIES_BUCKET)
            models = await obs.watch(ignore_deletes=True)
            rules = await policies.watchall(ignore_deletes=True)
            next_report = 0.0
            while self._leading():
                if time.monotonic() >= next_report:
                    await self._report(sites)
                    next_report = time.monotonic() + REPORT_S
                if await self._next_model(obs, models) | await self._next_policy(rules):
                    next_report = 0.0  # say what changed
        finally:
            await close_link(nc)

    async def _next_model(self, obs: Any, watcher: Any) -> bool:
        """One object of the models bucket, if one comes within WAIT_S / 2."""
        try:
            info = await watcher.updates(timeout=WAIT_S / 2)
        except (TimeoutError, nats.errors.TimeoutError):
            return False
        if info is None or getattr(info, "deleted", False):
            return False
        name = str(info.name)

        async def data() -> bytes:
            return bytes((await obs.get(name)).data or b"")

        await self._offered(name, info.description, data)
        return True

    async def _next_policy(self, watcher: Any) -> bool:
        """One entry of the policies bucket (a signed rules file, its bytes in
        the value's ``data``), if one comes within WAIT_S / 2."""
        try:
            entry = await watcher.updates(timeout=WAIT_S / 2)
        except (TimeoutError, nats.errors.TimeoutError):
            return False
        if entry is None or entry.value is None:
            return False
        name = f"{POLICIES_BUCKET}/{entry.key}"
        value = bytes(entry.value)

        async def data() -> bytes:
            try:
                return base64.b64decode(json.loads(value)["data"], validate=True)
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelRefused("bad_offer", f"{name}: data: {exc}") from None

        await self._offered(name, value.decode("utf-8", "replace"), data)
        return True

    async def _offered(
        self, name: str, description: str | None, fetch: Callable[[], Awaitable[bytes]]
    ) -> None:
        try:
            offer = Offer.parse(name, description)
            if not offer.for_site(self.cfg.site):
                return
            mv = version_record(offer.manifest, offer.signature, offer.key_id)
            if any(
                v.version == mv.version for v in self.raft.read(lambda s: s.model_versions(mv.name))
            ):
                return  # registered already (from here or by hand): nothing to do
            verify_signature(mv, self.registry.trusted)
            if mv.kind == FIRMWARE:
                raise ModelRefused("not_a_model", f"{name} is a firmware release")
            data = await fetch()
            if hashlib.sha256(data).digest() != mv.sha256 or len(data) != mv.size:
                raise ModelRefused("sha256_mismatch", f"{name}: the bytes differ from the manifest")
            check_kind(mv)
            if mv.kind == RULES:
                parse_rule_set(mv, data)
            self.registry.store_blob(mv.sha256.hex(), [data])
            await self.raft.propose(e.encode(mv), timeout=10.0)
            if offer.activate:
                await propose_activation(self.raft, mv.name, mv.version)
        except ModelRefused as exc:
            if self.refused.get(name) != str(exc):
                log.warning("cloud model refused", extra={"object": name, "reason": str(exc)})
            self.refused[name] = str(exc)
            return
        self.received.append(f"{mv.name}@{mv.version}")
        log.info("model from the cloud", extra={"model": f"{mv.name}@{mv.version}"})

    def report(self) -> dict[str, Any]:
        active = {m.name: m.version for m in self.raft.read(lambda s: s.models())}
        return {
            "site": self.cfg.site,
            "node": self.node_id,
            "at_ms": wall_ms(),
            "models": active,
            "running_here": {n: s.get("version") for n, s in self.registry.status().items()},
            "received": self.received[-20:],
            "refused": dict(list(self.refused.items())[-20:]),
            "export": self.export_status(),
        }

    async def _report(self, kv: Any) -> None:
        await kv.put(self.cfg.site, json.dumps(self.report(), separators=(",", ":")).encode())
        self.reports += 1

    def status(self) -> dict[str, Any]:
        return {
            "received": self.received[-20:],
            "refused": self.refused,
            "reports": self.reports,
            "error": self.last_error,
        }
