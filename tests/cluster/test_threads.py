"""Invitations and conversations on a real three-node cluster: a link works
once even when two nodes accept it at once; a viewer's question is answered
by the bot from the ledger, then goes to a person; the admins' inbox counts
it; the reply reaches its owner live on the stream and nobody else; the
thread survives the leader's death."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.hubs import converged, running_cluster
from tests.cluster.test_hub_stream import Listener
from tests.support import wait_until
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

PASSWORD = "correct horse battery"


class Api:
    """A user's session with one node."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=20)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        r = self.call(method, path, body)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
        return r.json()


def login(cluster: LocalCluster, i: int, name: str, password: str = PASSWORD) -> Api:
    r = httpx.post(
        f"{cluster.url(i)}/v1/login", json={"username": name, "password": password}, timeout=20
    )
    assert r.status_code == 200, r.text
    return Api(cluster.url(i), r.json()["token"])


def accept_racing(cluster: LocalCluster, token: str) -> list[tuple[int, str]]:
    """Node 1 and node 2 accept the same link at the same moment."""
    go, out = threading.Barrier(2), []

    def accept(i: int, password: str) -> None:
        go.wait()
        r = Api(cluster.url(i)).call("POST", f"/v1/invites/{token}/accept", {"password": password})
        out.append((r.status_code, password))

    runs = [threading.Thread(target=accept, args=(i, f"password of node {i}")) for i in (1, 2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(30)
    return out


def check_invitations(cluster: LocalCluster, root: Api) -> None:
    out = root.ok("POST", "/v1/invites", {"name": "nia", "role": "viewer", "devices": ["plug-1"]})
    token = out["token"]
    assert out["link"].endswith(f"/#/invite/{token}")
    assert Api(cluster.url(2)).ok("GET", f"/v1/invites/{token}")["name"] == "nia"
    results = accept_racing(cluster, token)
    assert sorted(code for code, _ in results) == [200, 410], results
    winner = next(pw for code, pw in results if code == 200)
    loser = next(pw for code, pw in results if code == 410)
    third = Api(cluster.url(0)).call("POST", f"/v1/invites/{token}/accept", {"password": loser})
    assert third.status_code == 410 and "used" in third.json()["detail"]
    assert Api(cluster.url(1)).call("GET", f"/v1/invites/{token}").status_code == 410
    login(cluster, 0, "nia", winner)
    bad = httpx.post(
        f"{cluster.url(0)}/v1/login", json={"username": "nia", "password": loser}, timeout=20
    )
    assert bad.status_code == 401
    assert Api(cluster.url(0)).call("GET", "/v1/invites/" + "x" * 43).status_code == 404
    assert root.call("POST", "/v1/invites", {"name": "nia"}).status_code == 409
    listed = root.ok("GET", "/v1/invites")
    assert [(i["name"], i["state"]) for i in listed] == [("nia", "used")]
    assert "token" not in listed[0]  # links are never listed


def aiot(cluster: LocalCluster, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", *args, "--config", str(cluster.configs[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def check_the_cli(cluster: LocalCluster, vic: Api) -> None:
    """`aiot inbox` lists vic's thread; `aiot reply` answers and resolves it;
    `aiot user invite` prints a link that works."""
    listed = aiot(cluster, "inbox")
    assert listed.splitlines()[0] == "0 unread" and listed.splitlines()[1].startswith("vic ")
    aiot(cluster, "reply", "vic", "One more thing.", "--resolve")
    mine = vic.ok("GET", "/v1/threads/me")
    assert mine["messages"][-1]["text"] == "One more thing." and mine["state"] == "bot"
    assert "0 unread" not in aiot(cluster, "inbox")  # nobody waits now
    link = aiot(cluster, "user", "invite", "zed", "--role", "operator", "--ttl", "2h").strip()
    token = link.rsplit("/", 1)[1]
    shown = Api(cluster.url(1)).ok("GET", f"/v1/invites/{token}")
    assert (shown["name"], shown["role"]) == ("zed", "operator")


def test_invitations_and_a_conversation_across_a_failover(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=3) as cluster:
        admin = cluster.client(0)
        cluster.add_device("plug-1")
        for name, role, devices in (("root", "admin", []), ("vic", "viewer", ["plug-1"])):
            body = {"role": role, "password": PASSWORD, "devices": devices}
            admin.request("PUT", f"/v1/users/{name}", json=body)
        admin.request("PUT", "/v1/users/val", json={"role": "viewer", "password": PASSWORD})
        root = login(cluster, 0, "root")
        check_invitations(cluster, root)

        vic, val = login(cluster, 1, "vic"), login(cluster, 2, "val")
        vic_hears, val_hears = (
            Listener(vic.url, vic.token or ""),
            Listener(val.url, val.token or ""),
        )
        with vic_hears, val_hears:
            question = {"text": "what is the status of plug-1?"}
            asked = vic.ok("POST", "/v1/threads/me/messages", question)
            assert asked["answer"]["method"] == "rules" and asked["state"] == "bot"
            user_msg, bot_msg = asked["messages"]
            assert user_msg["author"] == "user" and bot_msg["author"] == "bot"
            assert "plug-1" in bot_msg["text"] and not bot_msg["escalate"]
            to_person = {"text": "a person, please", "person": True}
            person = vic.ok("POST", "/v1/threads/me/messages", to_person)
            assert person["state"] == "person" and person["answer"] is None

            inbox = root.ok("GET", "/v1/inbox")
            assert inbox["unread"] == 2 and [t["user"] for t in inbox["threads"]] == ["vic"]
            assert val.call("GET", "/v1/inbox").status_code == 403
            assert val.call("GET", "/v1/threads/vic").status_code == 404
            assert val.call("POST", "/v1/threads/vic/messages", {"text": "hi"}).status_code == 403
            assert val.ok("GET", "/v1/threads/me")["messages"] == []

            root.ok("POST", "/v1/threads/vic/messages", {"text": "Hello vic, I am on it."})
            wait_until(
                lambda: any(
                    (e.get("message") or {}).get("text") == "Hello vic, I am on it."
                    for e in vic_hears.events
                ),
                15,
                "the reply on vic's stream",
            )
            assert not [e for e in val_hears.events if e["event"] == "thread"]
        assert root.ok("GET", "/v1/inbox")["unread"] == 0
        mine = vic.ok("GET", "/v1/threads/me")
        assert mine["unread"] == 1 and len(mine["messages"]) == 5
        assert vic.ok("POST", "/v1/threads/me/read", {})["unread"] == 0
        check_the_cli(cluster, vic)
        mine = vic.ok("GET", "/v1/threads/me")

        leader = cluster.leader()
        cluster.kill(leader)
        alive = next(i for i in range(3) if i != leader)
        vic2 = login(cluster, alive, "vic")  # the store answers on a survivor
        wait_until(lambda: vic2.call("GET", "/v1/threads/me").status_code == 200, 30, "a survivor")
        after = vic2.ok("GET", "/v1/threads/me")
        assert [m["text"] for m in after["messages"]] == [m["text"] for m in mine["messages"]]
        assert after["state"] == "bot" and after["unread"] == 1  # the CLI's reply
        # The new leader commits: the thread goes on.
        wait_until(
            lambda: (
                vic2.call("POST", "/v1/threads/me/messages", {"text": "thanks"}).status_code == 200
            ),
            60,
            "a new leader",
        )
        converged(cluster)
