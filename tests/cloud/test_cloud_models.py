"""Models down from the cloud: one push reaches every site, each site checks
the signature with its own keys, registers and activates through its own
Raft log, and reports what it runs up into the cloud. Real JetStream, real
hub clusters (three nodes and one), the real onnxruntime load."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.core import keys
from hub.decide.registry import SHIPPED, signed_manifest
from tests.cluster.hubs import running_cluster
from tests.console_support import aiot
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudLayout, CloudServers, Creds, init_cloud
from tools.cloud.models import push_model
from tools.cloud.sites import add_site
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cloud, pytest.mark.cluster]

ONNX = SHIPPED.parent / "anomaly.onnx"


def _key(folder: Path, name: str) -> tuple[Path, str]:
    private, public = keys.keygen()
    path = folder / f"{name}.key"
    path.write_text(private + "\n")
    return path, public


def _extra_cloud(layout: CloudLayout, site: str) -> str:
    """The [cloud] table of a site's hubs on the local cloud ``layout``."""
    login = layout.creds(f"site-{site}")
    return (
        "[cloud]\n"
        f'site = "{site}"\n'
        f"servers = {json.dumps(layout.urls())}\n"
        f'login = "{login}"\n'
        f'ca = "{layout.ca}"\n'
    )


def _extra(layout: CloudLayout, site: str, trusted: str) -> str:
    return _extra_cloud(layout, site) + f'[models]\ntrusted_keys = ["{trusted}"]\n'


def _until(what: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)


def _runs(cluster: LocalCluster, name: str, version: str) -> bool:
    for i in range(cluster.n):
        rows = cluster.client(i).get("/v1/models")
        if not any(
            r["name"] == name
            and r["activated"]
            and r["active_on"].get(cluster.node_id(i)) == version
            for r in rows
        ):
            return False
    return True


RULES = """
[[rule]]
id = "cloud-heater-guard"
description = "Alert when a plug draws over 3 kW for 10 s"
devices = ["*"]
sensor = "power_w"
above = 3000
for_s = 10
action = "alert"
"""


def _rule_sets(cluster: LocalCluster) -> list[list[str]]:
    return [cluster.status(i)["decisions"]["rule_sets"] for i in range(cluster.n)]


def rules_come_down(
    tmp: Path, root: Path, key: Path, rogue: Path, sites: tuple[LocalCluster, ...]
) -> None:
    """A rules file pushed once to the policies bucket runs on every node of
    every site; one signed by a key no site trusts is refused everywhere."""
    rules = tmp / "guard.toml"
    rules.write_text(RULES)
    base = ("cloud", "push-rules", str(rules), "--name", "rules-guard", "--dir", str(root))
    out = aiot(tmp, *base, "--version", "1", "--sign-key", str(key), "--activate")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["name"] == "rules-guard"
    _until(lambda: all(_rule_sets(c) == [["rules-guard@1"]] * c.n for c in sites))
    for c in sites:
        assert all(c.status(i)["decisions"]["rules_error"] is None for i in range(c.n))
    out = aiot(tmp, *base, "--version", "2", "--sign-key", str(rogue), "--activate")
    assert out.returncode == 0, out.stderr

    def refused() -> bool:
        downs = [c.status(c.leader())["cloud"]["down"]["refused"] for c in sites]
        return all("untrusted_key" in str(d.get("aiot-policies/rules-guard.2")) for d in downs)

    _until(refused)
    for c in sites:
        assert {
            v["version"] for v in c.client(0).get("/v1/models") if v["name"] == "rules-guard"
        } == {"1"}
        assert _rule_sets(c) == [["rules-guard@1"]] * c.n
    # A file that is no rules file is refused before it leaves.
    rules.write_text("[[rule]]\nid = 3\n")
    bad = aiot(tmp, *base, "--version", "3", "--sign-key", str(key))
    assert bad.returncode == 2 and "rules-guard@3" in bad.stderr and "Traceback" not in bad.stderr


