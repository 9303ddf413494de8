"""Backup from a running 3-node cluster, restore into a fresh one (new ports,
new data directories), and compare what each holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.ops.backup import SNAPSHOT_FILE, read_snapshot
from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import converged, running_cluster
from tests.cluster.test_hub_e2e import batch
from tests.cluster.test_hub_ops import publish
from tests.support import ROOT, wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def aiot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


def fill(cluster: LocalCluster) -> dict[str, Any]:
    """Devices with readings, a user, commands; what the source holds."""
    c = cluster.client(0)
    for i, d in enumerate(("plug-1", "plug-2")):
        dev = cluster.add_device(d, limit_w=1500, owner="ann")
        key = bytes.fromhex(dev["key"])
        up = topics.topic(d, "up")
        frames = [(up, batch(d, 1 + 20 * k, 20, key)) for k in range(3)]
        acks = publish(cluster.ports[i].broker, d, dev["password"], frames, cluster.mqtt_tls())
        msgs = [wire.decode_frame(a, key) for a in acks]
        assert max(x.watermark for x in msgs if isinstance(x, m.CommitAck)) == 60
    c.request(
        "PUT",
        "/v1/users/vic",
        json={"role": "viewer", "password": "a long enough pw", "devices": ["plug-1"]},
    )
    cluster.add_device("plug-idle")
    cmd = c.post(
        "/v1/commands",
        {"device": "plug-idle", "action": "relay.set", "params": {"on": False}, "deadline_s": 3600},
    )
    readings = c.get("/v1/devices/plug-1/readings", limit=100_000)["readings"]
    return {
        "readings": readings,
        "command": cmd,
        "hash": converged(cluster),
        "term": cluster.status(0)["raft"]["term"],
    }


def test_backup_then_restore_into_a_fresh_cluster(tmp_path: Path) -> None:
    backup_dir = tmp_path / "backup"
    with running_cluster(tmp_path / "source", tls=True) as src:  # aiot backup pins the CA
        held = fill(src)
        out = aiot("backup", str(backup_dir), "--config", str(src.configs[1]), "--json")
        assert out.returncode == 0, out.stderr
        manifest = json.loads(out.stdout.strip().splitlines()[-1])
        # Nothing was written meanwhile: the backup is the cluster's content.
        assert manifest["content_hash"] == held["hash"] == converged(src)
        assert manifest["source"]["node"] == "hub-2"
        assert manifest["source"]["term"] >= held["term"]
    assert sorted(manifest["files"]) == ["registry.json", SNAPSHOT_FILE]
    assert manifest["rows"]["readings"] == 120
    registry = json.loads((backup_dir / "registry.json").read_text())
    devices = {d["device_id"]: d for d in registry["devices"]}
    assert set(devices) == {"plug-1", "plug-2", "plug-idle"}
    assert devices["plug-1"]["readings"] == 60 and devices["plug-1"]["limit_w"] == 1500
    assert "key" not in devices["plug-1"]
    assert [u["name"] for u in registry["users"]] == ["vic"]
    assert "password_hash" not in registry["users"][0]
    assert {n["node_id"] for n in registry["nodes"]} == {"hub-1", "hub-2", "hub-3"}
    assert oct(backup_dir.stat().st_mode & 0o777) == "0o700"

    new = LocalCluster(tmp_path / "restored" / "cluster", 3)  # new ports, new secret
    try:
        args = [a for p in new.configs for a in ("--config", str(p))]
        out = aiot("restore", str(backup_dir), *args, "--json")
        assert out.returncode == 0, out.stderr
        restored = json.loads(out.stdout.strip().splitlines()[-1])
        assert [r["content_hash"] for r in restored["restored"]] == [held["hash"]] * 3
        assert restored["term"] == manifest["source"]["term"] + 1000
        # A restore never writes over a node that has data.
        again = aiot("restore", str(backup_dir), "--config", str(new.configs[0]))
        assert again.returncode == 2 and "not empty" in again.stderr

        new.start(90)
        # The restored cluster holds the source's content. Its nodes have new
        # addresses: the node table changes, and the leader sends each device
        # its new broker order (hubs.set, hub/link/membership.py), so the
        # ledger grows by those commands and no others (checked below).
        converged(new)
        c = new.client(2)
        assert c.get("/v1/devices/plug-1/readings", limit=100_000)["readings"] == held["readings"]
        assert c.get(f"/v1/commands/{held['command']['command_id']}")["state"] == "PENDING"
        login = httpx.post(
            f"{c.url}/v1/login", json={"username": "vic", "password": "a long enough pw"}
        )
        assert login.status_code == 200, login.text
        # Admin only: a viewer's token and no token are refused.
        viewer = {"Authorization": f"Bearer {login.json()['token']}"}
        assert httpx.get(f"{c.url}/v1/backup", headers=viewer).status_code == 403
        assert httpx.get(f"{c.url}/v1/backup").status_code == 401

        # Every table equals the source's but the node table, which now holds
        # the new cluster's addresses: each node announces itself once it sees
        # a leader, so wait until node 2 has applied all three announcements.
        want = {(new.node_id(i), f"127.0.0.1:{new.ports[i].raft}") for i in range(3)}

        def announced() -> bool:
            nodes = c.get("/v1/cluster")["nodes"]
            return {(n["node_id"], n["raft"]) for n in nodes} == want

        wait_until(announced, 60, "every restored node's new address in the node table")
        fresh = tmp_path / "fresh.snap"
        with httpx.stream(
            "GET", f"{c.url}/v1/backup", headers={"Authorization": f"Bearer {new_token(new)}"}
        ) as r:
            assert r.status_code == 200
            fresh.write_bytes(r.read())
        with open(fresh, "rb") as f:
            now = read_snapshot(f)
        differ = {t for t, h in now.table_hashes.items() if manifest["table_hashes"].get(t) != h}
        assert differ <= {"nodes", "ledger", "ledger_ids"} and "nodes" in differ, differ
        for device in ("plug-1", "plug-2", "plug-idle"):
            added = [
                x["action"]
                for x in c.get("/v1/commands", device=device)
                if x["command_id"] != held["command"]["command_id"]
            ]
            assert set(added) <= {"hubs.set"}, (device, added)
        assert {(n["node_id"], n["raft"]) for n in now.registry["nodes"]} == want
        assert now.applied_index > manifest["source"]["applied_index"]

        # New commands are fenced above every term the source used.
        # To a device no hub holds: no delivery marks it SENT between the hash reads below.
        cmd = c.post(
            "/v1/commands", {"device": "plug-idle", "action": "reboot", "deadline_s": 3600}
        )
        assert cmd["term"] > manifest["source"]["term"] + 1000

        # A node that loses its data catches up from the restored snapshot
        # (the new log has no entry below the restore point).
        before = converged(new)
        new.stop_node(2)
        shutil.rmtree(new.data_dir(2))
        new.start_node(2)
        new.wait_node(2, 90)
        assert converged(new) == before
        assert new.status(2)["raft"]["snapshots_installed"] >= 1
    except BaseException:
        for i in range(new.n):
            print(f"--- restored {new.node_id(i)} ---\n{new.tail(i, 40)}")
        raise
    finally:
        new.stop()


def new_token(cluster: LocalCluster) -> str:
    from hub.core import auth

    secret = (cluster.root / "cluster.secret").read_text().strip()
    return auth.admin_token(secret)
