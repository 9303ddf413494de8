"""The hub cluster end to end: three `aiot hub run` processes, each with its
own Mosquitto, and the device firmware on MicroPython.

Every check reads what a device saw acknowledged (its own counters) and what
each node stored (its HTTP API over its own LMDB)."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

import aiomqtt
import pytest

from hub.core import auth
from hub.core import config as hub_config
from hub.state.raft import DUMP_FILE, _read_dump_header, raft_timing
from hub.state.snapshot import IMAGE_MAGIC
from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import (
    assert_exactly_once,
    converged,
    provision,
    running_cluster,
    watermark,
)
from tests.device import Device
from tests.support import wait_until
from tools.base.hubclient import HubError
from tools.lab.cluster import ClusterError, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]


def acked_total(cluster: LocalCluster) -> int:
    return sum(cluster.status(i)["ingest"]["acked"] for i in range(cluster.n) if cluster.alive(i))


# The acceptance runs scale these up, for example (docs/DEVELOPMENT.md):
#   AIOT_E2E_DEVICES=10 AIOT_E2E_SECONDS=300 pytest tests/cluster/test_hub_e2e.py -k stored_once
#   AIOT_E2E_SECONDS=120 AIOT_E2E_KILL_EVERY_S=20 pytest tests/cluster/... -k leader_kills
DEVICES = int(os.environ.get("AIOT_E2E_DEVICES", "4"))
SECONDS = float(os.environ.get("AIOT_E2E_SECONDS", "12"))
KILL_EVERY_S = float(os.environ.get("AIOT_E2E_KILL_EVERY_S", "5"))
# A scaled-up run outlasts the suite's 300 s per-test timeout: give the two
# scalable tests their run time on top of it.
SCALED = pytest.mark.timeout(300 + 2 * SECONDS)


def run_devices(devices: list[Device], seconds: float, during: object = None) -> dict[str, int]:
    """Run the devices for ``seconds`` (calling ``during(t)`` about every
    second), interrupt them, and return what each saw acknowledged."""
    for d in devices:
        d.start()
    stats: dict[str, int] = {}
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            if during is not None:
                during(time.monotonic() - t0)  # type: ignore[operator]
    finally:
        for d in devices:
            stats[d.config["device_id"]] = d.interrupt()["watermark"]
    return stats


@SCALED
def test_devices_readings_are_stored_once_on_every_node(tmp_path: Path) -> None:
    with running_cluster(tmp_path, tls=True) as cluster:  # MQTT over TLS, the CA pinned
        devices = [provision(cluster, tmp_path, f"plug-{k}") for k in range(DEVICES)]
        acked = run_devices(devices, SECONDS)
        print(f"acknowledged readings: {sum(acked.values())} {acked}")
        assert all(w > 0 for w in acked.values()), acked
        assert_exactly_once(cluster, acked)
        rows = cluster.client(1).get("/v1/devices")
        assert {r["device_id"] for r in rows if r["node"]} == set(acked)


def test_the_embedded_broker_carries_the_same_exactly_once_ingest(tmp_path: Path) -> None:
    """broker mode "embedded": amqtt inside each daemon instead of Mosquitto."""
    with running_cluster(tmp_path, broker="embedded", tls=True) as cluster:
        assert cluster.status(0)["broker"]["mode"] == "embedded"
        devices = [provision(cluster, tmp_path, f"plug-{k}") for k in range(2)]
        acked = run_devices(devices, SECONDS)
        assert all(w > 0 for w in acked.values()), acked
        assert_exactly_once(cluster, acked)


@SCALED
def test_leader_kills_under_load_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        devices = [provision(cluster, tmp_path, f"plug-{k}") for k in range(3)]
        kills: list[float] = []
        recoveries: list[float] = []

        def kill_leader(t: float) -> None:
            if t < KILL_EVERY_S * (len(kills) + 1) or t > SECONDS - 3:
                return
            victim = cluster.leader()
            t_kill = time.monotonic()
            cluster.kill(victim)
            kills.append(t)

            # A new leader, then ingest resumes: the survivors' ack counters move.
            def new_leader() -> bool:
                try:
                    return cluster.leader() != victim
                except ClusterError:
                    return False

            wait_until(new_leader, 30, "a new leader")
            before = {
                i: cluster.status(i)["ingest"]["acked"]
                for i in range(cluster.n)
                if cluster.alive(i)
            }
            wait_until(
                lambda: any(cluster.status(i)["ingest"]["acked"] > n for i, n in before.items()),
                60,
                "ingest to resume after the leader kill",
            )
            recoveries.append(round(time.monotonic() - t_kill, 2))
            cluster.start_node(victim)
            cluster.wait_node(victim, 60)

        acked = run_devices(devices, SECONDS, kill_leader)
        print(f"kills at {kills}, ingest resumed after {recoveries} s; acked {acked}")
        assert kills and len(recoveries) == len(kills)
        assert all(w > 0 for w in acked.values()), acked
        assert_exactly_once(cluster, acked)


def test_follower_catches_up_through_a_snapshot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, raft={"snapshot_min_entries": 100}) as cluster:
        leader = cluster.leader()
        follower = next(i for i in range(cluster.n) if i != leader)
        cluster.kill(follower)
        dev = provision(cluster, tmp_path, "plug-s", stop_after=3000, exit_when_done=True)
        dev.start()
        try:
            stats = dev.wait(180)
        finally:
            dev.stop()
        survivors = [i for i in range(cluster.n) if cluster.alive(i)]
        wait_until(
            lambda: all(cluster.status(i)["raft"]["snapshots_taken"] > 0 for i in survivors),
            60,
            "log compaction on the nodes that stayed up",
        )
        cluster.start_node(follower)
        cluster.wait_node(follower, 60)
        converged(cluster)
        assert cluster.status(follower)["raft"]["snapshots_installed"] >= 1
        assert_exactly_once(cluster, {"plug-s": stats["watermark"]})
        # What the follower installed is a Raft dump holding LMDB's compacted
        # copy of the leader's store (hub/state/store.py Snapshot.write_image).
        with open(cluster.data_dir(follower) / DUMP_FILE, "rb") as f:
            _read_dump_header(f)
            assert f.read(len(IMAGE_MAGIC)) == IMAGE_MAGIC


def test_full_restart_keeps_every_acknowledged_reading(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        devices = [
            provision(cluster, tmp_path, f"plug-{k}", stop_after=2000, exit_when_done=True)
            for k in range(2)
        ]
        for d in devices:
            d.start()
        try:
            stats = {d.config["device_id"]: d.wait(180) for d in devices}
        finally:
            for d in devices:
                d.stop()
        acked = {dev: s["watermark"] for dev, s in stats.items()}
        before = converged(cluster)
        for i in range(cluster.n):
            cluster.kill(i)
        for i in range(cluster.n):
            cluster.start_node(i)
        cluster.wait_ready(90)
        assert converged(cluster) == before
        assert_exactly_once(cluster, acked)


# -- bad input ----------------------------------------------------------------------------

BASE_TS = 1_763_700_000_000


def batch(device_id: str, first: int, n: int, key: bytes) -> bytes:
    readings = tuple(m.Reading(2, i * 10, float(i)) for i in range(n))
    msg = m.TelemetryBatch(device_id, 1, first, BASE_TS + first * 10, readings, 0)
    return wire.seal(wire.encode(msg), key)


async def publish_as(
    port: int,
    user: str,
    password: str,
    frames: list[tuple[str, bytes]],
    tls: ssl.SSLContext | None = None,
) -> list[bytes]:
    """Publish each frame, then collect what arrives on the user's own down
    topic (over TLS with ``tls``, LocalCluster.mqtt_tls)."""
    got: list[bytes] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        username=user,
        password=password,
        identifier=f"t-{user}",
        tls_context=tls,
    ) as c:
        if not user.startswith(auth.HUB_USER):
            await c.subscribe(topics.topic(user, "down"), qos=1)
        for topic, payload in frames:
            await c.publish(topic, payload, qos=1)
        try:
            async with asyncio.timeout(3):
                async for msg in c.messages:
                    assert isinstance(msg.payload, bytes)
                    got.append(msg.payload)
        except TimeoutError:
            pass
    return got


def test_bad_input_is_counted_and_changes_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        a = cluster.add_device("plug-a")
        b = cluster.add_device("plug-b")
        ka, kb = bytes.fromhex(a["key"]), bytes.fromhex(b["key"])
        port = cluster.ports[0].broker
        up_a, up_b = topics.topic("plug-a", "up"), topics.topic("plug-b", "up")

        acks = asyncio.run(
            publish_as(port, "plug-a", a["password"], [(up_a, batch("plug-a", 1, 10, ka))])
        )
        assert [wire.decode_frame(x, ka).watermark for x in acks] == [10]  # type: ignore[union-attr]
        wait_until(lambda: watermark(cluster, 2, "plug-a") == 10, 30, "replication")
        hash_before = converged(cluster)
        counts_before = cluster.status(0)["ingest"]["rejected"]

        bad = [
            (up_a, b"\x00garbage"),  # malformed: shorter than an envelope and a trailer
            (up_a, b"\x5a" * 200),  # bad_hmac: long enough, but no valid trailer
            (up_a, wire.seal(b"\x01\x02\x03 not flatbuffers", ka)),  # malformed
            (up_a, batch("plug-a", 11, 5, kb)),  # bad_hmac: another key
            (up_a, batch("plug-b", 1, 5, ka)),  # topic_mismatch
            (up_b, batch("plug-b", 1, 5, kb)),  # another device's topic: the ACL drops it
            (up_a, batch("plug-a", 1, 10, ka)),  # replayed: re-acks 10
            (up_a, batch("plug-a", 50, 5, ka)),  # gap: re-acks 10
            # oversized: over max_frame_bytes, under the broker's max_packet_size
            # (a larger packet loses its connection: tests/security/test_mqtt_limits.py)
            (up_a, wire.seal(b"\x00" * 16_800, ka)),
        ]
        acks = asyncio.run(publish_as(port, "plug-a", a["password"], bad))
        assert sorted(wire.decode_frame(x, ka).watermark for x in acks) == [10, 10]  # type: ignore[union-attr]
        hub_user = auth.hub_user("hub-1")
        hub_pw = auth.hub_password(
            (tmp_path / "cluster" / "cluster.secret").read_text().strip(), "hub-1"
        )
        ghost = batch("ghost", 1, 5, bytes(32))
        asyncio.run(publish_as(port, hub_user, hub_pw, [(topics.topic("ghost", "up"), ghost)]))

        expected = {
            "bad_hmac": 2,
            "malformed": 2,
            "topic_mismatch": 1,
            "replayed": 1,
            "gap": 1,
            "oversized": 1,
            "unknown_device": 1,
        }

        def counted() -> bool:
            now = cluster.status(0)["ingest"]["rejected"]
            return all(now[k] - counts_before[k] == v for k, v in expected.items())

        wait_until(counted, 30, f"reject counters to rise by {expected}")
        after = cluster.status(0)["ingest"]["rejected"]
        assert {k: after[k] - counts_before[k] for k in after if after[k] != counts_before[k]} == (
            expected
        )
        assert converged(cluster) == hash_before
        assert watermark(cluster, 0, "plug-b") == 0
        assert all(cluster.alive(i) for i in range(cluster.n))


def test_a_node_with_the_wrong_secret_cannot_join(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        odd = 2
        cluster.stop_node(odd)
        wrong = tmp_path / "cluster" / "wrong.secret"
        wrong.write_text("another-secret-entirely-0123456789\n")
        cfg = cluster.configs[odd]
        cfg.write_text(cfg.read_text().replace('"cluster.secret"', '"wrong.secret"'))
        cluster.start_node(odd)
        wait_until(lambda: cluster.health(odd) is not None, 60, "the node to serve HTTP")
        # No event says "it tried and was refused": watch it, without a gap,
        # for three rounds of its reconnects and election timeouts (its own
        # timing, from its config), while the other two commit entries it
        # would be sent if it were one of them.
        timing = raft_timing(hub_config.load(cfg).raft)
        window = 3 * (timing.connection_retry + timing.election_max)
        end = time.monotonic() + window
        added = 0
        while time.monotonic() < end:
            health = cluster.health(odd)
            assert health is not None and not health["ready"], health
            assert health["leader"] is None, health
            if added < 3:
                added += 1
                cluster.add_device(f"plug-w{added}")
            time.sleep(0.05)  # between polls
        assert added == 3
        # The other two still commit.
        cluster.add_device("plug-w")
        assert watermark(cluster, 0, "plug-w") == 0
        assert {d["device_id"] for d in cluster.client(0).get("/v1/devices")} >= {
            "plug-w1",
            "plug-w2",
            "plug-w3",
        }


# -- commands -----------------------------------------------------------------------------


def holder(cluster: LocalCluster, device_id: str) -> int | None:
    node = cluster.any_client().get(f"/v1/devices/{device_id}")["presence"]
    if node is None or node["state"] != "ONLINE":
        return None
    return int(node["node"].rsplit("-", 1)[1]) - 1


def send(cluster: LocalCluster, via: int, device_id: str, on: bool) -> str:
    """Send with the client's own command id, retrying while the cluster has
    no leader (a 503): the same id is one command however often it is sent."""
    import uuid

    body = {
        "device": device_id,
        "action": "relay.set",
        "params": {"on": on},
        "command_id": "t-" + uuid.uuid4().hex[:12],
    }
    out: dict[str, object] = {}

    def sent() -> bool:
        try:
            out.update(cluster.client(via).post("/v1/commands", body))
        except HubError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    wait_until(sent, 30, "the command accepted")
    assert out["seq"] >= 1  # type: ignore[operator]
    return str(out["command_id"])


def wait_done(cluster: LocalCluster, command_id: str, timeout: float = 60.0) -> dict[str, object]:
    out: dict[str, object] = {}

    def done() -> bool:
        try:
            rec = cluster.any_client().get(f"/v1/commands/{command_id}")
        except HubError as exc:  # a node that has not applied it yet
            if exc.status == 404:
                return False
            raise
        out.update(rec)
        return rec["state"] not in ("PENDING", "SENT")

    wait_until(done, timeout, f"a final state for command {command_id}")
    return out


def test_commands_execute_once_across_leader_kill_and_hub_move(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        dev = provision(cluster, tmp_path, "plug-c")
        dev.start()
        try:
            wait_until(lambda: holder(cluster, "plug-c") is not None, 60, "the device online")
            # 1. Plain delivery, sent through a node that does not hold the device.
            h = holder(cluster, "plug-c")
            assert h is not None
            via = (h + 1) % cluster.n
            rec = wait_done(cluster, send(cluster, via, "plug-c", on=False))
            assert rec["state"] == "DONE"
            states = [x["state"] for x in rec["history"]]  # type: ignore[attr-defined]
            assert states[0] == "PENDING" and states[-1] == "DONE"

            # 2. Kill the leader right after the send.
            leader = cluster.leader()
            via = next(i for i in range(cluster.n) if i != leader)
            cid = send(cluster, via, "plug-c", on=True)
            cluster.kill(leader)
            rec = wait_done(cluster, cid, 90)
            assert rec["state"] == "DONE"
            cluster.start_node(leader)
            cluster.wait_node(leader, 60)

            # 3. The device moves to another hub; a pending command follows it.
            wait_until(lambda: holder(cluster, "plug-c") is not None, 60, "the device online")
            h = holder(cluster, "plug-c")
            assert h is not None
            cluster.pause(h)  # a live broker in front of a dead hub: no acks
            others = [i for i in range(cluster.n) if i != h]
            try:
                # Pending while its holder is frozen; the device's next hub delivers it.
                pending = send(cluster, others[0], "plug-c", on=True)
                wait_until(
                    lambda: (
                        cluster.client(others[0]).get("/v1/devices/plug-c")["presence"]["node"]
                        != cluster.node_id(h)
                    ),
                    90,
                    "the device to fail over to another hub",
                )
                rec = wait_done(cluster, pending, 90)
                assert rec["state"] == "DONE"
                assert rec["history"][-1]["node"] != cluster.node_id(h)  # type: ignore[index]
            finally:
                cluster.resume(h)
        finally:
            stats = dev.interrupt()
        # Three commands, each executed exactly once on the device.
        assert stats["commands"]["executed"] == 3, stats["commands"]
        # Every node's ledger says so (a node just resumed catches up first).
        wait_until(
            lambda: all(
                [r["state"] for r in cluster.client(i).get("/v1/commands", device="plug-c")]
                == ["DONE", "DONE", "DONE"]
                for i in range(cluster.n)
            ),
            30,
            "three DONE commands in every node's ledger",
        )
