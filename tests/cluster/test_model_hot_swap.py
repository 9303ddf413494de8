"""Hot reload under load, in one real replica (pysyncobj over LMDB) with the
real onnxruntime: windows keep being scored while the anomaly model is
swapped ten times, and not one decision fails or is dropped. A tampered
version is refused and the old one keeps serving."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hub.core import keys
from hub.decide import registry as reg
from hub.decide.anomaly import POWER_W, WINDOW_READINGS, DeviceWindows
from hub.decide.registry import SHIPPED, ModelRegistry
from hub.state import entries as e
from hub.state.raft import RaftNode
from tests.cluster.test_raft_cluster import SECRET
from tests.support import free_port

pytestmark = pytest.mark.cluster


def version(name: str, ver: str, data: bytes, key: object) -> e.ModelVersion:
    inner = json.loads(SHIPPED.read_text())
    signed = reg.signed_manifest(name, ver, "onnx", data, inner)
    sig, kid = keys.sign(signed, key)  # type: ignore[arg-type]
    return reg.version_record(signed, sig, kid)


async def until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check`` on the event loop until true, or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def test_swapping_ten_times_under_load_drops_nothing(tmp_path: Path) -> None:
    priv, pub = keys.keygen()
    key = keys.private_key(_write(tmp_path / "k", priv))
    public = keys.public_key(pub)
    data = (SHIPPED.parent / "anomaly.onnx").read_bytes()
    tampered = bytearray(data)
    tampered[100] ^= 0x01

    async def scenario(node: RaftNode) -> dict[str, int]:
        await until(lambda: node.is_ready, "the one-node replica ready", 20)
        registry = ModelRegistry(
            "hub-1", node, tmp_path / "blobs", {keys.key_id(public): public}, "t"
        )
        node.on_applied = registry.notice
        for ver, blob in (("a", data), ("b", data), ("bad", bytes(tampered))):
            mv = version("anomaly", ver, blob, key)
            registry.store_blob(mv.sha256.hex(), [blob])
            await node.propose(e.encode(mv))
        runner = asyncio.create_task(registry.run())
        windows: DeviceWindows | None = None
        counts = {"offered": 0, "scored": 0, "failed": 0, "swaps": 0}
        stop = asyncio.Event()

        async def load() -> None:
            nonlocal windows
            ts = 1_763_700_000_000
            i = 0
            while not stop.is_set():
                for _ in range(WINDOW_READINGS + 1):
                    model = registry.current("anomaly")
                    if windows is None:
                        windows = DeviceWindows(model)
                    windows.model = model  # the engine's swap point
                    i += 1
                    ts += 1000
                    try:
                        if windows.add("plug-1", ts, POWER_W, 100.0 + (i % 7)) is not None:
                            counts["scored"] += 1
                    except Exception:
                        counts["failed"] += 1
                counts["offered"] += 1
                await asyncio.sleep(0.001)

        def serving(version: str) -> bool:
            active = registry.active.get("anomaly")
            return active is not None and active.version == version

        async def swap(to: str) -> None:
            await reg.propose_activation(node, "anomaly", to)
            await until(lambda: serving(to), f"version {to} active")
            counts["swaps"] += 1

        # the shipped model, at start
        await until(lambda: registry.current("anomaly") is not None, "the shipped model")
        loader = asyncio.create_task(load())
        for n in range(10):
            await swap("a" if n % 2 == 0 else "b")
        # A tampered version: refused, and the old one keeps serving: windows
        # go on being scored by it after the refusal.
        await reg.propose_activation(node, "anomaly", "bad")
        await until(lambda: "anomaly" in registry.errors, "the tampered version refused")
        refused_at = counts["scored"]
        await until(lambda: counts["scored"] >= refused_at + 5, "five windows scored after it")
        still = serving("b")
        stop.set()
        await loader
        runner.cancel()
        counts["serving_b"] = int(still)
        counts["refused"] = registry.refused
        counts["loads"] = registry.loads
        return counts

    node = RaftNode(f"127.0.0.1:{free_port()}", [], tmp_path / "n", SECRET)
    try:
        counts = asyncio.run(scenario(node))
    finally:
        node.close()
    assert counts["swaps"] == 10 and counts["loads"] == 10
    assert counts["failed"] == 0
    # Every window offered was scored: one per 61 readings, none lost in a swap.
    assert counts["scored"] >= counts["offered"] - 1 > 0
    assert counts["refused"] == 1 and counts["serving_b"] == 1


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_signature_checks(tmp_path: Path) -> None:
    priv, pub = keys.keygen()
    key = keys.private_key(_write(tmp_path / "k", priv))
    public = keys.public_key(pub)
    trusted = {keys.key_id(public): public}
    mv = version("anomaly", "1", b"bytes", key)
    assert reg.verify_signature(mv, trusted)["sha256"] == hashlib.sha256(b"bytes").hexdigest()
    forged = e.ModelVersion(
        mv.name,
        mv.version,
        mv.kind,
        mv.sha256,
        mv.size,
        mv.manifest + b" ",
        mv.signature,
        mv.key_id,
        1,
    )
    with pytest.raises(reg.ModelRefused) as err:
        reg.verify_signature(forged, trusted)
    assert err.value.reason == "bad_signature"
    with pytest.raises(reg.ModelRefused) as err:
        reg.verify_signature(mv, {})
    assert err.value.reason == "untrusted_key"
    other = json.loads(mv.manifest)
    other["version"] = "9"
    relabelled = keys.canonical(other)
    sig, kid = keys.sign(relabelled, key)
    lying = e.ModelVersion(mv.name, "1", mv.kind, mv.sha256, mv.size, relabelled, sig, kid, 1)
    with pytest.raises(reg.ModelRefused) as err:
        reg.verify_signature(lying, trusted)
    assert err.value.reason == "manifest_mismatch"
    with pytest.raises(ValueError):
        keys.public_key(base64.b64encode(b"short").decode())


GUARD_RULES = """
[[rule]]
id = "guard-{n}"
devices = ["plug-*"]
sensor = "power_w"
above = {watts}
action = "alert"
"""


def rules_version(name: str, ver: str, text: str, key: object) -> tuple[e.ModelVersion, bytes]:
    data = text.encode()
    signed = reg.signed_manifest(name, ver, reg.RULES, data, {})
    sig, kid = keys.sign(signed, key)  # type: ignore[arg-type]
    return reg.version_record(signed, sig, kid), data


def test_rule_sets_from_the_registry_join_the_configs_rules(tmp_path: Path) -> None:
    from hub.core.config import DecisionsConfig
    from hub.decide import rules as r
    from hub.decide.engine import DecisionEngine
    from hub.decide.guard import Guard
    from protocol.profiles import PLUG_CAPABILITIES

    priv, pub = keys.keygen()
    key = keys.private_key(_write(tmp_path / "k", priv))
    public = keys.public_key(pub)
    config = r.parse_rules_file(
        {
            "rule": [
                {"id": "own", "devices": ["*"], "sensor": "power_w", "above": 1, "action": "alert"}
            ]
        },
        "hub.toml",
    )

    async def scenario(node: RaftNode) -> list[tuple[tuple[str, ...], str, tuple[str, ...]]]:
        await until(lambda: node.is_ready, "the one-node replica ready", 20)
        registry = ModelRegistry(
            "hub-1", node, tmp_path / "blobs", {keys.key_id(public): public}, "t"
        )
        engine = DecisionEngine(node, config, Guard(), DecisionsConfig(), models=registry)
        node.on_applied = registry.notice
        plug = e.Device("plug-1", b"k" * 32, PLUG_CAPABILITIES, 2000.0)
        await node.propose(e.encode(e.RegisterDevice(plug, 1)))
        engine.rules.bind(plug)
        runner = asyncio.create_task(registry.run())
        seen = []

        async def activate(name: str, ver: str, text: str) -> None:
            mv, data = rules_version(name, ver, text, key)
            registry.store_blob(mv.sha256.hex(), [data])
            await node.propose(e.encode(mv))
            await reg.propose_activation(node, name, ver)
            await until(lambda: f"{name}@{ver}" in dict(registry.rule_sets()), f"{name}@{ver}")
            engine.follow_rule_sets()
            seen.append((engine.rule_sets, engine.rules_error, engine.rules.rules_of("plug-1")))

        try:
            await activate("rules-a", "1", GUARD_RULES.format(n="a", watts=3000))
            await activate("rules-b", "1", GUARD_RULES.format(n="b", watts=2500))
            await activate("rules-a", "2", GUARD_RULES.format(n="a2", watts=3500))  # a swap
            await activate("rules-b", "2", GUARD_RULES.format(n="a2", watts=1))  # an id twice
            # A version of kind rules under a model's name never loads.
            mv, data = rules_version("anomaly", "9", GUARD_RULES.format(n="x", watts=1), key)
            with pytest.raises(reg.ModelRefused) as err:
                reg.load_bytes(mv, data, json.loads(mv.manifest))
            assert err.value.reason == "bad_name"
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        return seen

    node = RaftNode(f"127.0.0.1:{free_port()}", [], tmp_path / "n", SECRET)
    try:
        seen = asyncio.run(scenario(node))
    finally:
        node.close()
    assert seen[0] == (("rules-a@1",), "", ("own", "guard-a"))
    assert seen[1] == (("rules-a@1", "rules-b@1"), "", ("own", "guard-a", "guard-b"))
    assert seen[2] == (("rules-a@2", "rules-b@1"), "", ("own", "guard-a2", "guard-b"))
    # guard-a2 twice: the rules stay as they were, and the status says why.
    names, error, bound = seen[3]
    assert names == ("rules-a@2", "rules-b@1") and bound == ("own", "guard-a2", "guard-b")
    assert "rules-b@2" in error and "'guard-a2' is already defined in rules-a@2" in error
