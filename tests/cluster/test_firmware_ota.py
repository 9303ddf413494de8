"""Over-the-air updates end to end: a device flashed into a virtual board runs
against a 3-node hub cluster; `aiot firmware ota --sign-key K --wait` uploads
each bundle to every node (hub/http/firmware.py's endpoints), signs and
registers it as a release (the hubs trust K in ``[firmware] trusted_keys``,
the device pins it in its config) and sends the `ota.update` command through
the replicated ledger, printing the steps as they land.

A good update switches the device to the other app slot once it is connected
and acknowledged (the ledger says DONE). A broken update (its app raises at
boot) uses up its trial boots, the loader rolls back, and the ledger says
FAILED with the rollback; no reading is lost on the way. The device's
progress (the download, the verified bundle and the reboot, each trial boot
that got as far as running) is in the command's history."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from tests.cluster.hubs import DEVICE_TUNING, assert_exactly_once, running_cluster, watermark
from tests.firmware_support import RebootingBoard, source_tree, updatable_capabilities
from tests.support import micropython, need_tool, wait_until
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build
from tools.firmware.flash import flash
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

TUNING = {**DEVICE_TUNING, "ota_max_boots": 3, "ota_confirm_s": 60}
RELEASE_KEY = Ed25519PrivateKey.generate()
PUBLIC = base64.b64encode(RELEASE_KEY.public_key().public_bytes_raw()).decode()
TRUSTED = f'[firmware]\ntrusted_keys = ["{PUBLIC}"]\n'


def key_file(root: Path) -> Path:
    path = root / "release.key"
    path.write_text(base64.b64encode(RELEASE_KEY.private_bytes_raw()).decode() + "\n")
    return path


def status_firmware(cluster: LocalCluster, device: str) -> str:
    """DeviceStatus.firmware as last received by any node (each keeps its own)."""
    seen = []
    for i in range(cluster.n):
        last = cluster.client(i).get(f"/v1/devices/{device}")["last_status"]
        if last is not None:
            seen.append((last["received_at"], str(last["payload"]["firmware"])))
    return max(seen)[1] if seen else ""


def update(cluster: LocalCluster, device: str, bundle: Path) -> tuple[int, str, dict[str, Any]]:
    """`aiot firmware ota DEVICE --sign-key K --wait`: (exit code, its output, the final record)."""
    app = typer.Typer()
    cli_firmware.register(app)
    args = ["firmware", "ota", device, "-o", str(bundle), "-c", str(cluster.configs[0])]
    sign = ["--sign-key", str(key_file(cluster.root))]
    res = CliRunner().invoke(app, [*args, *sign, "--wait", "240"])
    out = res.output
    info = json.loads((bundle / "bundle.json").read_text())
    sha = info["bundle_sha256"]
    assert f"release firmware-unix@{info['version']} ({sha}) registered\n" in out, out
    assert f"bundle {sha} on 3 node(s); command " in out, out
    rec = json.loads(out[out.index("\n{") :])
    params = rec["params"]
    assert {k: params[k] for k in ("url", "sha256", "allow_downgrade")} == {
        "url": f"{cluster.client(0).url}/v1/firmware/{sha}/",
        "sha256": sha,
        "allow_downgrade": False,
    }
    signed = params["release"].encode()
    RELEASE_KEY.public_key().verify(bytes.fromhex(params["signature"]), signed)
    return res.exit_code, out, rec


def size_of(bundle: Path) -> tuple[int, int]:
    """(files, bytes) of a bundle's app, as its OTA manifest lists them."""
    files = json.loads((bundle / "ota" / "manifest.json").read_text())["files"]
    return len(files), sum(size for size, _ in files.values())


def progress(rec: dict[str, Any]) -> list[str]:
    return [h["detail"] for h in rec["history"] if h["detail"]]


