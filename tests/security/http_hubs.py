"""Helpers for the attacks on the HTTP API: one real `aiot hub run` node (with
its Mosquitto) whose ``[http]`` limits a test may set, users, logins, the
node's memory and its log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.hubs import need_mosquitto
from tools.lab.cluster import LocalCluster

PASSWORD = "correct horse battery"
# What a server error leaves in a hub's log.
CRASH_MARKS = ("Traceback", "Exception in ASGI application", '"level": "error"')


@contextmanager
def api_hub(root: Path, **http: int) -> Iterator[LocalCluster]:
    """One hub node; ``http``: keys of its ``[http]`` table (hub/core/config.py)."""
    need_mosquitto()
    cluster = LocalCluster(root / "cluster", 1)
    keys = "".join(f"{k} = {v}\n" for k, v in http.items())
    for path in cluster.configs:
        text = path.read_text()
        assert text.count("[http]\n") == 1, text
        path.write_text(text.replace("[http]\n", "[http]\n" + keys))
    try:
        cluster.start(90)
        yield cluster
    except BaseException:
        print(f"--- hub-1 ---\n{cluster.tail(0, 60)}")
        raise
    finally:
        cluster.stop()


def admin_token(cluster: LocalCluster) -> str:
    token: str = cluster.client(0)._http.headers["Authorization"].split(" ", 1)[1]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def add_user(cluster: LocalCluster, name: str, role: str, devices: list[str]) -> None:
    body = {"role": role, "password": PASSWORD, "devices": devices}
    cluster.client(0).request("PUT", f"/v1/users/{name}", json=body)


def login(url: str, name: str, password: str = PASSWORD) -> str:
    r = httpx.post(f"{url}/v1/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return token


def rss_kb(pid: int) -> int:
    """The process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def hub_pid(cluster: LocalCluster) -> int:
    proc = cluster.procs[0]
    assert proc is not None and proc.poll() is None
    return proc.pid


def crashes(cluster: LocalCluster) -> list[str]:
    """Lines of the node's log that a server error leaves."""
    text = cluster.log_path(0).read_text(errors="replace")
    return [ln for ln in text.splitlines() if any(mark in ln for mark in CRASH_MARKS)]


def detail(r: httpx.Response) -> Any:
    body: dict[str, Any] = r.json()
    return body["detail"]
