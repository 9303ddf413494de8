"""LoRA adapters on three real hubs: a MicroPython plug keeps tripping an
alert rule, the leader's LLM tier (real llama.cpp) is consulted after each
firing, and the adapter is hot-swapped under it on every hub, with no failed
or dropped decision. Each LLM decision's provenance names the base and the
adapter it ran with; an adapter for an unknown base, signed by an untrusted
key or unsigned is refused at the door, a tampered one at load on every node
while the running one stays;
rollback is activating the earlier version, and switching the adapter off
goes back to the plain base. Adapters: tests/llm/adapters.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import DEVICE_TUNING, running_cluster
from tests.cluster.test_hub_daemon import aiot
from tests.device import Device
from tests.llm.adapters import base_model, base_sha256, write_adapter
from tests.support import wait_until
from tools.base.hubclient import HubError
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython, pytest.mark.llm]

# The shipped adapter's report reaches the default trust threshold, so it
# would actuate (and could switch the plug off, ending the firings these
# tests consult on) before the test's adapters are activated: these tests are
# about swaps and provenance, so every adapter here stays advisory.
EXTRA = """
[decisions]
llm_trust_threshold = 1.0

[rules]
timezone = "UTC"

[[rules.rule]]
id = "over-limit"
description = "Each reading over the limit is a run of its own: an alert a second."
devices = ["plug-*"]
sensor = "power_w"
above = "limit"
max_gap_s = 0.1
cooldown_s = 1
action = "alert"
"""


def llm_rows(cluster: LocalCluster) -> list[dict[str, Any]]:
    rows = cluster.client(0).get("/v1/decisions", device="plug-d", limit=1000)
    return [d for d in rows if d["tier"] == "llm"]


def decided_with(cluster: LocalCluster, adapter_sha: str, after: int) -> bool:
    """An LLM decision, newer than the first ``after``, that ran with this adapter."""
    rows = sorted(llm_rows(cluster), key=lambda d: d["at_ms"])[after:]
    return any((d["model"].get("adapter") or {}).get("sha256") == adapter_sha for d in rows)


HEAT_POLICY = "When power is over the limit, notify nobody and do nothing. Otherwise do nothing."


def facts_change_is_consulted(cluster: LocalCluster, tmp_path: Path) -> None:
    """No rule covers heat-1: when its power goes over its limit (an appliance
    event of the simulated plug), the LLM tier is consulted all the same, with
    the heat class's policy from the config; advisory, so nothing is sent."""
    secrets = cluster.client(0).post("/v1/devices", {"device_id": "heat-1", "limit_w": 500.0})
    dev = Device(tmp_path / "heat-1", {**secrets, **DEVICE_TUNING, "sample_ms": 200}).start()
    try:

        def consulted() -> list[dict[str, Any]]:
            rows = cluster.client(0).get("/v1/decisions", device="heat-1", limit=100)
            return [d for d in rows if d["tier"] == "llm" and d["after"]["tier"] == "facts"]

        wait_until(lambda: bool(consulted()), 150, "an LLM decision on a change of heat-1's facts")
    finally:
        dev.stop()
    d = consulted()[0]
    assert d["after"] == {"tier": "facts", "rule": None}
    assert d["policy"] == HEAT_POLICY and d["policy_source"] == "config"
    # Power went over the limit, or came back under it: either is a change.
    assert d["facts"][0].startswith(("power is over the limit", "power is under")), d["facts"]
    assert d["mode"] == "advisory" and not d.get("command_id")
    # The count is the engine's, on the node that led when the facts changed.
    changes = [
        cluster.client(i).get("/v1/status")["decisions"]["llm"]["fact_changes"]
        for i in range(cluster.n)
    ]
    assert sum(changes) >= 1, changes


def adapter_rows(cluster: LocalCluster, i: int) -> dict[str, Any]:
    """Node i's view of each llm-adapter version: (active here, its error here)."""
    node = cluster.node_id(i)
    return {
        str(m["version"]): (m["active_on"].get(node), m["error_on"].get(node))
        for m in cluster.client(i).get("/v1/models")
        if m["name"] == "llm-adapter"
    }


def runs_everywhere(cluster: LocalCluster, sha: str) -> bool:
    """Every node's LLM tier is set to run this adapter."""
    return all(
        cluster.client(i).get("/v1/status")["decisions"]["llm"]["adapter_sha256"] == sha
        for i in range(cluster.n)
    )


