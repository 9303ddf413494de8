"""The daemon's edges: startup refusals, clean shutdown, the broker's fate,
the HTTP API's answers to bad requests, and the `aiot` commands against a
running cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.hubs import need_mosquitto, running_cluster
from tests.support import ROOT, wait_until
from tools.base.hubclient import HubClient, HubError
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def run_hub(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "hub", "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k != "AIOT_CLUSTER_SECRET"},
    )


def aiot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


CONFIG = """
[node]
id = "hub-1"
data_dir = "data"

[raft]
bind = "127.0.0.1:{raft}"
{secret}

[broker]
bind = "127.0.0.1:{broker}"

[http]
bind = "127.0.0.1:{http}"

[tls]
plain = true
"""


def write(tmp: Path, secret: str, http: int = 0) -> Path:
    from tools.base.ports import free_port

    path = tmp / "hub.toml"
    path.write_text(
        CONFIG.format(raft=free_port(), broker=free_port(), http=http or free_port(), secret=secret)
    )
    return path


def test_no_cluster_secret_refuses_to_start(tmp_path: Path) -> None:
    out = run_hub(write(tmp_path, ""))
    assert out.returncode == 2
    assert "raft.secret_file" in out.stderr and "cluster secret is mandatory" in out.stderr
    assert not (tmp_path / "data").exists()  # nothing created, nothing listening

    out = run_hub(write(tmp_path, 'secret_env = "AIOT_CLUSTER_SECRET"'))
    assert out.returncode == 2
    assert "AIOT_CLUSTER_SECRET is not set" in out.stderr

    (tmp_path / "short.secret").write_text("short\n")
    out = run_hub(write(tmp_path, 'secret_file = "short.secret"'))
    assert out.returncode == 2 and "at least 16 bytes" in out.stderr


def test_a_taken_http_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    import socket

    need_mosquitto()
    (tmp_path / "c.secret").write_text("x" * 32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = run_hub(write(tmp_path, 'secret_file = "c.secret"', http=port))
    assert out.returncode == 2
    assert "http.bind" in out.stderr and "cannot listen" in out.stderr


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_cleanly_and_kill_9_takes_the_broker_along(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1) as cluster:
        broker_pid = cluster.status(0)["broker"]["pid"]
        assert pid_alive(broker_pid)
        assert cluster.stop_node(0) == 0
        log = cluster.log_path(0).read_text()
        assert '"hub hub-1 stopped"' in log
        wait_until(lambda: not pid_alive(broker_pid), 10, "the broker to stop with the hub")

        cluster.start_node(0)
        cluster.wait_node(0, 60)
        broker_pid = cluster.status(0)["broker"]["pid"]
        cluster.kill(0, signal.SIGKILL)
        # PR_SET_PDEATHSIG: no orphan broker keeps devices attached to a dead hub.
        wait_until(lambda: not pid_alive(broker_pid), 10, "the broker to die with the hub")


def test_a_crashed_broker_is_restarted(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1) as cluster:
        pid = cluster.status(0)["broker"]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: (
                cluster.status(0)["broker"]["restarts"] >= 1
                and cluster.status(0)["broker"]["consumer_connected"]
            ),
            30,
            "the broker restarted and the hub consuming again",
        )
        assert cluster.status(0)["broker"]["pid"] != pid


# -- the API -------------------------------------------------------------------------------


def expect(status: int, fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(HubError) as err:
        fn(*args, **kw)  # type: ignore[operator]
    assert err.value.status == status, str(err.value)
    return str(err.value)


def test_api_refuses_bad_requests_with_4xx(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3) as cluster:
        leader = cluster.leader()
        follower = (leader + 1) % cluster.n
        c = cluster.client(follower)
        nobody = HubClient(c.url, "not-the-token")
        assert "invalid token" in expect(401, nobody.get, "/v1/devices")
        nobody.close()

        # A write sent to a follower reaches the leader.
        c.post("/v1/devices", {"device_id": "plug-1", "limit_w": 2000, "owner": "ann"})
        wait_until(
            lambda: any(
                d["device_id"] == "plug-1" for d in cluster.client(leader).get("/v1/devices")
            ),
            10,
            "the registration on the leader",
        )
        assert "already registered" in expect(409, c.post, "/v1/devices", {"device_id": "plug-1"})
        assert "bad device id" in expect(422, c.post, "/v1/devices", {"device_id": "no/slash"})
        assert "reserved" in expect(422, c.post, "/v1/devices", {"device_id": "monitor"})
        caps = {
            "device_id": "x-1",
            "capabilities": [{"action": "a", "params": [{"name": "p", "kind": "blob"}]}],
        }
        assert "param kind" in expect(422, c.post, "/v1/devices", caps)
        assert "no device" in expect(404, c.get, "/v1/devices/ghost")
        assert "no device" in expect(404, c.delete, "/v1/devices/ghost")

        cmd = {"device": "plug-1", "action": "relay.set", "params": {"on": True}}
        assert "no action" in expect(422, c.post, "/v1/commands", {**cmd, "action": "explode"})
        assert "required" in expect(422, c.post, "/v1/commands", {**cmd, "params": {}})
        assert "unknown_param" in expect(
            422, c.post, "/v1/commands", {**cmd, "params": {"on": True, "x": 1}}
        )
        assert "must be bool" in expect(422, c.post, "/v1/commands", {**cmd, "params": {"on": 1}})
        limit = {"device": "plug-1", "action": "limit.set", "params": {"watts": 99999}}
        assert "outside" in expect(422, c.post, "/v1/commands", limit)
        assert expect(422, c.post, "/v1/commands", {**cmd, "deadline_s": -1})
        assert "no command" in expect(404, c.get, "/v1/commands/nope")
        assert "to_ms" in expect(422, c.get, "/v1/devices/plug-1/readings", from_ms=5, to_ms=5)
        assert expect(422, c.get, "/v1/devices/plug-1/energy", day="yesterday")
        assert expect(422, c.post, "/v1/cluster/nodes", {"raft": "no-port"})
        assert all(cluster.alive(i) for i in range(cluster.n))


# -- the commands --------------------------------------------------------------------------

HEATER_POLICY = '[decisions.policies]\nheater = "Never switch a heater off."\n'


def check_policy_commands(cluster: LocalCluster, cfg: str, tmp_path: Path) -> None:
    """`aiot policy` through one node; every node's API answers the change."""
    words = tmp_path / "meter-policy.txt"
    words.write_bytes("Alert when a meter is over its limit.\r\nNever switch it off ✓\r\n".encode())
    r = aiot("policy", "set", "meter", "--file", str(words), "--config", cfg)
    assert (r.returncode, r.stdout) == (0, "meter: set\n"), r.stderr
    want = {"policy": "Alert when a meter is over its limit.\nNever switch it off ✓"}

    def meters() -> list[dict[str, object] | None]:
        return [cluster.client(i).get("/v1/policies")["classes"].get("meter") for i in range(3)]

    wait_until(
        lambda: all(m is not None and m["policy"] == want["policy"] for m in meters()),
        15,
        "the meter policy on every node",
    )
    assert {(m or {})["source"] for m in meters()} == {"api"}
    assert {(m or {})["by"] for m in meters()} == {"admin"}  # the config's cluster admin token
    r = aiot("policy", "list", "--config", cfg)
    assert "meter (set by admin at " in r.stdout and "  Never switch it off ✓\n" in r.stdout
    assert "heater (from the config):\n  Never switch a heater off.\n" in r.stdout
    r = aiot("policy", "set", "meter", "--text", "tab\there", "--config", cfg)
    assert r.returncode == 1
    assert r.stderr == "aiot: 400: the policy holds the control character U+0009 (only newlines)\n"
    r = aiot("policy", "set", "meter", "--config", cfg)
    assert r.returncode == 2 and "give the policy with --text or --file" in r.stderr
    api = cluster.client(0)
    for status, path, body, said in (
        (400, "meter", {"policy": "w" * 4001}, "the policy has 4001 characters, at most 4000"),
        (400, "meter", {"policy": " \n"}, "the policy is empty (DELETE removes"),
        (400, "meter", {"policy": "a\u0085b"}, "control character U+0085"),
        (400, "plug-1", {"policy": "x"}, "device class 'plug-1'"),
        (400, "a%20b", {"policy": "x"}, "device class 'a b'"),
        (422, "meter", {"words": "x"}, "policy"),
        (422, "meter", {"policy": 3}, "policy"),
    ):
        assert said in expect(status, api.request, "PUT", f"/v1/policies/{path}", json=body)
    assert "device class" in expect(400, api.delete, "/v1/policies/a-b")
    assert [(m or {})["policy"] for m in meters()] == [want["policy"]] * 3  # bad input: no trace
    r = aiot("policy", "unset", "meter", "--config", cfg)
    assert r.returncode == 0 and r.stdout.startswith("meter ([decisions] policy):\n"), r.stderr
    wait_until(lambda: meters() == [None] * 3, 15, "the meter policy gone from every node")
    heater = cluster.client(2).get("/v1/policies")["classes"]["heater"]
    assert heater == {"policy": "Never switch a heater off.", "source": "config"}


