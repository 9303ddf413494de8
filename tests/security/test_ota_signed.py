"""Firmware updates take only signed releases, and no downgrade unless asked
(hub/decide/registry.py "firmware releases", hub/http/routes/commands.py).

Against a real hub node (its Mosquitto, its Raft), from outside, with
bundles built by `aiot firmware build`: an ota.update of a bundle that is
not a registered release, a release signed by a key the hub does not trust
or tampered with after signing, a release registered through the model
path, signature params forged by the caller, a release for another
platform, a downgrade below what the device reports: each is a 4xx with its
reason, and the Raft commit index does not move. What the hub lets through
carries the signed release, which the device verifies again
(tests/micropython/test_ed25519_micropython.py runs that side under the
real MicroPython interpreter)."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edge import ed25519 as edge_ed25519
from hub.core import keys
from hub.decide.registry import release_manifest
from protocol import messages as m
from protocol import topics, wire
from tests.cluster.hubs import running_cluster
from tests.firmware_support import source_tree
from tests.security.http_hubs import admin_token, bearer
from tests.security.mqtt_attack import can_login, client
from tests.security.test_mqtt_stale import quiet
from tests.support import wait_until
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build
from tools.firmware.ota import release, upload
from tools.lab.cluster import LocalCluster

pytestmark = pytest.mark.cluster

DEV = "plug-f"


def b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def firmware_table(trusted: Ed25519PrivateKey) -> str:
    # The firmware key is a model key as well, so that the model path is
    # refused for what a release is, not for its key.
    return (
        f'[firmware]\ntrusted_keys = ["{b64(trusted)}"]\n'
        f'[models]\ntrusted_keys = ["{b64(trusted)}"]\n'
    )


def bundles(tmp: Path) -> dict[str, Path]:
    """Real builds: 0.2.0 and 0.3.0 for the unix board, 0.4.0 for the ESP32."""
    out = {}
    for name, board, version in (
        ("v2", "unix", "0.2.0"),
        ("v3", "unix", "0.3.0"),
        ("esp32", "esp32", "0.4.0"),
    ):
        out[name] = tmp / name
        build(BOARDS[board], None, out[name], root=source_tree(tmp / f"src-{name}", version))
    return out


def sha_of(bundle: Path) -> str:
    sha: str = json.loads((bundle / "bundle.json").read_text())["bundle_sha256"]
    return sha


def signed_release(bundle: Path, key: Ed25519PrivateKey) -> dict[str, str]:
    """The body of POST /v1/firmware/releases for ``bundle`` signed by ``key``."""
    signed = release_manifest((bundle / "ota" / "manifest.json").read_bytes())
    signature, kid = keys.sign(signed, key)
    body = {"manifest": signed.decode(), "key_id": kid}
    return {**body, "signature": base64.b64encode(signature).decode()}


class Api:
    """Raw requests with the admin token: the status and the body, whatever they are."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.url = cluster.client(0).url
        self.headers = bearer(admin_token(cluster))

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        r = httpx.post(self.url + path, json=body, headers=self.headers, timeout=30)
        return r.status_code, r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers=self.headers, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def ota(self, sha: str, **params: Any) -> tuple[int, Any]:
        url = f"{self.url}/v1/firmware/{sha}/"
        body = {"device": DEV, "action": "ota.update", "params": {"url": url, "sha256": sha}}
        body["params"].update(params)
        return self.post("/v1/commands", body)


def report_firmware(cluster: LocalCluster, dev: dict[str, Any], firmware: str) -> None:
    """The device's signed status, naming the firmware it runs, on the node's broker."""
    key, pw, port = bytes.fromhex(dev["key"]), dev["password"], cluster.ports[0].broker
    wait_until(lambda: can_login(port, DEV, pw), 30, "the broker to know the device")
    msg = m.DeviceStatus(DEV, m.LinkState.ONLINE, firmware, 3, 60)

    async def send() -> None:
        async with client(port, DEV, pw, DEV) as c:
            await c.publish(topics.topic(DEV, "status"), wire.seal(wire.encode(msg), key), qos=1)

    asyncio.run(send())

    def seen() -> bool:
        last = cluster.client(0).get(f"/v1/devices/{DEV}")["last_status"]
        return last is not None and last["payload"]["firmware"] == firmware

    wait_until(seen, 30, "the hub to have the device's status")


