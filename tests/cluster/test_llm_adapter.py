"""LoRA adapters on a real hub: a MicroPython plug keeps tripping an
alert rule, the LLM tier (real llama.cpp) is consulted after each firing, and
the adapter is hot-swapped under it. Each LLM decision's provenance names
the base and the adapter it ran with; an adapter for an unknown base is
refused at the door, a tampered one at load while the running one stays;
rollback is activating the earlier version, and switching the adapter off
goes back to the plain base. Adapters: tests/llm/adapters.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import DEVICE_TUNING, running_cluster
from tests.cluster.test_hub_daemon import aiot
from tests.device import Device
from tests.llm.adapters import base_model, base_sha256, write_adapter
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython, pytest.mark.llm]

EXTRA = """
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


def llm_status(cluster: LocalCluster) -> dict[str, Any]:
    st: dict[str, Any] = cluster.client(0).get("/v1/status")["decisions"]["llm"]
    return st


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
    assert cluster.client(0).get("/v1/status")["decisions"]["llm"]["fact_changes"] >= 1


def test_adapters_swap_under_consultations(tmp_path: Path) -> None:
    base = base_model()
    key = tmp_path / "signing.key"
    r = aiot("models", "keygen", "--out", str(key))
    assert r.returncode == 0, r.stderr
    extra = f'[models]\ntrusted_keys = ["{r.stdout.strip()}"]\n' + EXTRA
    extra += f'\n[decisions.policies]\nheat = "{HEAT_POLICY}"\n'
    files = {v: write_adapter(tmp_path / f"a{v}", base, seed=v, layers=2) for v in (1, 2, 3)}
    sha = {v: man["sha256"] for v, (_, man) in files.items()}
    with running_cluster(tmp_path, nodes=1, extra=extra, llm=True) as cluster:
        cfg = str(cluster.configs[0])

        def push(v: int, *more: str) -> Any:
            args = ("models", "push", str(files[v][0]), "--sign-key", str(key))
            return aiot(*args, "--version", str(v), "--config", cfg, *more)

        for v in (1, 2, 3):  # kind lora and name llm-adapter from adapter.json
            r = push(v)
            assert r.returncode == 0 and f"llm-adapter@{v}" in r.stdout, r.stderr
        r = push(1, "--version", "9", "--base-sha256", "ff" * 32)
        assert r.returncode == 1 and "unknown_base" in r.stderr, r.stderr
        assert all(m["version"] != "9" for m in cluster.client(0).get("/v1/models"))

        secrets = cluster.client(0).post("/v1/devices", {"device_id": "plug-d", "limit_w": 1.0})
        tuning = {**DEVICE_TUNING, "sample_ms": 200, "flush_ms": 200}
        dev = Device(tmp_path / "plug-d", {**secrets, **tuning}).start()
        try:
            seen = 0
            for v in (1, 2):
                assert (
                    aiot("models", "activate", f"llm-adapter@{v}", "--config", cfg).returncode == 0
                )
                wait_until(
                    lambda v=v, s=seen: decided_with(cluster, sha[v], s), 120, f"adapter {v}"
                )
                seen = len(llm_rows(cluster))
            # Tampered on disk after registration: refused at load, 2 keeps running.
            blob = cluster.data_dir(0) / "models" / sha[3]
            data = bytearray(blob.read_bytes())
            data[-1] ^= 0xFF
            blob.write_bytes(bytes(data))
            assert aiot("models", "activate", "llm-adapter@3", "--config", cfg).returncode == 0
            wait_until(
                lambda: "sha256_mismatch" in str(cluster.client(0).get("/v1/status")["models"]),
                60,
                "llm-adapter@3 refused",
            )
            assert llm_status(cluster)["adapter_sha256"] == sha[2]
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
            assert llm_status(cluster)["adapter"] is None
        finally:
            dev.stop()
        facts_change_is_consulted(cluster, tmp_path)
        rows = llm_rows(cluster)
        status = cluster.client(0).get("/v1/status")["decisions"]
        assert status["failed"] == 0 and status["llm"]["swaps"] >= 2, status
        for d in rows:  # every consultation recorded, on the base, never a worker error
            assert d["model"]["sha256"] == base_sha256(base)
            assert d["llm"]["outcome"] != "error", d["llm"]
        assert "llm-adapter@3" not in {
            d["model"]["adapter"]["name"] for d in rows if d["model"]["adapter"]
        }