def test_a_good_update_switches_and_a_broken_one_rolls_back(tmp_path: Path) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    with running_cluster(tmp_path, extra=TRUSTED, tls=True) as cluster:  # MQTT and bundles over TLS
        registry = cluster.add_device("plug-o", capabilities=updatable_capabilities())
        first = tmp_path / "v1"
        # The device pins the release key (as `aiot firmware build --device` does).
        build(BOARDS["unix"], registry, first, overrides={**TUNING, "release_keys": [PUBLIC]})
        vb = VirtualBoard(tmp_path / "board").start()
        try:
            report = flash(vb.url, first)
        finally:
            vb.stop()
        assert "loader.mpy" in report.copied
        good = tmp_path / "v2"
        build(BOARDS["unix"], registry, good, root=source_tree(tmp_path / "s2", "0.2.0"))
        broken = tmp_path / "v3"
        src = source_tree(tmp_path / "s3", "0.3.0", broken=True)
        build(BOARDS["unix"], registry, broken, root=src)

        board = RebootingBoard(vb).start()
        try:
            wait_until(lambda: watermark(cluster, 0, "plug-o") > 100, 90, "acknowledged readings")
            assert status_firmware(cluster, "plug-o") == "0.1.0+a"

            # 1. A good update: downloaded into app b, a trial boot, confirmed.
            code, out, rec = update(cluster, "plug-o", good)
            sha2 = rec["params"]["sha256"]
            assert code == 0 and rec["state"] == "DONE", out
            states = [h["state"] for h in rec["history"]]
            assert states[0] == "PENDING" and "SENT" in states and states[-1] == "DONE"
            assert rec["result"]["payload"]["detail"] == f"running app b (0.2.0+b:{sha2[:8]})"
            n, size = size_of(good)
            steps = [
                "downloading into app b",
                f"downloading {n} files ({size} bytes) into app b",
                f"{n} files ({size} bytes) verified in app b; rebooting to try it (3 boots)",
                f"trial boot 1 of 3: app b (0.2.0+b~:{sha2[:8]})",
            ]
            # The first two leave the device moments apart (the answer, then the
            # manifest's size) and may be applied in either order.
            assert sorted(progress(rec)[:2]) == sorted(steps[:2]) and progress(rec)[2:] == steps[2:]
            for step in steps:  # printed as they reached the ledger
                assert f" SENT     {step}\n" in out, out
            assert out.index(steps[-1]) < out.index(" DONE\n") < out.index("\n{")
            wait_until(
                lambda: status_firmware(cluster, "plug-o") == f"0.2.0+b:{sha2[:8]}",
                60,
                "the device's status to name the new app",
            )
            state = json.loads((tmp_path / "board" / "ota.json").read_text())
            assert state["active"] == "b" and state["pending"] is None
            assert board.exits[-1:] == [0]  # one clean reboot into the trial

            # 2. A broken update: its app raises at every boot; 3 trial boots,
            # then the loader goes back to app b and the ledger says so.
            boots_before = board.boots
            code, out, rec = update(cluster, "plug-o", broken)
            sha3 = rec["params"]["sha256"]
            assert code == 1 and rec["state"] == "FAILED", out
            assert rec["result"]["payload"]["reason"] == "EXECUTION_ERROR"
            assert rec["result"]["payload"]["detail"] == (
                "rolled back to app b: app a was not connected and acknowledged within 3 boots"
            )
            # A clean reboot into the trial, three boots that crashed, the rollback.
            assert board.exits[-4:] == [0, 3, 3, 3] and board.boots - boots_before == 4
            crashes = board.outputs[-3:]
            assert all("RuntimeError: broken on purpose" in o for o in crashes), crashes
            assert all(o.startswith("loader: app a (trial)\n") for o in crashes), crashes
            state = json.loads((tmp_path / "board" / "ota.json").read_text())
            assert state["active"] == "b" and state["pending"] is None and state["report"] is None
            assert state["sha"]["a"] == sha3
            # Its app never ran far enough to report a trial boot.
            n, size = size_of(broken)
            assert sorted(progress(rec)) == sorted(
                [
                    "downloading into app a",
                    f"downloading {n} files ({size} bytes) into app a",
                    f"{n} files ({size} bytes) verified in app a; rebooting to try it (3 boots)",
                ]
            )
            wait_until(
                lambda: status_firmware(cluster, "plug-o") == f"0.2.0+b:{sha2[:8]}",
                60,
                "the device back on app b",
            )
        finally:
            out = board.stop()
        stats = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])

        # No reading lost: every reading the device ever took up to its stop
        # reaches the hub once, across the updates, the crashes and the rollback.
        taken = stats["next_seq"] - 1
        assert stats["dropped"] == 0 and stats["ota"]["rollbacks"] == 1  # this boot's
        board = RebootingBoard(vb).start()
        try:
            # Every reading acknowledged, and one this boot took: its node is
            # running, so it prints its counters at the stop (stopped while it
            # still boots, it prints none; the hub may have had all by then).
            wait_until(
                lambda: watermark(cluster, 0, "plug-o") > taken,
                90,
                "every reading acknowledged, and one of the new boot's",
            )
        finally:
            out = board.stop()
        final = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        assert_exactly_once(cluster, {"plug-o": final["watermark"]})
        device = cluster.any_client().get("/v1/devices/plug-o")
        assert device["lost_before"] == 0
        ledger = cluster.any_client().get("/v1/commands", device="plug-o")
        assert [(r["action"], r["state"]) for r in ledger] == [
            ("ota.update", "DONE"),
            ("ota.update", "FAILED"),
        ]
