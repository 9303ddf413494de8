"""`aiot bench cloud --json` end to end with tiny parameters: a real JetStream
server, three real hub processes (each with its own Mosquitto) exporting to
it, the server stopped and started again under load, a second cluster with
no [cloud] table. Checks that the figures are present and consistent, never
timings or bars."""

from __future__ import annotations

import pytest

from tests.integration.test_bench_hub import aiot_bench

pytestmark = [pytest.mark.cluster, pytest.mark.bench, pytest.mark.cloud]

HEADLINE = (
    "ingest_readings_per_s",
    "ingest_readings_per_s_at_half",
    "export_readings_per_s",
    "export_ratio",
    "cloud_latency_ms_p50",
    "cloud_latency_ms_p99",
    "catchup_readings_per_s",
    "outage_ingest_readings_per_s",
    "cloud_bytes_per_reading",
    "cloud_nats_bytes_per_reading",
    "cloud_tcp_bytes_per_reading",
    "baseline_ingest_readings_per_s",
    "export_cost_ratio",
)


def test_bench_cloud_json_is_complete_and_consistent() -> None:
    doc = aiot_bench(
        "cloud",
        *("--seconds", "3", "--outage-s", "3", "--warmup", "1", "--devices", "6"),
        *("--cloud-nodes", "1"),
    )
    assert doc["bench"] == "cloud"
    for key in HEADLINE:
        assert isinstance(doc[key], (int, float)) and doc[key] > 0, key
    assert (doc["cloud_nodes"], doc["devices"], doc["nodes"], doc["outage_s"]) == (1, 6, 3, 3)
    assert doc["machine"]["cores"] > 0 and "nats-server" in doc["machine"]["nats_server"]
    assert set(doc["bars"]) == {
        "export_ratio_at_least_0.9",
        "catchup_at_least_2x_outage_ingest",
    }
    assert doc["bars"]["export_ratio_at_least_0.9"] is doc["export_ratio_ok"]
    assert doc["bars"]["catchup_at_least_2x_outage_ingest"] is doc["catchup_ok"]
    assert "JetStream store time" in doc["note"]

    # Phase 1 and the baseline: closed loop, whole batches over the window.
    t, base = doc["throughput"], doc["baseline"]
    for p in (t, base):
        assert p["readings"] > 0 and p["readings"] % 32 == 0 and p["devices_out_of_frames"] == 0
    assert doc["ingest_readings_per_s"] == pytest.approx(t["readings"] / t["seconds"], rel=1e-3)
    assert doc["export_cost_ratio"] == pytest.approx(
        doc["ingest_readings_per_s"] / doc["baseline_ingest_readings_per_s"], rel=1e-3
    )

    # Phase 2: the ratio is the quotient of its parts, each counted in the window.
    e = doc["export_phase"]
    assert e["offered_readings_per_s"] == pytest.approx(doc["ingest_readings_per_s"] / 2, rel=1e-3)
    assert doc["ingest_readings_per_s_at_half"] == pytest.approx(
        e["readings_committed"] / e["seconds"], rel=1e-3
    )
    assert doc["export_readings_per_s"] == pytest.approx(
        e["readings_stored"] / e["seconds"], rel=1e-3
    )
    assert doc["export_ratio"] == pytest.approx(
        doc["export_readings_per_s"] / doc["ingest_readings_per_s_at_half"], rel=1e-3
    )
    # Every reading acked during the phase reached the cloud, once.
    assert e["readings_acked"] > 0
    assert e["readings_acked_in_cloud"] == e["readings_acked"]
    assert e["readings_acked_missing"] == 0 and e["readings_acked_duplicated"] == 0
    # Latency: one sample per batch of the window, none waiting out the outage.
    assert e["latency_samples"] > 0 and e["latency_stored_after_outage_start"] == 0
    assert doc["cloud_latency_ms_p50"] <= doc["cloud_latency_ms_p99"]
    # Bytes: payload < what the connection published (headers) < TCP (TLS, protocol).
    link = e["link"]
    assert doc["cloud_bytes_per_reading"] == pytest.approx(
        e["payload_bytes"] / e["readings_stored"], rel=1e-3
    )
    assert doc["cloud_bytes_per_reading"] < doc["cloud_nats_bytes_per_reading"]
    assert doc["cloud_nats_bytes_per_reading"] < doc["cloud_tcp_bytes_per_reading"]
    assert link["nats_in_msgs"] > 0 and link["tcp_bytes_sent"] > link["nats_in_bytes"]

    # Phase 3: the backlog of the outage drained after the cloud's return.
    c = doc["catchup"]
    assert c["outage_s"] >= 3 and c["backlog_readings"] > 0 and c["backlog_messages"] > 0
    assert c["stored_before_return"] <= c["backlog_messages"]
    assert c["catchup_s"] > 0 and c["first_message_after_return_s"] <= c["catchup_s"]
    assert doc["catchup_readings_per_s"] == pytest.approx(
        c["backlog_readings"] / c["catchup_s"], rel=1e-2
    )
    assert c["catchup_ratio"] == pytest.approx(
        doc["catchup_readings_per_s"] / doc["outage_ingest_readings_per_s"], rel=1e-2
    )

    # The whole run: every acknowledged reading is in the stream exactly once.
    w = doc["completeness"]
    assert w["readings_acked"] >= t["readings"] + e["readings_acked"] + c["backlog_readings"]
    assert w["readings_acked_in_cloud"] == w["readings_acked"]
    assert w["readings_acked_missing"] == 0 and w["readings_duplicated_in_cloud"] == 0
    assert w["readings_in_cloud"] >= w["readings_acked"] and w["bad_messages"] == []
    assert w["devices_out_of_frames"] == 0 and w["unacked_batches_at_stop"] == 0
    h = doc["hub_export"]
    assert h["refusals"] == 0 and h["messages"] >= w["messages_in_cloud"]