def test_aiot_commands_against_a_running_cluster(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3, extra=HEATER_POLICY) as cluster:
        cfg = str(cluster.configs[1])
        caps = tmp_path / "caps.json"
        caps.write_text(
            json.dumps([{"action": "relay.set", "params": [{"name": "on", "kind": "bool"}]}])
        )
        out_file = tmp_path / "meter-1.json"
        r = aiot(
            "device",
            "add",
            "meter-1",
            "--caps",
            str(caps),
            "--limit-w",
            "500",
            "--out",
            str(out_file),
            "--config",
            cfg,
        )
        assert r.returncode == 0, r.stderr
        secrets = json.loads(out_file.read_text())
        assert oct(out_file.stat().st_mode & 0o777) == "0o600"
        assert secrets["device_id"] == "meter-1" and len(bytes.fromhex(secrets["key"])) == 32
        assert len(secrets["hubs"]) == 3  # every node's broker, in the device's own order
        brokers = {p.broker for p in cluster.ports}
        assert {port for _, port in secrets["hubs"]} == brokers

        r = aiot("device", "list", "--json", "--config", cfg)
        rows = json.loads(r.stdout)
        assert [(x["device_id"], x["limit_w"]) for x in rows] == [("meter-1", 500.0)]
        r = aiot("device", "show", "meter-1", "--secrets", "--config", cfg)
        assert json.loads(r.stdout)["key"] == secrets["key"]

        r = aiot(
            "command",
            "send",
            "meter-1",
            "relay.set",
            "on=false",
            "--deadline-s",
            "1",
            "--config",
            cfg,
        )
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout)
        assert sent["state"] == "PENDING" and sent["params"] == {"on": False}
        # Nobody holds the device: the leader expires it after its deadline.
        wait_until(
            lambda: (
                json.loads(aiot("command", "show", sent["command_id"], "--json", "-c", cfg).stdout)[
                    "state"
                ]
                == "EXPIRED"
            ),
            30,
            "the command to expire",
        )
        r = aiot("command", "list", "meter-1", "--config", cfg)
        assert "EXPIRED" in r.stdout and "relay.set on=False" in r.stdout

        r = aiot("query", "meter-1", "--linearizable", "--config", cfg)
        assert r.returncode == 0 and r.stdout == ""
        r = aiot("query", "meter-1", "--hourly", "--day", "2026-01-01", "--config", cfg)
        assert r.returncode == 0, r.stderr

        r = aiot("cluster", "status", "--json", "--config", cfg)
        status = json.loads(r.stdout)
        assert [n["up"] for n in status["nodes"]] == [True, True, True]
        assert sum(n["leader"] for n in status["nodes"]) == 1
        r = aiot("cluster", "status", "--config", cfg)
        assert "leader" in r.stdout and "follower" in r.stdout

        check_policy_commands(cluster, cfg, tmp_path)

        r = aiot("device", "remove", "meter-1", "--config", cfg)
        assert r.returncode == 0
        r = aiot("device", "show", "meter-1", "--config", cfg)
        assert r.returncode == 1 and "404" in r.stderr

        r = aiot("device", "list")
        assert r.returncode == 2 and "which hub?" in r.stderr


def test_cluster_add_and_remove_node_live(tmp_path: Path) -> None:
    need_mosquitto()
    cluster = LocalCluster(tmp_path / "cluster", 3)
    try:
        # Start two; the third joins through `aiot cluster add-node`.
        for i in (0, 1):
            cluster.start_node(i)
        cfg = cluster.configs[0]
        cluster.wait_node(0, 60)
        # The first two were configured with three peers: a 2-of-3 quorum runs.
        third = f"127.0.0.1:{cluster.ports[2].raft}"
        r = aiot("cluster", "remove-node", third, "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        r = aiot("cluster", "add-node", third, "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        cluster.start_node(2)
        cluster.wait_ready(60)
        cluster.add_device("plug-m")
        wait_until(
            lambda: any(d["device_id"] == "plug-m" for d in cluster.client(2).get("/v1/devices")),
            30,
            "the new node to apply the registration",
        )
    finally:
        cluster.stop()
