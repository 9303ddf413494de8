"""hub/http/firmware.py: bundles uploaded with the admin token, served to devices."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.firmware_support import TOKEN, bundle_server
from tools.firmware.build import BOARDS, build
from tools.firmware.ota import bundle_payload

pytestmark = pytest.mark.unit


@contextmanager
def app_for(root: Path) -> Iterator[httpx.Client]:
    with bundle_server(root) as url, httpx.Client(base_url=url) as client:
        yield client


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    registry = {"device_id": "p", "key": "00" * 32, "hubs": [["127.0.0.1", 1883]]}
    build(BOARDS["unix"], registry, out)
    return out


def test_upload_then_serve_every_file(tmp_path: Path, bundle: Path) -> None:
    with app_for(tmp_path) as client:
        sha, body = bundle_payload(bundle)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/firmware", json=body).status_code == 401
        res = client.post("/v1/firmware", json=body, headers=auth)
        assert res.status_code == 201, res.text
        assert res.json() == {
            "sha256": sha,
            "files": len(body["files"]),
            "stored": True,
            "path": f"/v1/firmware/{sha}/",
        }
        again = client.post("/v1/firmware", json=body, headers=auth).json()
        assert again["stored"] is False
        # Devices download without a token; every byte is what the build wrote.
        manifest = client.get(f"/v1/firmware/{sha}/manifest.json")
        assert hashlib.sha256(manifest.content).hexdigest() == sha
        for path, (size, digest) in json.loads(manifest.content)["files"].items():
            got = client.get(f"/v1/firmware/{sha}/{path}")
            assert got.status_code == 200
            assert int(got.headers["content-length"]) == size
            assert hashlib.sha256(got.content).hexdigest() == digest
        listed = client.get("/v1/firmware", headers=auth).json()
        assert [(b["sha256"], b["platform"], b["board"]) for b in listed] == [
            (sha, "linux", "unix")
        ]


def test_bad_uploads_store_nothing(tmp_path: Path, bundle: Path) -> None:
    with app_for(tmp_path) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        _, body = bundle_payload(bundle)
        name = sorted(body["files"])[0]
        cases = {
            "a file differs from the manifest": {
                **body,
                "files": {**body["files"], name: base64.b64encode(b"evil").decode()},
            },
            "a file is missing": {
                **body,
                "files": {k: v for k, v in body["files"].items() if k != name},
            },
            "an extra file": {**body, "files": {**body["files"], "x.mpy": ""}},
            "not base64": {**body, "files": {**body["files"], name: "@@@"}},
            "a manifest that is not JSON": {**body, "manifest": "{"},
        }
        for what, bad in cases.items():
            res = client.post("/v1/firmware", json=bad, headers=auth)
            assert res.status_code == 422, what
        assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_only_bundle_files_are_served(tmp_path: Path, bundle: Path) -> None:
    with app_for(tmp_path) as client:
        sha, body = bundle_payload(bundle)
        client.post("/v1/firmware", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        (tmp_path / "secret.txt").write_text("no")
        for path in (
            f"/v1/firmware/{sha}/../secret.txt",
            f"/v1/firmware/{sha}/%2e%2e/secret.txt",
            f"/v1/firmware/{'0' * 64}/manifest.json",
            "/v1/firmware/notasha/manifest.json",
            f"/v1/firmware/{sha}/edge/nope.mpy",
        ):
            res = client.get(path, follow_redirects=True)
            assert res.status_code in (401, 404) and res.content != b"no", path
