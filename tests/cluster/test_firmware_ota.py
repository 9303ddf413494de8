"""Over-the-air updates end to end: a device flashed into a virtual board runs
against a 3-node hub cluster; `ota.update` commands go through the
replicated ledger; the bundles come from hub/firmware.py's endpoints.

A good update switches the device to the other app slot once it is connected
and acknowledged (the ledger says DONE). A broken update (its app raises at
boot) uses up its trial boots, the loader rolls back, and the ledger says
FAILED with the rollback; no reading is lost on the way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import DEVICE_TUNING, assert_exactly_once, running_cluster, watermark
from tests.cluster.test_hub_e2e import wait_done
from tests.firmware_support import TOKEN, RebootingBoard, bundle_server, updatable_capabilities
from tests.support import micropython, need_tool, wait_until
from tools.cluster import LocalCluster
from tools.firmware.build import BOARDS, build
from tools.firmware.flash import flash
from tools.firmware.ota import send, upload
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard
from tools.hubclient import HubClient
from tools.mpybuild import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

TUNING = {**DEVICE_TUNING, "ota_max_boots": 3, "ota_confirm_s": 60}


def source_tree(root: Path, version: str, broken: bool = False) -> Path:
    """A copy of edge/ and firmware/ with another version (and a main that raises)."""
    for package in ("edge", "firmware"):
        shutil.copytree(
            ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    node = root / "edge" / "node.py"
    node.write_text(node.read_text().replace('FIRMWARE = "0.1.0"', f'FIRMWARE = "{version}"'))
    if broken:
        main = root / "firmware" / "main.py"
        main.write_text(
            main.read_text().replace(
                "def main(ota=None):\n",
                'def main(ota=None):\n    raise RuntimeError("broken on purpose")\n',
            )
        )
    return root


def status_firmware(cluster: LocalCluster, device: str) -> str:
    """DeviceStatus.firmware as last received by any node (each keeps its own)."""
    seen = []
    for i in range(cluster.n):
        last = cluster.client(i).get(f"/v1/devices/{device}")["last_status"]
        if last is not None:
            seen.append((last["received_at"], str(last["payload"]["firmware"])))
    return max(seen)[1] if seen else ""


def update(
    cluster: LocalCluster, files: HubClient, device: str, bundle: Path
) -> tuple[str, dict[str, Any]]:
    sha, url, stored = upload(files, bundle)
    assert stored == [files.url]
    rec = send(cluster.any_client(), device, url, sha)
    assert rec["state"] == "PENDING" and rec["params"] == {"url": url, "sha256": sha}
    return sha, wait_done(cluster, rec["command_id"], 180)


def test_a_good_update_switches_and_a_broken_one_rolls_back(tmp_path: Path) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    with running_cluster(tmp_path) as cluster, bundle_server(tmp_path / "bundles") as url:
        registry = cluster.add_device("plug-o", capabilities=updatable_capabilities())
        first = tmp_path / "v1"
        build(BOARDS["unix"], registry, first, overrides=TUNING)
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
        files = HubClient(url, TOKEN)
        try:
            wait_until(lambda: watermark(cluster, 0, "plug-o") > 100, 90, "acknowledged readings")
            assert status_firmware(cluster, "plug-o") == "0.1.0+a"

            # 1. A good update: downloaded into app b, a trial boot, confirmed.
            sha2, rec = update(cluster, files, "plug-o", good)
            assert rec["state"] == "DONE", rec
            states = [h["state"] for h in rec["history"]]
            assert states[0] == "PENDING" and "SENT" in states and states[-1] == "DONE"
            assert rec["result"]["payload"]["detail"] == f"running app b (0.2.0+b:{sha2[:8]})"
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
            sha3, rec = update(cluster, files, "plug-o", broken)
            assert rec["state"] == "FAILED", rec
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
            wait_until(
                lambda: status_firmware(cluster, "plug-o") == f"0.2.0+b:{sha2[:8]}",
                60,
                "the device back on app b",
            )
        finally:
            files.close()
            out = board.stop()
        stats = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])

        # No reading lost: every reading the device ever took up to its stop
        # reaches the hub once, across the updates, the crashes and the rollback.
        taken = stats["next_seq"] - 1
        assert stats["dropped"] == 0 and stats["ota"]["rollbacks"] == 1  # this boot's
        board = RebootingBoard(vb).start()
        try:
            wait_until(
                lambda: watermark(cluster, 0, "plug-o") >= taken, 90, "every reading acknowledged"
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
