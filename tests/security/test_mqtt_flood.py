"""One device flooding its own topics (10,000 status and command-result
frames, signed with its real key, published with its real login) on a real
three-node cluster with Mosquitto, through `aiot bench flood`
(tools/bench/flood.py): the flooder is a process of its own, as a real
device is, and eight well-behaved devices keep publishing batches and
waiting for their CommitAcks while it floods.

What this checks is behaviour: the device's token buckets drop the excess
before its HMAC is checked (hub/link/limits.py), every batch of the others
still gets its CommitAck (a batch with none in 30 s fails the run), and the
node stays ready. How much the flood slows the others' commit-acks is a
figure of the benchmark (docs/BENCHMARKS.md), never asserted here."""

from __future__ import annotations

import pytest

from tests.integration.test_bench_hub import aiot_bench

pytestmark = pytest.mark.cluster

FLOOD = 10_000
GOOD = 8


def test_a_flooding_device_is_limited_and_the_others_keep_their_commit_acks() -> None:
    doc = aiot_bench("flood", *("--devices", str(GOOD), "--frames", str(FLOOD), "--rounds", "10"))
    print({k: v for k, v in doc.items() if k != "machine"})
    assert doc["bench"] == "flood" and doc["devices"] == GOOD and doc["flood_frames"] == FLOOD
    # The buckets dropped nearly all of it, counted on the channels it used.
    dropped = doc["dropped_by_buckets"]
    assert set(dropped) == {"status", "ack"}
    assert sum(dropped.values()) >= FLOOD * 0.9, dropped
    assert doc["dropped_share"] == round(sum(dropped.values()) / FLOOD, 4)
    # Every well-behaved device's batch was acknowledged, before and during it.
    assert doc["baseline_samples"] == GOOD * 10
    assert doc["samples_during"] >= GOOD, doc["samples_during"]
    assert doc["ready_after"] is True
    # The figures are there; their size is the benchmark's business.
    assert 0 < doc["baseline_commit_ack_ms_p50"] <= doc["baseline_commit_ack_ms_p99"]
    assert 0 < doc["commit_ack_ms_p50_during"] <= doc["commit_ack_ms_p99_during"]
    assert list(doc["bars"]) == ["p99_during_under_2x_baseline"]
    assert isinstance(doc["bars"]["p99_during_under_2x_baseline"], bool)
