"""The LLM tier through the trust gate, end to end: a MicroPython plug whose
power goes over its limit, a worded policy for its class that no rule
covers, and the shipped fine-tuned adapter (models/llm-adapter/). With a
trust threshold its signed eval report reaches, the LLM's decision goes
through the guard and the plug executes the command once; the provenance
names the adapter and `aiot ask` explains it. With a threshold above the
report, the same change is recorded as advice and nothing is sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hub.decide import registry as reg
from hub.decide.llm import MODELS_DIR
from tests.cluster.hubs import DEVICE_TUNING, running_cluster
from tests.cluster.test_hub_daemon import aiot
from tests.device import Device
from tests.llm.adapters import base_model
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython, pytest.mark.llm]

# No rule names heat-*: only the class's policy in words covers its power.
POLICY = (
    "If power is over the limit, switch the relay off. Otherwise, if power is under the "
    "limit, do nothing. Otherwise, do nothing."
)


def shipped() -> tuple[reg.Adapter, float]:
    base_model()  # skips, saying what to install, without llama.cpp or the base GGUF
    found = reg.shipped_adapter(MODELS_DIR)
    if found is None:
        pytest.skip(f"no adapter is shipped in {MODELS_DIR / reg.LLM_ADAPTER}")
    adapter, _ = found
    assert adapter.report is not None, "the shipped adapter has no eval report"
    return adapter, float(adapter.report["accuracy"])


def llm_decisions(cluster: LocalCluster) -> list[dict[str, Any]]:
    rows = cluster.client(0).get("/v1/decisions", device="heat-1", limit=1000)
    return [d for d in rows if d["tier"] == "llm"]


def _consult(tmp_path: Path, threshold: float, want_off: bool) -> None:
    adapter, _ = shipped()
    extra = (
        f"[decisions]\nllm_trust_threshold = {threshold}\n"
        f'\n[decisions.policies]\nheat = "{POLICY}"\n'
    )
    with running_cluster(tmp_path, nodes=1, extra=extra, llm=True) as cluster:
        cfg = str(cluster.configs[0])
        secrets = cluster.client(0).post("/v1/devices", {"device_id": "heat-1", "limit_w": 500.0})
        tuning = {**DEVICE_TUNING, "sample_ms": 200, "flush_ms": 200, "event_every_s": 4}
        dev = Device(tmp_path / "heat-1", {**secrets, **tuning}).start()
        try:

            def over() -> list[dict[str, Any]]:
                return [
                    d
                    for d in llm_decisions(cluster)
                    if d["facts"][0].startswith("power is over the limit")
                    and (d.get("recommendation") or {}).get("action") == "relay.set"
                ]

            wait_until(lambda: bool(over()), 240, "an LLM decision on heat-1 over its limit")
            d = over()[0]
            assert d["policy"] == POLICY and d["policy_source"] == "config"
            assert d["model"]["adapter"]["name"] == adapter.name
            assert d["model"]["adapter"]["sha256"] == adapter.sha256
            assert d["recommendation"]["params"] == {"on": False}, d
            if want_off:
                assert d["mode"] == "actuate" and d["command_id"], d
                cid = d["command_id"]
                admin = cluster.client(0)
                wait_until(lambda: admin.get(f"/v1/commands/{cid}")["state"] == "DONE", 60, "DONE")
                cmd = admin.get(f"/v1/commands/{cid}")
                assert (cmd["action"], cmd["params"]) == ("relay.set", {"on": False}), cmd
                out = aiot("ask", "why did heat-1 switch off?", "--json", "--config", cfg)
                answer = json.loads(out.stdout)
                assert answer["sources"] == [d["decision_id"], cid], answer
                assert f"with adapter {adapter.name}" in answer["answer"]
                assert "Policy (config)" in answer["answer"]
            else:
                assert d["mode"] == "advisory" and not d.get("command_id"), d
                assert "below the threshold" in d["trust"]
                out = aiot("ask", "what happened to heat-1?", "--json", "--config", cfg)
                assert "nothing was sent" in json.loads(out.stdout)["answer"]
        finally:
            stats = dev.interrupt()
        cmds = cluster.client(0).get("/v1/commands", device="heat-1")
        if want_off:
            # Each command the LLM issued, executed once by the plug.
            issued = {x["command_id"] for x in llm_decisions(cluster) if x.get("command_id")}
            assert issued and {c["command_id"] for c in cmds} == issued, cmds
            assert all(c["state"] == "DONE" for c in cmds), cmds
            assert stats["commands"]["executed"] == len(issued), stats["commands"]
            assert stats["relay_on"] is False
        else:
            assert cmds == [] and stats["commands"]["executed"] == 0, (cmds, stats)
        status = cluster.client(0).get("/v1/status")["decisions"]
        assert status["failed"] == 0, status


def test_a_passing_report_lets_the_llm_switch_the_plug_off_once(tmp_path: Path) -> None:
    _, accuracy = shipped()
    _consult(tmp_path, max(0.0, round(accuracy - 0.05, 3)), want_off=True)


def test_below_the_threshold_the_same_change_is_advice_only(tmp_path: Path) -> None:
    _, accuracy = shipped()
    _consult(tmp_path, min(1.0, round(accuracy + 0.05, 3)), want_off=False)
