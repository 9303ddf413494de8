"""A full store on a real cluster: three `aiot hub run` processes with a 2 MiB
LMDB map, two MicroPython plugs sampling until the store is over its refuse
threshold. Ingest refuses with a reason and the plugs keep their readings on
flash; reads and commands go on; the store alert is up. The operator lowers
the raw retention and restarts the nodes one by one (none loops or halts on a
full store): retention frees space, ingest resumes by itself, and the plugs'
backlog drains. Nothing acknowledged is lost: every reading a plug took is
counted once in the rollups of every node, and the content hashes agree."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import converged, provision, running_cluster
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

EXTRA = """
[store]
map_size_mb = 2
alert_at = 0.10
refuse_at = 0.15

[retention]
raw_days = 30
period_s = 1
"""
READINGS = 6000  # per plug: together more than the store takes below refuse_at
PLUGS = ("plug-0", "plug-1")


def _store(cluster: LocalCluster, i: int) -> dict[str, Any]:
    st: dict[str, Any] = cluster.status(i)["store"]
    return st


def _rollup_count(cluster: LocalCluster, i: int, device_id: str) -> int:
    rows = cluster.client(i).get(f"/v1/devices/{device_id}/rollups", period="day")["rows"]
    return sum(int(r["count"]) for r in rows)


def _energy(cluster: LocalCluster, days: list[str]) -> dict[int, list[dict[str, Any]]]:
    """Each node's hourly energy of plug-0 on ``days``."""
    return {
        i: [
            h
            for day in days
            for h in cluster.client(i).get("/v1/devices/plug-0/energy", day=day)["hours"]
        ]
        for i in range(3)
    }


def _command_done(cluster: LocalCluster) -> None:
    c = cluster.any_client()
    cmd = c.post(
        "/v1/commands", {"device": "plug-0", "action": "relay.set", "params": {"on": False}}
    )
    cid = cmd["command"]["command_id"] if "command" in cmd else cmd["command_id"]
    wait_until(lambda: c.get(f"/v1/commands/{cid}")["state"] == "DONE", 60, "the command done")


def test_a_full_store_refuses_ingest_keeps_serving_and_drains_after_retention(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, extra=EXTRA) as cluster:
        plugs = [
            provision(cluster, tmp_path, d, stop_after=READINGS, exit_when_done=True) for d in PLUGS
        ]
        for p in plugs:
            p.start()
        try:
            # Full: every node refuses, with the reason, and alerts.
            wait_until(
                lambda: all(_store(cluster, i)["refusing"] for i in range(3)),
                120,
                "every node refusing ingest",
            )
            for i in range(3):
                st = _store(cluster, i)
                assert st["refusing"].startswith("store ") and "refuse_at 15%" in st["refusing"]
                assert st["alert"] and st["used_fraction"] >= 0.15
            # A plug's next batch after the refusal began is refused with the
            # reason (it may arrive a moment after the nodes switched).
            rejected: list[int] = []

            def _refused() -> bool:
                rejected[:] = [
                    cluster.status(i)["ingest"]["rejected"]["store_full"] for i in range(3)
                ]
                return sum(rejected) > 0

            wait_until(_refused, 60, "a batch refused with store_full")
            # The plugs keep what was not acknowledged: the watermark stands still.
            marks = {d: cluster.client(0).get(f"/v1/devices/{d}")["watermark"] for d in PLUGS}
            assert all(0 < w < READINGS for w in marks.values()), marks
            # Reads and commands go on.
            rows = cluster.client(1).get("/v1/devices/plug-1/readings", limit=10)["readings"]
            assert len(rows) == 10
            _command_done(cluster)
            assert {
                d: cluster.client(2).get(f"/v1/devices/{d}")["watermark"] for d in PLUGS
            } == marks

            # The operator keeps raw readings for 9 s only, and restarts the nodes.
            for i, path in enumerate(cluster.configs):
                path.write_text(path.read_text().replace("raw_days = 30", "raw_days = 0.0001"))
                cluster.restart(i, 90)
            stats = {p.config["device_id"]: p.wait(240) for p in plugs}
        finally:
            for p in plugs:
                p.stop()
        # Ingest resumed by itself and the backlog drained: all acknowledged.
        assert {d: s["watermark"] for d, s in stats.items()} == dict.fromkeys(PLUGS, READINGS)
        assert all(s["dropped"] == 0 for s in stats.values()), stats
        converged(cluster)
        for i in range(3):
            status = cluster.status(i)
            assert status["raft"]["halted"] == ""
            for d in PLUGS:
                dev = cluster.client(i).get(f"/v1/devices/{d}")
                assert (dev["watermark"], dev["lost_before"]) == (READINGS, 0)
                # Every reading, pruned or not, counted once in the rollups.
                assert _rollup_count(cluster, i, d) == READINGS
        leader = cluster.leader()
        assert _store(cluster, leader)["retention_removed"] > 0
        print(f"refused while full {rejected}, watermarks then {marks}, plugs {stats}")
        # The raw readings left are the newest: retention cuts by timestamp, so
        # the last one is kept, and what went is whole samples (a sample's three
        # readings share one timestamp). A device clock resynced by a commit-ack
        # can stamp a sample a little before the one it took earlier, so a
        # sample just past the cut may go while an earlier-numbered one stays.
        rows = cluster.client(0).get("/v1/devices/plug-0/readings", limit=100_000)["readings"]
        seqs = sorted(r["seq"] for r in rows)
        assert seqs and seqs[-1] == READINGS and len(seqs) < READINGS
        assert seqs[0] % 3 == 1 and len(seqs) % 3 == 0, seqs[:6]
        kept = set(seqs)
        for first in range(seqs[0], READINGS + 1, 3):  # sample by sample: all kept, or none
            assert len(kept & {first, first + 1, first + 2}) in (0, 3), first
        wait_until(lambda: not _store(cluster, leader)["refusing"], 30, "ingest taking batches")

        # The raw readings age out; the hourly energy of those days stays.
        days = sorted(
            {
                datetime.fromtimestamp(r["start_ms"] / 1000, UTC).date().isoformat()
                for r in cluster.client(0).get("/v1/devices/plug-0/rollups", period="day")["rows"]
            }
        )
        before = _energy(cluster, days)
        assert len(set(map(str, before.values()))) == 1  # every node the same
        assert sum(h["wh"] for h in before[0]) > 0
        wait_until(
            lambda: all(
                not cluster.client(i).get(f"/v1/devices/{d}/readings")["readings"]
                for i in range(3)
                for d in PLUGS
            ),
            60,
            "every raw reading aged out on every node",
        )
        converged(cluster)
        assert _energy(cluster, days) == before
