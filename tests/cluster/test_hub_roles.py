"""The API's role matrix: every endpoint against every role, on a real node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.hubs import running_cluster

pytestmark = pytest.mark.cluster

PASSWORD = "correct horse battery"

# (method, path, body, the weakest role allowed: admin < operator < viewer)
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/status", None, "viewer"),
    ("GET", "/v1/cluster", None, "viewer"),
    ("GET", "/v1/me", None, "viewer"),
    ("GET", "/v1/devices", None, "viewer"),
    ("GET", "/v1/devices/plug-1", None, "viewer"),
    ("GET", "/v1/devices/plug-1/readings", None, "viewer"),
    ("GET", "/v1/devices/plug-1/energy?day=2026-11-22", None, "viewer"),
    ("GET", "/v1/commands?device=plug-1", None, "viewer"),
    ("GET", "/v1/decisions?device=plug-1", None, "viewer"),
    ("GET", "/v1/alerts", None, "viewer"),
    ("POST", "/v1/commands", {"device": "plug-1", "action": "reboot"}, "operator"),
    ("POST", "/v1/alerts/no-such-decision/ack", None, "operator"),
    ("GET", "/v1/policies", None, "operator"),
    ("PUT", "/v1/policies/plug", {"policy": "Switch plugs off over the limit."}, "operator"),
    ("DELETE", "/v1/policies/plug", None, "operator"),
    ("GET", "/v1/devices/plug-1/config", None, "admin"),
    ("POST", "/v1/devices", {"device_id": "plug-new"}, "admin"),
    ("DELETE", "/v1/devices/plug-3", None, "admin"),
    ("GET", "/v1/users", None, "admin"),
    ("PUT", "/v1/users/someone", {"role": "viewer", "password": PASSWORD}, "admin"),
    ("DELETE", "/v1/users/gone", None, "admin"),
    ("GET", "/v1/backup", None, "admin"),
    ("POST", "/v1/cluster/nodes", {"raft": "no-port"}, "admin"),
    ("DELETE", "/v1/cluster/nodes/127.0.0.1:1", None, "admin"),
]
RANK = {"admin": 1, "operator": 2, "viewer": 3}


def test_every_endpoint_against_every_role(tmp_path: Path) -> None:
    with (
        running_cluster(tmp_path, nodes=1, tls=True) as cluster,
        httpx.Client(verify=cluster.verify, timeout=15) as http,  # https: the CA pinned
    ):
        admin = cluster.client(0)
        for d in ("plug-1", "plug-2", "plug-3"):
            admin.post("/v1/devices", {"device_id": d})
        for name, role in (("ann", "admin"), ("ola", "operator"), ("vic", "viewer")):
            body = {"role": role, "password": PASSWORD, "devices": ["plug-1"]}
            admin.request("PUT", f"/v1/users/{name}", json=body)
        admin.request("PUT", "/v1/users/gone", json={"role": "viewer", "password": PASSWORD})

        url = admin.url
        tokens = {}
        for name in ("ann", "ola", "vic"):
            r = http.post(f"{url}/v1/login", json={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            tokens[name] = r.json()["token"]
        bad = http.post(f"{url}/v1/login", json={"username": "vic", "password": "wrong-one"})
        assert bad.status_code == 401

        def call(token: str | None, method: str, path: str, body: Any) -> httpx.Response:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            return http.request(method, url + path, json=body, headers=headers)

        matrix = []
        for method, path, body, weakest in ENDPOINTS:
            assert call(None, method, path, body).status_code == 401, path
            assert call("v1.vic.1.forged", method, path, body).status_code == 401, path
            for name, role in (("ann", "admin"), ("ola", "operator"), ("vic", "viewer")):
                r = call(tokens[name], method, path, body)
                allowed = RANK[role] <= RANK[weakest]
                matrix.append((method, path, role, r.status_code))
                if allowed:
                    assert r.status_code not in (401, 403), (method, path, role, r.text)
                    assert r.status_code < 500, (method, path, role, r.text)
                else:
                    assert r.status_code == 403, (method, path, role, r.status_code, r.text)
        assert len(matrix) == 3 * len(ENDPOINTS)

        # A viewer sees only what is assigned to them.
        vic = tokens["vic"]
        listed = call(vic, "GET", "/v1/devices", None).json()
        assert [d["device_id"] for d in listed] == ["plug-1"]
        for path in (
            "/v1/devices/plug-2",
            "/v1/devices/plug-2/readings",
            "/v1/devices/plug-2/energy?day=2026-11-22",
            "/v1/commands?device=plug-2",
        ):
            r = call(vic, "GET", path, None)  # as if it did not exist (docs/api.md)
            assert r.status_code == 404 and r.json()["detail"] == "no device 'plug-2'", path
        cmd = call(tokens["ola"], "POST", "/v1/commands", {"device": "plug-2", "action": "reboot"})
        assert cmd.status_code == 201
        r = call(vic, "GET", f"/v1/commands/{cmd.json()['command_id']}", None)
        assert r.status_code == 404

        # Removing a user, or changing the password, revokes their tokens.
        admin.request(
            "PUT", "/v1/users/ola", json={"role": "operator", "password": "a new secret!"}
        )
        assert call(tokens["ola"], "GET", "/v1/me", None).status_code == 401
        admin.delete("/v1/users/vic")
        assert call(vic, "GET", "/v1/me", None).status_code == 401
        # A role change takes effect at once.
        admin.request("PUT", "/v1/users/ann", json={"role": "viewer", "devices": []})
        assert call(tokens["ann"], "GET", "/v1/users", None).status_code == 403