def test_only_a_registered_release_signed_by_a_trusted_key_goes_out(tmp_path: Path) -> None:
    trusted, rogue = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    built = bundles(tmp_path)
    with running_cluster(tmp_path, nodes=1, extra=firmware_table(trusted)) as cluster:
        cluster.add_device(DEV)  # the plug's capabilities: ota.update with a signed release
        api = Api(cluster)
        hub = cluster.client(0)
        for bundle in built.values():
            upload(hub, bundle)
        v3 = sha_of(built["v3"])
        index = quiet(cluster)

        # A bundle on the hub that is no release, and one that is nowhere.
        code, body = api.ota(v3)
        assert code == 422 and "unknown_release" in body["detail"], body
        code, body = api.ota("f" * 64)
        assert code == 422 and "unknown_release" in body["detail"], body

        # Releases the hub does not register.
        by_rogue = signed_release(built["v3"], rogue)
        code, body = api.post("/v1/firmware/releases", by_rogue)
        assert code == 422 and "untrusted_key" in body["detail"], body
        good = signed_release(built["v3"], trusted)
        doc = json.loads(good["manifest"])
        tampered = {**good, "manifest": good["manifest"].replace('"0.3.0"', '"9.3.0"')}
        code, body = api.post("/v1/firmware/releases", tampered)
        assert code == 422 and "bad_signature" in body["detail"], body
        # Signed by the trusted key, but for another bundle than it names.
        other = keys.canonical({**doc, "sha256": sha_of(built["v2"])})
        sig, _ = keys.sign(other, trusted)
        mixed = {**good, "manifest": other.decode(), "signature": base64.b64encode(sig).decode()}
        code, body = api.post("/v1/firmware/releases", mixed)
        assert code == 422 and "bundle_mismatch" in body["detail"], body
        # The model registry does not take a release, even signed by a model key.
        code, body = api.post("/v1/models", good)
        assert code == 422 and "POST /v1/firmware/releases" in body["detail"], body

        # Params only the registry may fill in, forged by the caller.
        code, body = api.ota(v3, release=good["manifest"], signature="00" * 64)
        assert code == 422 and "comes from the release registry" in body["detail"], body

        assert api.get("/v1/firmware/releases") == []
        assert api.get(f"/v1/commands?device={DEV}") == []
        assert quiet(cluster) == index  # nothing was proposed

        # The genuine release: registered once, then the update goes out.
        rel = release(hub, built["v3"], trusted)
        assert (rel["name"], rel["version"], rel["registered"]) == ("firmware-unix", "0.3.0", True)
        assert release(hub, built["v3"], trusted)["registered"] is False
        code, rec = api.ota(v3)
        assert code == 201, rec
        params = rec["params"]
        assert params["allow_downgrade"] is False and params["sha256"] == v3
        signed = params["release"].encode()
        assert json.loads(signed)["sha256"] == v3
        signature = bytes.fromhex(params["signature"])
        trusted.public_key().verify(signature, signed)  # raises if not
        raw = trusted.public_key().public_bytes_raw()
        assert edge_ed25519.verify(raw, signed, signature)  # as the device checks it

        # A device built for this hub pins the key the hub trusts.
        app = typer.Typer()
        cli_firmware.register(app)
        args = ["firmware", "build", "--board", "unix", "--device", DEV]
        out = tmp_path / "device"
        res = CliRunner().invoke(app, [*args, "-c", str(cluster.configs[0]), "-o", str(out)])
        assert res.exit_code == 0, res.output
        config = json.loads((out / "board" / "config.json").read_text())
        assert config["release_keys"] == [b64(trusted)]


def test_a_downgrade_or_another_platform_is_refused_unless_allowed(tmp_path: Path) -> None:
    trusted = Ed25519PrivateKey.generate()
    built = bundles(tmp_path)
    with running_cluster(tmp_path, nodes=1, extra=firmware_table(trusted)) as cluster:
        dev = cluster.add_device(DEV)
        api = Api(cluster)
        hub = cluster.client(0)
        for bundle in built.values():
            upload(hub, bundle)
            release(hub, bundle, trusted)
        v2, v3, esp32 = (sha_of(built[k]) for k in ("v2", "v3", "esp32"))
        # The device runs release 0.3.0 (its status names the bundle).
        report_firmware(cluster, dev, f"0.3.0+b:{v3[:8]}")
        index = quiet(cluster)

        code, body = api.ota(v2)
        assert code == 409 and "downgrade" in body["detail"], body
        assert "runs 0.3.0, release 0.2.0 is older" in body["detail"], body
        code, body = api.ota(v2, allow_downgrade=False)
        assert code == 409 and "downgrade" in body["detail"], body
        code, body = api.ota(esp32)
        assert code == 422 and "wrong_platform" in body["detail"], body
        assert "is for esp32, plug-f runs linux" in body["detail"], body
        code, body = api.ota(v3, allow_downgrade="yes")
        assert code == 422, body
        assert api.get(f"/v1/commands?device={DEV}") == []
        assert quiet(cluster) == index  # nothing was proposed

        # Asked for explicitly, the downgrade goes out, and says so to the device.
        code, rec = api.ota(v2, allow_downgrade=True)
        assert code == 201, rec
        assert rec["params"]["allow_downgrade"] is True
        assert json.loads(rec["params"]["release"])["version"] == "0.2.0"
        # The same version again is no downgrade.
        code, rec = api.ota(v3)
        assert code == 201 and rec["params"]["allow_downgrade"] is False, rec
