"""Cluster admin tokens against real hubs (`aiot hub run` processes, real Raft
and LMDB): expired, forged, too long-lived and old-style tokens are 401; a
revocation holds on every node once committed, across a restart and a
snapshot install, while fresh tokens keep working; only admins revoke, and
bad revocations change nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hub.core import auth
from hub.core.clock import wall_ms
from tests.cluster.hubs import converged, running_cluster
from tests.security.http_hubs import add_user, api_hub, bearer, crashes, detail, login
from tests.support import wait_until
from tools.base.paths import ROOT
from tools.lab.cluster import ClusterError, LocalCluster

INVALID = 'Bearer error="invalid_token"'


def secret_of(cluster: LocalCluster) -> str:
    return (cluster.root / "cluster.secret").read_text().strip()


def refused(url: str, token: str, path: str = "/v1/me") -> str:
    """The detail of the 401 ``token`` gets at ``url``."""
    r = httpx.get(f"{url}{path}", headers=bearer(token), timeout=15)
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert r.headers["www-authenticate"] == INVALID, r.headers
    said: str = detail(r)
    assert said.startswith("invalid token: "), said
    return said


def works(url: str, token: str) -> dict[str, str]:
    r = httpx.get(f"{url}/v1/me", headers=bearer(token), timeout=15)
    assert r.status_code == 200, r.text
    me: dict[str, str] = r.json()["token"]
    return me


@pytest.mark.cluster
def test_expired_forged_and_overlong_admin_tokens_are_refused(tmp_path: Path) -> None:
    with api_hub(tmp_path, admin_token_max_ttl_s=7200) as cluster:
        url, secret = cluster.client(0).url, secret_of(cluster)
        fresh, claim = auth.mint_admin_token(secret, 600)
        assert works(url, fresh)["id"] == claim.token_id
        # Expired a minute ago, though correctly signed.
        old, _ = auth.mint_admin_token(secret, 60, wall_ms() - 120_000)
        for path in ("/v1/me", "/v1/status", "/v1/firmware"):
            assert "expired" in refused(url, old, path)
        # Longer-lived than this node's http.admin_token_max_ttl_s.
        day, _ = auth.mint_admin_token(secret, 86_400)
        assert "lifetime" in refused(url, day)
        # Issued an hour ahead of the node's clock.
        ahead, _ = auth.mint_admin_token(secret, 600, wall_ms() + 3_600_000)
        assert "in the future" in refused(url, ahead)
        # Another cluster's, and the derived token of earlier releases.
        other, _ = auth.mint_admin_token("another cluster secret " * 2, 600)
        assert "not signed by this cluster" in refused(url, other)
        derived = auth._derive(secret.encode(), "aiot/admin-token/v1", 64)
        refused(url, derived)
        refused(url, derived, "/v1/firmware")
        # The fresh one still works everywhere, firmware uploads' listing included.
        r = httpx.get(f"{url}/v1/firmware", headers=bearer(fresh), timeout=15)
        assert r.status_code == 200, r.text
        assert crashes(cluster) == [], crashes(cluster)


@pytest.mark.cluster
def test_only_admins_revoke_and_bad_revocations_change_nothing(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        url, secret = cluster.client(0).url, secret_of(cluster)
        admin = auth.admin_token(secret)
        path = f"{url}/v1/tokens/revocations"
        cluster.add_device("plug-1")
        add_user(cluster, "olga", "operator", [])
        add_user(cluster, "vic", "viewer", ["plug-1"])
        add_user(cluster, "ada", "admin", [])
        victim, claim = auth.mint_admin_token(secret, 600)
        for name in ("olga", "vic"):
            r = httpx.post(path, json={"id": claim.token_id}, headers=bearer(login(url, name)))
            assert r.status_code == 403, r.text
            assert httpx.get(path, headers=bearer(login(url, name))).status_code == 403
        assert httpx.post(path, json={"id": claim.token_id}).status_code == 401
        before = httpx.get(path, headers=bearer(admin)).json()
        assert before == {"revoked": [], "before_ms": 0}
        hashed = cluster.client(0).get("/v1/status", hash="true")["content_hash"]
        for body in (
            {},
            {"id": "0123456789ABCDEF"},
            {"id": "x" * 100_000},
            {"id": claim.token_id, "extra": 1},
            {"before_ms": 0},
            {"before_ms": -5},
            {"before_ms": 2**64},
            {"before_ms": "now"},
            {"before_ms": 1e300},
            {"before_ms": wall_ms() + 86_400_000},  # ahead of the node's clock
        ):
            r = httpx.post(path, json=body, headers=bearer(admin), timeout=15)
            assert r.status_code in (413, 422), (body, r.status_code, r.text)
        assert httpx.get(path, headers=bearer(admin)).json() == before
        assert cluster.client(0).get("/v1/status", hash="true")["content_hash"] == hashed
        works(url, victim)
        # An admin user revokes: the token is refused from then on.
        r = httpx.post(path, json={"id": claim.token_id}, headers=bearer(login(url, "ada")))
        assert r.status_code == 200, r.text
        assert [x["id"] for x in r.json()["revoked"]] == [claim.token_id]
        assert "revoked" in refused(url, victim)
        works(url, admin)
        assert crashes(cluster) == [], crashes(cluster)


def aiot(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def revoke_after_snapshot(cluster: LocalCluster, revoke: str, keep: str) -> None:
    """With node 3 stopped: revoke ``revoke``, then compact the log past it
    (linearizable reads commit empty entries) so node 3 must install a
    snapshot to learn it."""
    url = cluster.client(0).url
    cluster.stop_node(2)
    wait_until(lambda: _leader(cluster) in (0, 1), 60, "a leader among nodes 1 and 2")
    r = httpx.post(
        f"{url}/v1/tokens/revocations",
        json={"id": auth.parse_admin_token(revoke)[0].token_id},
        headers=bearer(keep),
        timeout=15,
    )
    assert r.status_code == 200, r.text
    leader = cluster.leader()
    with httpx.Client(base_url=cluster.client(leader).url, headers=bearer(keep)) as c:
        for _ in range(250):
            assert c.get("/v1/devices/plug-1/readings?linearizable=true").status_code == 200
    wait_until(lambda: cluster.status(leader)["raft"]["snapshots_taken"] >= 1, 60, "a snapshot")


@pytest.mark.cluster
def test_a_revoked_token_is_refused_on_every_node_across_restarts_and_snapshots(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path, 3, raft={"snapshot_min_entries": 100}) as cluster:
        secret, urls = secret_of(cluster), [cluster.client(i).url for i in range(3)]
        cluster.add_device("plug-1")
        revoked, keep = auth.admin_token(secret), auth.admin_token(secret)
        for url in urls:
            works(url, revoked)
            works(url, keep)

        revoke_after_snapshot(cluster, revoked, keep)
        for url in urls[:2]:
            assert "revoked" in refused(url, revoked)
            works(url, keep)
        # Node 3 was down: it learns the revocation from a snapshot.
        cluster.start_node(2)
        cluster.wait_node(2, 90)
        converged(cluster, 90)
        assert cluster.status(2)["raft"]["snapshots_installed"] >= 1
        assert "revoked" in refused(urls[2], revoked)
        works(urls[2], keep)

        # Every token issued before now, by the command line: `keep` too, on
        # every node; a token minted afterwards works, and so does the
        # lab's own client (it mints a new one when refused).
        out = aiot(cluster.configs[1], "token", "revoke", "--all-before", "now")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("revoked every admin token issued before")
        fresh = aiot(cluster.configs[0], "token", "create", "--ttl", "10m", "--json")
        assert fresh.returncode == 0, fresh.stderr
        new = json.loads(fresh.stdout)["token"]
        for url in urls:
            wait_until(lambda url=url: _status(url, keep) == 401, 30, "the cut-off on every node")
            assert "cut-off" in refused(url, keep)
            works(url, new)
        assert cluster.client(0).get("/v1/devices")[0]["device_id"] == "plug-1"

        # A restarted node (journal replay over its LMDB) still refuses both.
        cluster.restart(0, 90)
        assert "revoked" in refused(urls[0], revoked)
        assert "cut-off" in refused(urls[0], keep)
        works(urls[0], new)
        listed = aiot(cluster.configs[0], "token", "revoked", "--json")
        assert listed.returncode == 0, listed.stderr
        doc = json.loads(listed.stdout)
        assert [x["id"] for x in doc["revoked"]] == [auth.parse_admin_token(revoked)[0].token_id]
        assert doc["before_ms"] > 0
        converged(cluster, 90)
        for i in range(3):
            assert crashes_on(cluster, i) == [], crashes_on(cluster, i)


def _leader(cluster: LocalCluster) -> int | None:
    try:
        return cluster.leader()
    except ClusterError:
        return None


def _status(url: str, token: str) -> int:
    return httpx.get(f"{url}/v1/me", headers=bearer(token), timeout=15).status_code


def crashes_on(cluster: LocalCluster, i: int) -> list[str]:
    text = cluster.log_path(i).read_text(errors="replace")
    return [ln for ln in text.splitlines() if "Traceback" in ln or "Exception in ASGI" in ln]
