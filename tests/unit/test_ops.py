"""Operator tooling without a cluster: JSON log fields, the decision hooks'
metrics, backup files (verification, tampering, restore into a node that
then runs), and the systemd unit of `aiot hub install-service`."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub.core import config as hub_config
from hub.core.logs import JsonFormatter
from hub.ops import backup as b
from hub.ops import metrics
from hub.state import entries as e
from hub.state.errors import SnapshotError
from hub.state.raft import DUMP_FILE, JOURNAL_FILE, RaftNode, RaftTiming
from hub.state.store import Store
from protocol import messages as m
from tests import console_support as console
from tests.support import ROOT, free_port

pytestmark = pytest.mark.unit


def aiot(*args: str) -> subprocess.CompletedProcess[str]:
    return console.aiot(ROOT, *args)


# -- logs --------------------------------------------------------------------------------


def record(msg: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("hub.ingest", logging.WARNING, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_device_command_and_reason_when_given() -> None:
    fmt = JsonFormatter("hub-2")
    line = json.loads(fmt.format(record("x", device="plug-1", reason="bad_hmac")))
    assert line["device"] == "plug-1" and line["reason"] == "bad_hmac"
    assert line["node"] == "hub-2" and line["level"] == "warning" and "command_id" not in line
    line = json.loads(fmt.format(record("y", command_id="c0ffee", device="")))
    assert line["command_id"] == "c0ffee" and "device" not in line  # empty is absent
    assert set(json.loads(fmt.format(record("z")))) == {"ts", "level", "logger", "node", "msg"}


def test_ingest_rejections_log_their_fields(caplog: pytest.LogCaptureFixture) -> None:
    from hub.core.config import IngestConfig
    from hub.link.ingest import Ingest

    class Nobody:
        def device(self, device_id: str) -> None:
            return None

        def progress(self, device_id: str) -> tuple[int, int]:
            return 0, 0

    class Never:
        async def propose(self, entry: bytes) -> tuple[Any, ...]:
            raise AssertionError("nothing valid to propose")

    async def run() -> None:
        ingest = Ingest("hub-1", Nobody(), Never(), IngestConfig(5, 64, 256 * 1024, 16 * 1024))
        await ingest.handle("aiot/v1/ghost/up", b"\x00" * 64)
        await ingest.aclose()

    with caplog.at_level(logging.INFO, logger="hub.ingest"):
        asyncio.run(run())
    (rec,) = [r for r in caplog.records if r.getMessage().startswith("ingest rejected")]
    line = json.loads(JsonFormatter("hub-1").format(rec))
    assert line["device"] == "ghost" and line["reason"] == "unknown_device"


# -- decision metrics ----------------------------------------------------------------------


class _Decisions:
    def collect(self) -> Any:
        return metrics._DECISIONS.families()


def decision_samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Decisions())  # type: ignore[arg-type]
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_decision_hooks_feed_the_counter_and_the_latency_histogram() -> None:
    before = decision_samples()
    assert before[("aiot_decisions_total", (("tier", "llm"),))] >= 0  # exported before any call
    metrics.observe_decision("onnx", 0.003)
    metrics.observe_decision("ONNX", 0.02)
    metrics.observe_decision("rules", 0.00002)
    metrics.count_model_load("anomaly", ok=True)
    metrics.count_model_load("anomaly", ok=False)
    after = decision_samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("aiot_decisions_total", tier="onnx") == 2
    assert delta("aiot_decision_latency_seconds_count", tier="onnx") == 2
    assert delta("aiot_decision_latency_seconds_bucket", tier="onnx", le="0.005") == 1
    assert delta("aiot_decision_latency_seconds_bucket", tier="onnx", le="0.025") == 2
    assert delta("aiot_decision_latency_seconds_bucket", tier="onnx", le="+Inf") == 2
    assert delta("aiot_decision_latency_seconds_sum", tier="onnx") == pytest.approx(0.023)
    assert delta("aiot_decision_latency_seconds_bucket", tier="rules", le="0.0001") == 1
    assert delta("aiot_model_loads_total", model="anomaly", result="ok") == 1
    assert delta("aiot_model_loads_total", model="anomaly", result="failed") == 1


# -- backup files ------------------------------------------------------------------------


def source_store(path: Path) -> Store:
    store = Store(path)
    dev = e.Device("plug-1", secrets.token_bytes(32), (m.Capability("reboot", ()),), 1200.0, "ann")
    store.apply([(3, e.encode(e.RegisterDevice(dev, 1_000)))])
    readings = b"".join(bytes([0, 2, 0, 10 * i]) + bytes(4) for i in range(5))
    batch = e.Batch("plug-1", "hub-1", 1, 1, 1_763_700_000_000, readings)
    store.apply([(7, e.encode(batch))])
    user = e.User("vic", e.Role.VIEWER, b"h" * 32, ("plug-1",), 2_000)
    store.apply([(9, e.encode(user))])
    return store


def make_backup(tmp: Path, term: int = 4) -> tuple[Path, str]:
    """A backup directory as `aiot backup` writes it, from a local store."""
    with source_store(tmp / "src") as store:
        want = store.content_hash()
        root = tmp / "backup"
        root.mkdir()
        with open(root / b.SNAPSHOT_FILE, "wb") as f:
            store.snapshot_to(f)
    with open(root / b.SNAPSHOT_FILE, "rb") as f:
        summary = b.read_snapshot(f)
    (root / b.REGISTRY_FILE).write_text(json.dumps(summary.registry))
    manifest = {
        "format": b.BACKUP_FORMAT,
        "source": {"node": "hub-1", "applied_index": summary.applied_index, "term": term},
        "content_hash": summary.content_hash,
        "files": b.manifest_files(root),
    }
    (root / b.MANIFEST).write_text(json.dumps(manifest))
    return root, want


def node_config(tmp: Path, name: str = "hub.toml") -> Path:
    (tmp / "c.secret").write_text("s" * 32)
    path = tmp / name
    path.write_text(
        '[node]\nid = "hub-1"\ndata_dir = "node"\n'
        f'[raft]\nbind = "127.0.0.1:{free_port()}"\nsecret_file = "c.secret"\n'
        f'[broker]\nbind = "127.0.0.1:{free_port()}"\n'
        f'[http]\nbind = "127.0.0.1:{free_port()}"\n[tls]\nplain = true\n'
    )
    return path


def test_a_snapshot_stream_is_verified_hashed_and_summarised(tmp_path: Path) -> None:
    root, want = make_backup(tmp_path)
    data = (root / b.SNAPSHOT_FILE).read_bytes()
    with open(root / b.SNAPSHOT_FILE, "rb") as f:
        s = b.read_snapshot(f)
    assert s.content_hash == want and s.applied_index == 9
    assert s.rows["readings"] == 5 and s.rows["devices"] == 1
    (dev,) = s.registry["devices"]
    assert dev == {
        "device_id": "plug-1",
        "owner": "ann",
        "limit_w": 1200.0,
        "capabilities": ["reboot"],
        "registered_at_ms": 1_000,
        "readings": 5,
    }
    assert s.registry["users"] == [{"name": "vic", "role": "viewer", "devices": ["plug-1"]}]
    for bad, reason in (
        (data[:-40], "truncated"),
        (data[:-1] + bytes([data[-1] ^ 1]), "bad_digest"),
        (data + b"x", "trailing_bytes"),
        (b"NOTASNAP" + data[8:], "bad_magic"),
    ):
        path = tmp_path / "bad.snap"
        path.write_bytes(bad)
        with open(path, "rb") as f, pytest.raises(SnapshotError) as err:
            b.read_snapshot(f)
        assert err.value.reason == reason


def test_a_tampered_backup_is_refused_by_its_sha256(tmp_path: Path) -> None:
    root, _ = make_backup(tmp_path)
    cfg = node_config(tmp_path)
    snap = root / b.SNAPSHOT_FILE
    good = snap.read_bytes()
    snap.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    out = aiot("restore", str(root), "--config", str(cfg))
    assert out.returncode == 1
    assert "store.snap: sha256" in out.stderr and "refusing" in out.stderr
    assert not (tmp_path / "node").exists()  # nothing written

    snap.write_bytes(good)
    (root / b.REGISTRY_FILE).write_text("{}")
    out = aiot("restore", str(root), "--config", str(cfg))
    assert out.returncode == 1 and "registry.json: sha256" in out.stderr

    (root / b.MANIFEST).unlink()
    out = aiot("restore", str(root), "--config", str(cfg))
    assert out.returncode == 1 and "not a backup directory" in out.stderr
    assert "Traceback" not in out.stderr


# pysyncobj's MetaStorer.getMeta reads raft.journal.meta with open() and never
# closes the file: a ResourceWarning in this process, not a bug of ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_restored_node_starts_its_log_after_the_backup(tmp_path: Path) -> None:
    root, want = make_backup(tmp_path, term=4)
    path = node_config(tmp_path)
    out = aiot("restore", str(root), "--config", str(path), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["restored"][0]["content_hash"] == want
    assert (result["store_index"], result["raft_index"], result["term"]) == (9, 9, 1004)
    cfg = hub_config.load(path)
    assert {p.name for p in cfg.data_dir.iterdir()} >= {"store", DUMP_FILE, JOURNAL_FILE}

    async def run() -> tuple[Any, Any, list[str]]:
        timing = RaftTiming(election_min=0.2, election_max=0.4)
        node = RaftNode(str(cfg.raft.bind), [], cfg.data_dir, cfg.raft.secret, timing=timing)
        try:
            deadline = time.monotonic() + 20
            while not (node.is_ready and node.leader):
                assert time.monotonic() < deadline, "the restored node never led"
                await asyncio.sleep(0.05)
            started = node.status()
            dev = e.Device("plug-2", secrets.token_bytes(32), (), None, "")
            (res,) = await node.propose(e.encode(e.RegisterDevice(dev, 3_000)))
            return started, res, [d.device_id for d in node.read(Store.devices)]
        finally:
            node.close()

    started, res, devices = asyncio.run(run())
    assert started.journal_behind_store == 0 and started.snapshots_installed == 0
    assert started.store_applied_index == 9 and started.term > 1004
    # The new leader's no-op is index 10; the first real entry comes after.
    assert res.outcome.value == "applied" and res.index == 11
    assert devices == ["plug-1", "plug-2"]

    again = aiot("restore", str(root), "--config", str(path))
    assert again.returncode == 2 and "not empty" in again.stderr


# -- install-service ---------------------------------------------------------------------


def test_install_service_dry_run_prints_the_unit_and_writes_nothing(tmp_path: Path) -> None:
    cfg, env = tmp_path / "etc" / "hub.toml", tmp_path / "etc" / "aiot.env"
    out = aiot(
        "hub",
        "install-service",
        "--dry-run",
        "--config",
        str(cfg),
        "--user",
        "aiot",
        "--env-file",
        str(env),
        "--peer",
        "10.0.0.12",
        "--node-id",
        "pi-1",
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    unit = text.split("# --- ", 2)[1]
    assert unit.startswith("/etc/systemd/system/aiot-hub.service")
    for line in (
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=45",
        "RestartPreventExitStatus=2",
        f"EnvironmentFile={env}",
        "User=aiot",
        "StateDirectory=aiot",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "WantedBy=multi-user.target",
    ):
        assert f"\n{line}" in unit, line
    (start,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    assert start.endswith(f" hub run --config {cfg}")
    assert "MemoryDenyWriteExecute=yes" not in unit
    assert f"# --- {cfg}" in text and 'peers = ["10.0.0.12:4321"]' in text
    tls = tmp_path / "etc" / "tls"
    assert (
        f'ca = "{tls / "ca.pem"}"\ncert = "{tls / "pi-1.pem"}"\nkey = "{tls / "pi-1.key"}"' in text
    )
    assert 'bind = "0.0.0.0:8883"' in text
    assert f"{tls} has no ca.pem, pi-1.pem, pi-1.key yet" in out.stderr
    assert "AIOT_CLUSTER_SECRET=<generated at install>" in text
    assert not (tmp_path / "etc").exists()


def test_install_service_writes_the_unit_a_sample_config_and_the_secret(tmp_path: Path) -> None:
    cfg, env = tmp_path / "etc" / "hub.toml", tmp_path / "etc" / "aiot.env"
    units = tmp_path / "units"
    out = aiot(
        "hub",
        "install-service",
        "--config",
        str(cfg),
        "--env-file",
        str(env),
        "--unit-dir",
        str(units),
        "--node-id",
        "pi-1",
        "--data-root",
        str(tmp_path / "data"),
        "--plain",
    )
    assert out.returncode == 0, out.stderr
    unit = (units / "aiot-hub.service").read_text()
    assert f"ReadWritePaths={tmp_path / 'data'}" in unit and "StateDirectory" not in unit
    assert env.stat().st_mode & 0o777 == 0o600
    secret = env.read_text().split("AIOT_CLUSTER_SECRET=", 1)[1].strip()
    assert len(secret) == 64
    parsed = hub_config.load(cfg, env={"AIOT_CLUSTER_SECRET": secret})
    assert parsed.node_id == "pi-1" and parsed.broker.mode == "mosquitto"
    assert not parsed.tls.on and parsed.broker.bind is not None and parsed.broker.bind.port == 1883
    assert parsed.data_dir == tmp_path / "data" / "hub"
    # A second run keeps the config and the secret as they are.
    cfg.write_text(cfg.read_text() + "# edited\n")
    out = aiot(
        "hub",
        "install-service",
        "--config",
        str(cfg),
        "--env-file",
        str(env),
        "--unit-dir",
        str(units),
        "--data-root",
        str(tmp_path / "data"),
    )
    assert out.returncode == 0, out.stderr
    assert cfg.read_text().endswith("# edited\n") and secret in env.read_text()
    bad = aiot("hub", "install-service", "--dry-run", "--user", "Root!")
    assert bad.returncode == 2 and "not a valid system user" in bad.stderr
