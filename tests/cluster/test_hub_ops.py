"""Observability on real daemons: /metrics, /healthz, /readyz, JSON log
fields, and the Grafana dashboard against what /metrics exports.

The tests share one 3-node cluster; the last one kills two of its nodes."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Iterator

import aiomqtt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import running_cluster
from tests.cluster.test_hub_e2e import batch, publish_as
from tests.support import ROOT, wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

DASHBOARD = ROOT / "tools" / "grafana" / "aiot.json"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("ops")) as c:
        yield c


def scrape(cluster: LocalCluster, i: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, from node i's /metrics (no token)."""
    r = httpx.get(f"{cluster.client(i).url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def exported_names(cluster: LocalCluster, i: int) -> set[str]:
    """Every series name node i's /metrics declares, with or without samples
    yet (a labelled counter nobody has incremented still has its family)."""
    text = httpx.get(f"{cluster.client(i).url}/metrics", timeout=10).text
    out: set[str] = set()
    for fam in text_string_to_metric_families(text):
        out.add(fam.name)
        out.update(fam.name + s for s in SUFFIXES.get(fam.type, ()))
        out.update(s.name for s in fam.samples)
    return out


def value(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    want = tuple(sorted(labels.items()))
    return samples.get(name, {}).get(want, 0.0)


def publish(
    port: int,
    user: str,
    password: str,
    frames: list[tuple[str, bytes]],
    tls: ssl.SSLContext | None = None,
) -> list[bytes]:
    """publish_as, once the node's broker knows the new device (its
    credentials reload a moment after the registration is applied there)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return asyncio.run(publish_as(port, user, password, frames, tls))
        except aiomqtt.MqttError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_metrics_parse_and_counters_move_with_ingest(cluster: LocalCluster) -> None:
    before = scrape(cluster, 0)
    for name in (
        "aiot_raft_term",
        "aiot_raft_commit_index",
        "aiot_raft_applied_index",
        "aiot_raft_lag",
        "aiot_raft_is_leader",
        "aiot_ingest_acked_batches_total",
        "aiot_decision_latency_seconds_bucket",
        "aiot_decisions_total",
        "aiot_commands",
        "aiot_devices_online",
        "aiot_broker_restarts_total",
        "process_resident_memory_bytes",
    ):
        assert name in before, f"{name} not exported"
    assert value(before, "aiot_data_file_bytes", file="lmdb") > 0
    assert value(before, "aiot_node_info", node="hub-1", broker_mode="mosquitto") == 1
    assert sum(value(scrape(cluster, i), "aiot_raft_is_leader") for i in range(3)) == 1
    # The decision hooks are zero until the engine calls them, but exported.
    assert value(before, "aiot_decision_latency_seconds_count", tier="llm") >= 0

    dev = cluster.add_device("plug-m")
    key = bytes.fromhex(dev["key"])
    up = topics.topic("plug-m", "up")
    cluster.add_device("plug-idle")  # never connects: its command stays PENDING
    cluster.client(0).post("/v1/commands", {"device": "plug-idle", "action": "reboot"})
    frames = [
        (up, batch("plug-m", 1, 10, key)),
        (up, batch("plug-m", 11, 6, key)),
        (up, batch("plug-m", 1, 10, bytes(32))),  # bad_hmac
    ]
    port = cluster.ports[0].broker
    acks = publish(port, "plug-m", dev["password"], frames)
    marks = [
        msg.watermark
        for msg in (wire.decode_frame(a, key) for a in acks)
        if isinstance(msg, m.CommitAck)
    ]
    assert max(marks) == 16

    def moved() -> bool:
        now = scrape(cluster, 0)
        return (
            value(now, "aiot_ingest_acked_batches_total")
            - value(before, "aiot_ingest_acked_batches_total")
            >= 2
            and value(now, "aiot_ingest_readings_total")
            - value(before, "aiot_ingest_readings_total")
            == 16
            and value(now, "aiot_ingest_rejected_total", reason="bad_hmac")
            - value(before, "aiot_ingest_rejected_total", reason="bad_hmac")
            == 1
            and value(now, "aiot_commands", state="PENDING") >= 1
            and value(now, "aiot_devices_registered") >= 1
            and value(now, "aiot_devices_online") >= 1
            and value(now, "aiot_devices_connected") >= 1
        )

    wait_until(moved, 30, "ingest, reject, command and presence metrics to move on hub-1")
    after = scrape(cluster, 0)
    assert (
        value(after, "aiot_http_requests_total", method="POST", route="/v1/devices", status="201")
        + value(
            scrape(cluster, 1),
            "aiot_http_requests_total",
            method="POST",
            route="/v1/devices",
            status="201",
        )
        + value(
            scrape(cluster, 2),
            "aiot_http_requests_total",
            method="POST",
            route="/v1/devices",
            status="201",
        )
        >= 1
    )
    # Every node applied the readings; only hub-1 received them.
    wait_until(
        lambda: (
            value(scrape(cluster, 2), "aiot_readings_applied_total")
            - value(before, "aiot_readings_applied_total")
            >= 16
        ),
        30,
        "hub-3 to count the applied readings",
    )
    assert value(scrape(cluster, 2), "aiot_ingest_readings_total") == 0


def test_health_and_readiness_answer_without_a_token(cluster: LocalCluster) -> None:
    url = cluster.client(1).url
    h = httpx.get(f"{url}/healthz", timeout=5)
    assert h.status_code == 200 and h.json()["alive"] is True
    r = httpx.get(f"{url}/readyz", timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"ready": True, "node_id": "hub-2", "reasons": []}
    # The API itself still wants a token; the three operational paths do not.
    assert httpx.get(f"{url}/v1/status", timeout=5).status_code == 401


def test_a_rejected_batch_is_logged_as_json_with_device_and_reason(cluster: LocalCluster) -> None:
    dev = cluster.add_device("plug-log")
    port = cluster.ports[1].broker
    up = topics.topic("plug-log", "up")
    publish(port, "plug-log", dev["password"], [(up, b"\x5a" * 200)])

    def line() -> dict[str, str] | None:
        for raw in cluster.log_path(1).read_text().splitlines():
            if '"plug-log"' not in raw:
                continue
            rec = json.loads(raw)
            if rec["msg"].startswith("ingest rejected"):
                return dict(rec)
        return None

    wait_until(lambda: line() is not None, 20, "the rejection in hub-2's log")
    rec = line()
    assert rec is not None
    assert rec["device"] == "plug-log" and rec["reason"] == "bad_hmac"
    assert rec["node"] == "hub-2" and rec["level"] == "warning"
    assert {"ts", "logger", "msg"} <= set(rec)


def test_the_grafana_dashboard_queries_only_exported_metrics(cluster: LocalCluster) -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if "expr" in t]
    queried = {n for x in exprs for n in re.findall(r"\b((?:aiot|process)_[a-z0-9_]+)\b", x)}
    exported = exported_names(cluster, 0)
    assert queried, "no metric queried"
    assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"
    titles = " | ".join(p["title"].lower() for p in doc["panels"])
    for topic in (
        "ingest rate",
        "rejects",
        "raft lag",
        "leader",
        "commands by state",
        "devices online",
        "decision latency",
    ):
        assert topic in titles, topic
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))


def test_readyz_turns_503_when_the_node_loses_its_quorum(cluster: LocalCluster) -> None:
    url = cluster.client(0).url
    assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    cluster.kill(1)
    cluster.kill(2)

    def not_ready() -> bool:
        r = httpx.get(f"{url}/readyz", timeout=5)
        return r.status_code == 503 and "no_quorum" in r.json()["reasons"]

    wait_until(not_ready, 30, "hub-1's /readyz to say 503 without a quorum")
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    samples = scrape(cluster, 0)
    assert value(samples, "aiot_raft_has_quorum") == 0