def tampered_is_refused_everywhere(
    layout: CloudLayout, key: Path, sites: tuple[LocalCluster, ...]
) -> None:
    """A version whose bytes were changed after it was signed, for the whole
    fleet and to be activated: every site refuses it and keeps what it runs."""
    data = bytearray(ONNX.read_bytes())
    signed = signed_manifest("anomaly", "9", "onnx", bytes(data), {})
    signature, kid = keys.sign(signed, keys.private_key(key))
    data[200] ^= 0x01
    admin = Creds.load(layout.creds("admin"))
    push_model(admin, bytes(data), signed, signature, kid, "fleet", activate=True)

    def refused() -> bool:
        downs = [c.status(c.leader())["cloud"]["down"]["refused"] for c in sites]
        return all("sha256_mismatch" in str(d.get("anomaly@9")) for d in downs)

    _until(refused)
    for c in sites:
        assert "9" not in {v["version"] for v in c.client(0).get("/v1/models")}
        assert _runs(c, "anomaly", "7")


def test_one_push_reaches_every_site_and_each_checks_it(tmp_path: Path) -> None:
    layout = init_cloud(tmp_path / "cloud", nodes=1, port=0)
    trusted_key, trusted = _key(tmp_path, "fleet")
    rogue_key, _ = _key(tmp_path, "rogue")
    with CloudServers(layout) as servers:
        servers.start_all()
        ensure_buckets(Creds.load(layout.creds("admin")), 1)
        for site in ("north", "south"):
            add_site(layout, site)
        with (
            running_cluster(tmp_path / "north", 3, extra=_extra(layout, "north", trusted)) as north,
            running_cluster(tmp_path / "south", 1, extra=_extra(layout, "south", trusted)) as south,
        ):
            push = aiot(
                tmp_path, "cloud", "push-model", str(ONNX), "--name", "anomaly",
                "--version", "7", "--sign-key", str(trusted_key), "--activate",
                "--dir", str(layout.root),
            )  # fmt: skip
            assert push.returncode == 0, push.stderr
            assert json.loads(push.stdout)["target"] == "fleet"
            _until(lambda: _runs(north, "anomaly", "7") and _runs(south, "anomaly", "7"))

            # Signed by a key no site trusts, for north only: refused there,
            # never registered; south is not even asked.
            rogue = aiot(
                tmp_path, "cloud", "push-model", str(ONNX), "--name", "anomaly",
                "--version", "8", "--sign-key", str(rogue_key), "--activate",
                "--site", "north", "--dir", str(layout.root),
            )  # fmt: skip
            assert rogue.returncode == 0, rogue.stderr

            def reports() -> dict[str, Any] | None:
                out = aiot(tmp_path, "cloud", "sites", "--json", "--dir", str(layout.root))
                assert out.returncode == 0, out.stderr
                got = {r["site"]: r for r in json.loads(out.stdout)}
                done = "anomaly@8" in got.get("north", {}).get("refused", {})
                return got if done and "south" in got else None

            got = _until(reports)
            assert got["north"]["models"] == {"anomaly": "7"}
            assert got["south"]["models"] == {"anomaly": "7"}
            assert "untrusted_key" in got["north"]["refused"]["anomaly@8"]
            assert got["south"]["refused"] == {}
            assert got["north"]["received"] == ["anomaly@7"]
            rules_come_down(tmp_path, layout.root, trusted_key, rogue_key, (north, south))
            tampered_is_refused_everywhere(layout, trusted_key, (north, south))

            # Each node's own health, newest first per node, from the health
            # stream. A node reports its role as soon as it changes, so after
            # an election under this load the view shows one leader again
            # within a few seconds.
            def one_leader() -> dict[str, Any] | None:
                now = reports()
                roles = sorted(
                    h["role"] for h in (now or {}).get("north", {}).get("nodes", {}).values()
                )
                return now if roles == ["follower", "follower", "leader"] else None

            got = _until(one_leader, 30)
            north_nodes = got["north"]["nodes"]
            assert sorted(north_nodes) == ["hub-1", "hub-2", "hub-3"]
            assert all(h["kind"] == "health" and h["site"] == "north" for h in north_nodes.values())
            assert list(got["south"]["nodes"]) == ["hub-1"]
            text = aiot(tmp_path, "cloud", "sites", "--dir", str(layout.root))
            assert text.returncode == 0, text.stderr
            lines = {line.split()[0]: line for line in text.stdout.splitlines() if line[0] != " "}
            assert set(lines) == {"north", "south"}
            assert all(" export lag " in line and "anomaly@7" in line for line in lines.values())
            assert sum(1 for line in text.stdout.splitlines() if line.startswith("  hub-")) == 4
            for cluster in (north, south):
                versions = {r["version"] for r in cluster.client(0).get("/v1/models")}
                assert "8" not in versions
            assert _runs(north, "anomaly", "7")
