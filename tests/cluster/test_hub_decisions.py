"""The decision engine end to end: a MicroPython plug goes over its limit, the
leader's rule fires, the guard allows it, and the plug executes the relay-off
command once; the decision and its provenance are in the replicated ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.hubs import running_cluster
from tests.support import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

RULES = """
[rules]
timezone = "UTC"

[[rules.rule]]
id = "over-limit"
description = "A plug over its limit for 2 s is switched off."
devices = ["plug-*"]
sensor = "power_w"
above = "limit"
for_s = 2
cooldown_s = 600
action = "relay.set"
params = { on = false }
alert = true

[guard]
cooldown_s = { "relay.set" = 60 }
"""


def test_over_limit_switches_the_plug_off_once(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=RULES) as cluster:
        admin = cluster.any_client()
        secrets = admin.post("/v1/devices", {"device_id": "plug-d", "limit_w": 1000.0})
        from tests.cluster.hubs import DEVICE_TUNING
        from tests.device import Device

        tuning = {**DEVICE_TUNING, "sample_ms": 200, "flush_ms": 200, "event_every_s": 4}
        dev = Device(tmp_path / "plug-d", {**secrets, **tuning}).start()
        try:
            found: dict[str, object] = {}

            def decided() -> bool:
                rows = cluster.any_client().get("/v1/decisions", device="plug-d")
                acted = [d for d in rows if d["command_id"]]
                if acted:
                    found.update(acted[-1])
                return bool(acted)

            wait_until(decided, 90, "a rule decision with a command")
            assert found["tier"] == "rules" and found["rule"] == "over-limit"
            assert found["alert"] is True and found["guard"]["outcome"] == "allowed"  # type: ignore[index]
            assert any("over the limit" in f for f in found["facts"])  # type: ignore[attr-defined]
            cid = str(found["command_id"])
            wait_until(
                lambda: cluster.any_client().get(f"/v1/commands/{cid}")["state"] == "DONE",
                60,
                "the relay-off command DONE",
            )
            cmd = cluster.any_client().get(f"/v1/commands/{cid}")
            assert cmd["action"] == "relay.set" and cmd["params"] == {"on": False}
            alerts = cluster.any_client().get("/v1/alerts", device="plug-d")
            assert any(a["decision_id"] == found["decision_id"] for a in alerts)
            # `aiot ask` explains it from the ledger.
            from tests.cluster.test_hub_daemon import aiot

            out = aiot(
                "ask", "why did plug-d switch off?", "--json", "--config", str(cluster.configs[0])
            )
            assert out.returncode == 0, out.stderr
            answer = json.loads(out.stdout)
            assert answer["method"] == "rules"
            assert answer["sources"][:2] == [found["decision_id"], cid]
            assert "over-limit" in answer["answer"] and "DONE" in answer["answer"]
        finally:
            stats = dev.interrupt()
        assert stats["commands"]["executed"] == 1, stats["commands"]
        assert stats["relay_on"] is False


def test_the_guard_checks_operator_commands_and_records_what_it_blocks(tmp_path: Path) -> None:
    from tools.base.hubclient import HubError

    extra = '[guard]\ncritical = ["fridge-*"]\n'
    with running_cluster(tmp_path, nodes=1, extra=extra) as cluster:
        c = cluster.client(0)
        c.post("/v1/devices", {"device_id": "fridge-1"})
        off = {"device": "fridge-1", "action": "relay.set", "params": {"on": False}}
        with pytest.raises(HubError) as err:
            c.post("/v1/commands", off)
        assert err.value.status == 409 and "critical_interlock" in str(err.value)
        assert c.get("/v1/commands", device="fridge-1") == []  # nothing entered the ledger
        (blocked,) = c.get("/v1/decisions", device="fridge-1")
        assert blocked["tier"] == "operator" and blocked["guard"]["outcome"] == "blocked"
        assert blocked["command_id"] is None
        ok = c.post("/v1/commands", {**off, "approved": True})
        assert ok["state"] == "PENDING"
        assert c.post("/v1/commands", {**off, "params": {"on": True}})["state"] == "PENDING"
