"""The model registry on a real cluster: signed versions pushed to one hub,
fetched by the others, activated everywhere; tampered or unsigned models
refused while the old version keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hub.decide.registry import SHIPPED
from tests.cluster.hubs import running_cluster
from tests.cluster.test_hub_daemon import aiot
from tests.support import wait_until
from tools.base.hubclient import HubError
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster


def models_on(cluster: LocalCluster, i: int) -> dict[str, Any]:
    rows = cluster.client(i).get("/v1/models")
    node = cluster.node_id(i)
    return {str(m["version"]): (m["active_on"].get(node), m["error_on"].get(node)) for m in rows}


def active_everywhere(cluster: LocalCluster, version: str) -> bool:
    for i in range(cluster.n):
        st = cluster.client(i).get("/v1/status")["models"].get("anomaly", {})
        if st.get("version") != version:
            return False
    return True


def test_push_activate_and_refuse_tampered_models(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    r = aiot("models", "keygen", "--out", str(key))
    assert r.returncode == 0, r.stderr
    public = r.stdout.strip()
    extra = f'[models]\ntrusted_keys = ["{public}"]\n'
    with running_cluster(tmp_path, extra=extra, tls=True) as cluster:
        cfg = str(cluster.configs[0])
        # Before any activation every node serves the model shipped in models/anomaly.
        for i in range(cluster.n):
            shipped = cluster.client(i).get("/v1/status")["models"]["anomaly"]
            assert str(shipped["version"]).startswith("shipped-")

        model = tmp_path / "anomaly.onnx"
        shutil.copy(SHIPPED.parent / "anomaly.onnx", model)
        shutil.copy(SHIPPED, tmp_path / "anomaly.json")
        r = aiot(
            "models",
            "push",
            str(model),
            "--name",
            "anomaly",
            "--version",
            "2",
            "--sign-key",
            str(key),
            "--config",
            cfg,
        )
        assert r.returncode == 0, r.stderr
        r = aiot("models", "activate", "anomaly@2", "--config", cfg)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: active_everywhere(cluster, "2"), 60, "anomaly@2 on every node")
        r = aiot("models", "list", "--config", cfg)
        assert "anomaly@2" in r.stdout and "hub-1, hub-2, hub-3" in r.stdout, r.stdout

        # Tampered bytes: a signed version whose model bytes do not match the
        # model's own manifest. Activation fails on every node; 2 keeps serving.
        bad = tmp_path / "bad" / "anomaly.onnx"
        bad.parent.mkdir()
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
        shutil.copy(SHIPPED, bad.with_suffix(".json"))
        r = aiot(
            "models",
            "push",
            str(bad),
            "--name",
            "anomaly",
            "--version",
            "3",
            "--sign-key",
            str(key),
            "--config",
            cfg,
        )
        assert r.returncode == 0, r.stderr
        assert aiot("models", "activate", "anomaly@3", "--config", cfg).returncode == 0
        wait_until(
            lambda: all(models_on(cluster, i).get("3", (None, None))[1] for i in range(cluster.n)),
            60,
            "every node to report why anomaly@3 is refused",
        )
        assert active_everywhere(cluster, "2")
        for i in range(cluster.n):
            assert "sha256_mismatch" in models_on(cluster, i)["3"][1]

        # Rollback is activating an earlier version; here 2 again after 3 failed.
        assert aiot("models", "activate", "anomaly@2", "--config", cfg).returncode == 0

        # Unsigned or signed by another key: refused at the door.
        other = tmp_path / "other.key"
        assert aiot("models", "keygen", "--out", str(other)).returncode == 0
        r = aiot(
            "models",
            "push",
            str(model),
            "--name",
            "anomaly",
            "--version",
            "4",
            "--sign-key",
            str(other),
            "--config",
            cfg,
        )
        assert r.returncode == 1 and "untrusted_key" in r.stderr
        c = cluster.client(0)
        manifest = json.dumps(
            {
                "name": "anomaly",
                "version": "5",
                "kind": "onnx",
                "sha256": "00" * 32,
                "size": 1,
                "manifest": {},
            }
        )
        with pytest.raises(HubError) as err:
            c.post("/v1/models", {"manifest": manifest, "signature": "AAAA", "key_id": "x"})
        assert err.value.status == 422
        with pytest.raises(HubError) as err:
            c.request("PUT", "/v1/models/blobs/" + "ab" * 32, content=b"not those bytes")
        assert err.value.status == 422 and "sha256_mismatch" in str(err.value)
        versions = {m["version"] for m in c.get("/v1/models")}
        assert "4" not in versions and "5" not in versions
        rules_by_hand(tmp_path, cluster, key, cfg)


def rules_by_hand(tmp_path: Path, cluster: LocalCluster, key: Path, cfg: str) -> None:
    """A rules file is a version of kind rules: pushed and activated like a
    model, it runs on every node beside the config's rules; a file that is
    no rules file, or one under a model's name, is refused at registration."""
    rules = tmp_path / "night.toml"
    push = ("models", "push", str(rules), "--sign-key", str(key), "--config", cfg)
    rules.write_text(
        '[[rule]]\nid = "night-guard"\ndevices = ["*"]\nsensor = "power_w"\n'
        'above = 4000\naction = "alert"\n'
    )
    r = aiot(*push, "--name", "rules-night", "--version", "1")
    assert r.returncode == 0, r.stderr
    assert aiot("models", "activate", "rules-night@1", "--config", cfg).returncode == 0
    wait_until(
        lambda: all(
            cluster.status(i)["decisions"]["rule_sets"] == ["rules-night@1"]
            for i in range(cluster.n)
        ),
        30,
        "rules-night@1 in use on every node",
    )
    r = aiot(*push, "--name", "anomaly", "--version", "6")
    assert r.returncode == 1 and "bad_name" in r.stderr, r.stderr
    rules.write_text('[[rule]]\nid = "x"\nsensor = "power_w"\n')  # no devices, no threshold
    r = aiot(*push, "--name", "rules-night", "--version", "2")
    assert r.returncode == 1 and "load_failed" in r.stderr, r.stderr
    versions = {(m["name"], m["version"]) for m in cluster.client(0).get("/v1/models")}
    assert ("rules-night", "1") in versions and ("rules-night", "2") not in versions
    assert ("anomaly", "6") not in versions