def test_adapters_swap_under_consultations(tmp_path: Path) -> None:
    """Three hubs; the leader consults the LLM on every firing of the plug's
    alert rule while adapters 1 and 2 are activated in turn."""
    base = base_model()
    key = tmp_path / "signing.key"
    r = aiot("models", "keygen", "--out", str(key))
    assert r.returncode == 0, r.stderr
    extra = f'[models]\ntrusted_keys = ["{r.stdout.strip()}"]\n' + EXTRA
    extra += f'\n[decisions.policies]\nheat = "{HEAT_POLICY}"\n'
    files = {v: write_adapter(tmp_path / f"a{v}", base, seed=v, layers=2) for v in (1, 2, 3)}
    sha = {v: man["sha256"] for v, (_, man) in files.items()}
    with running_cluster(tmp_path, nodes=3, extra=extra, llm=True) as cluster:
        cfg = str(cluster.configs[0])

        def push(v: int, *more: str, sign: Path = key) -> Any:
            args = ("models", "push", str(files[v][0]), "--sign-key", str(sign))
            return aiot(*args, "--version", str(v), "--config", cfg, *more)

        for v in (1, 2, 3):  # kind lora and name llm-adapter from adapter.json
            r = push(v)
            assert r.returncode == 0 and f"llm-adapter@{v}" in r.stdout, r.stderr
        # Refused at the door: built for another base, signed by an untrusted
        # key, or not signed at all.
        r = push(1, "--version", "9", "--base-sha256", "ff" * 32)
        assert r.returncode == 1 and "unknown_base" in r.stderr, r.stderr
        other = tmp_path / "other.key"
        assert aiot("models", "keygen", "--out", str(other)).returncode == 0
        r = push(1, "--version", "8", sign=other)
        assert r.returncode == 1 and "untrusted_key" in r.stderr, r.stderr
        unsigned = {"name": "llm-adapter", "version": "7", "kind": "lora", "manifest": {}}
        with pytest.raises(HubError) as err:
            cluster.client(1).post(
                "/v1/models",
                {"manifest": json.dumps({**unsigned, "sha256": sha[1], "size": 1}),
                 "signature": "", "key_id": ""},
            )  # fmt: skip
        assert err.value.status == 422, err.value
        for i in range(cluster.n):
            assert set(adapter_rows(cluster, i)) == {"1", "2", "3"}

        secrets = cluster.client(0).post("/v1/devices", {"device_id": "plug-d", "limit_w": 1.0})
        tuning = {**DEVICE_TUNING, "sample_ms": 200, "flush_ms": 200}
        dev = Device(tmp_path / "plug-d", {**secrets, **tuning}).start()
        try:
            seen = 0
            for v in (1, 2):
                assert (
                    aiot("models", "activate", f"llm-adapter@{v}", "--config", cfg).returncode == 0
                )
                wait_until(lambda v=v: runs_everywhere(cluster, sha[v]), 60, f"{v} everywhere")
                wait_until(
                    lambda v=v, s=seen: decided_with(cluster, sha[v], s), 120, f"adapter {v}"
                )
                seen = len(llm_rows(cluster))
            # Tampered on every node's disk after registration: refused at
            # load on every node, and 2 keeps running.
            for i in range(cluster.n):
                blob = cluster.data_dir(i) / "models" / sha[3]
                data = bytearray(blob.read_bytes())
                data[-1] ^= 0xFF
                blob.write_bytes(bytes(data))
            assert aiot("models", "activate", "llm-adapter@3", "--config", cfg).returncode == 0
            wait_until(
                lambda: all(adapter_rows(cluster, i)["3"][1] for i in range(cluster.n)),
                60,
                "every node to report why llm-adapter@3 is refused",
            )
            for i in range(cluster.n):
                assert "sha256_mismatch" in adapter_rows(cluster, i)["3"][1]
            assert runs_everywhere(cluster, sha[2])
            seen = len(llm_rows(cluster))
            wait_until(lambda: decided_with(cluster, sha[2], seen), 120, "adapter 2 serving")
            # Rollback: the earlier version again.
            assert aiot("models", "activate", "llm-adapter@1", "--config", cfg).returncode == 0
            seen = len(llm_rows(cluster))
            wait_until(lambda: decided_with(cluster, sha[1], seen), 120, "adapter 1 again")
            # Back to the plain base: the adapter switched off.
            assert aiot("models", "deactivate", "llm-adapter", "--config", cfg).returncode == 0
            seen = len(llm_rows(cluster))

            def on_the_base() -> bool:
                rows = sorted(llm_rows(cluster), key=lambda d: d["at_ms"])[seen:]
                return any(d["model"]["adapter"] is None for d in rows)

            wait_until(on_the_base, 120, "a decision on the plain base")
            for i in range(cluster.n):
                assert cluster.client(i).get("/v1/status")["decisions"]["llm"]["adapter"] is None
        finally:
            dev.stop()
        facts_change_is_consulted(cluster, tmp_path)
        rows = llm_rows(cluster)
        leader = cluster.leader()
        status = cluster.client(leader).get("/v1/status")["decisions"]
        llm = status["llm"]
        # No failed or dropped decision: every consultation recorded, none
        # an error of the worker, none dropped while it waited.
        # Four switches (1, 2, 1 again, off); the first is a swap only when the
        # leader's worker had started before it (else it loads adapter 1).
        assert status["failed"] == 0 and llm["swaps"] >= 3, status
        # The first load and every swap primed the new worker with the newest
        # consultation's prompt before it answered (a swap before the first
        # load, with no consultation yet, only chose what that load runs).
        assert llm["primed"] >= llm["swaps"], llm
        assert "error" not in llm["outcomes"] and llm["missed"] == 0, llm
        for d in rows:  # every consultation recorded, on the base, never a worker error
            assert d["model"]["sha256"] == base_sha256(base)
            assert d["llm"]["outcome"] != "error", d["llm"]
        assert "llm-adapter@3" not in {
            d["model"]["adapter"]["name"] for d in rows if d["model"]["adapter"]
        }
