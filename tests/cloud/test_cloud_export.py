"""A site exports to the cloud exactly once: real hubs (three nodes) with a
[cloud] table, real JetStream, batches over real Mosquitto; the leader is
killed between batches. Every committed reading is in the site's stream
once, read back by device and seq; the export cursor is replicated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol import messages as m
from protocol import topics, wire
from tests.cloud.test_cloud_models import _extra_cloud, _until
from tests.cluster.hubs import converged, running_cluster
from tests.cluster.test_hub_e2e import batch
from tests.cluster.test_hub_ops import publish, scrape
from tests.console_support import aiot
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudServers, Creds, init_cloud
from tools.cloud.sites import add_site
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cloud, pytest.mark.cluster]

DEVICES = ("plug-1", "plug-2", "ann.plug")


def _send(cluster: LocalCluster, node: int, dev: dict[str, Any], device: str, first: int) -> int:
    """Three batches of 20 readings from ``first``; the watermark acked."""
    key = bytes.fromhex(dev["key"])
    up = topics.topic(device, "up")
    frames = [(up, batch(device, first + 20 * k, 20, key)) for k in range(3)]
    acks = publish(cluster.ports[node].broker, device, dev["password"], frames)
    msgs = [wire.decode_frame(a, key) for a in acks]
    return max(x.watermark for x in msgs if isinstance(x, m.CommitAck))


def _query(root: Path) -> dict[str, Any]:
    out = aiot(root.parent, "cloud", "query", "--site", "north", "--dir", str(root), "--json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _events(root: Path, kind: str) -> list[dict[str, Any]]:
    out = aiot(
        root.parent, "cloud", "events", "--site", "north", "--kind", kind, "--dir", str(root)
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_committed_reading_reaches_the_cloud_once_across_a_leader_kill(
    tmp_path: Path,
) -> None:
    layout = init_cloud(tmp_path / "cloud", nodes=1, port=0)
    with CloudServers(layout) as servers:
        servers.start_all()
        ensure_buckets(Creds.load(layout.creds("admin")), 1)
        add_site(layout, "north")
        with running_cluster(tmp_path / "north", 3, extra=_extra_cloud(layout, "north")) as c:
            devs = {d: c.add_device(d) for d in DEVICES}
            acked = {d: _send(c, i, devs[d], d, 1) for i, d in enumerate(DEVICES)}
            assert set(acked.values()) == {60}

            def all_there(want: int) -> dict[str, Any] | None:
                doc = _query(layout.root)
                got = {d: x["readings"] for d, x in doc["devices"].items()}
                return doc if got == dict.fromkeys(DEVICES, want) else None

            _until(lambda: all_there(60))
            # A command put into the ledger goes out too, on the commands subject.
            cmd = c.client(0).post(
                "/v1/commands",
                {"device": "ann.plug", "action": "relay.set", "params": {"on": False}},
            )
            leader = c.leader()
            c.kill(leader)
            alive = next(i for i in range(3) if i != leader)
            for d in DEVICES:
                assert _send(c, alive, devs[d], d, 61) == 120
            doc = _until(lambda: all_there(120))
            for d in DEVICES:
                x = doc["devices"][d]
                assert (x["first_seq"], x["last_seq"], x["gaps"], x["duplicates"]) == (
                    1, 120, [], []
                )  # fmt: skip
            assert doc["bad_messages"] == []
            events = _events(layout.root, "commands")
            puts = [x for x in events if x["op"] == "put"]
            assert [x["command_id"] for x in puts] == [cmd["command_id"]]  # once
            assert puts[0]["device"] == "ann.plug" and puts[0]["params"] == {"on": False}
            c.restart(leader)
            converged(c)
            new = c.leader()
            status = c.status(new)["cloud"]["export"]
            assert status["error"] is None and status["exporting"] is True
            _until(lambda: c.status(new)["cloud"]["export"]["first_unexported_index"] == 0)
            cursors = {c.status(i)["cloud"]["export"]["exported_index"] for i in (new,)}
            assert cursors and min(cursors) > 0
            metrics = scrape(c, new)  # the same figures in /metrics
            assert metrics["aiot_cloud_export_lag_seconds"][()] == 0.0
            assert metrics["aiot_cloud_export_first_unexported_index"][()] == 0.0
            assert metrics["aiot_cloud_exporting"][()] == 1.0
            assert metrics["aiot_cloud_export_alert"][()] == 0.0
            assert metrics["aiot_cloud_export_messages_total"][()] > 0
