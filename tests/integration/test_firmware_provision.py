"""A generic bundle (built offline, no device) flashed into the virtual board:
without a device config it says that the board will not start; with
--device-config it writes that device's config.json; `aiot firmware
provision` writes or replaces the config alone; a later generic flash keeps
it. (tests/cluster/test_firmware_e2e.py runs such a board against hubs.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.support import micropython, need_tool
from tools.cli import firmware as cli_firmware
from tools.firmware.build import BOARDS, build, config_bytes, device_settings
from tools.firmware.virtual import SOCAT_HINT, VirtualBoard

pytestmark = pytest.mark.micropython

REGISTRY = {
    "device_id": "plug-g",
    "key": "11" * 32,
    "hubs": [["127.0.0.1", 1883], ["127.0.0.1", 1884]],
    "user": "plug-g",
    "password": "pw",
    # The firmware release key the device pins (without one: a warning).
    "release_keys": ["O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik="],
}


def run(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    cli_firmware.register(app)
    res = CliRunner().invoke(app, ["firmware", *args])
    return res.exit_code, res.output


def test_generic_flash_then_device_config_then_provision(tmp_path: Path) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    bundle = tmp_path / "generic"
    build(BOARDS["unix"], None, bundle)
    device_config = tmp_path / "plug-g.json"
    device_config.write_text(json.dumps(REGISTRY))
    fs = tmp_path / "board"
    with VirtualBoard(fs) as vb:
        # No config anywhere: flashed, and told plainly it will not start.
        code, out = run("flash", "--port", vb.url, "--out", str(bundle))
        assert code == 0, out
        assert (
            f"warning: the board at {vb.url} has no device config (config.json): it will not "
            f"start until it has one: aiot firmware provision --port {vb.url} --device ID"
        ) in out
        assert "; no config.json: the board will not start" in out
        assert not (fs / "config.json").exists() and (fs / "loader.mpy").exists()

        # The same bundle with a device config: only config.json is copied.
        code, out = run(
            "flash", "--port", vb.url, "--out", str(bundle), "--device-config", str(device_config)
        )
        assert code == 0, out
        assert ": 1 file(s) copied" in out and "  copied config.json" in out
        assert "warning" not in out
        want = config_bytes(device_settings(BOARDS["unix"], REGISTRY, {}))
        assert (fs / "config.json").read_bytes() == want

        # Provisioning alone: another device's config replaces it.
        other = {**REGISTRY, "device_id": "plug-h", "user": "plug-h"}
        device_config.write_text(json.dumps(other))
        code, out = run("provision", "--port", vb.url, "--device-config", str(device_config))
        assert code == 0, out
        assert f"provisioned {vb.url} as plug-h: config.json written; not reset" in out
        assert json.loads((fs / "config.json").read_text())["device_id"] == "plug-h"
        code, out = run("provision", "--port", vb.url, "--device-config", str(device_config))
        assert code == 0 and "config.json unchanged" in out

        # A generic flash after that keeps the board's config.
        code, out = run("flash", "--port", vb.url, "--out", str(bundle))
        assert code == 0, out
        assert "0 file(s) copied" in out and "; kept the board's config.json" in out
        assert "warning" not in out
        assert json.loads((fs / "config.json").read_text())["device_id"] == "plug-h"

        # Provisioning needs a device.
        code, out = run("provision", "--port", vb.url)
        assert code == 2 and "which device? --device ID" in out


def test_provisioning_a_board_without_firmware_says_so(tmp_path: Path) -> None:
    micropython()
    need_tool("socat", SOCAT_HINT)
    device_config = tmp_path / "plug-g.json"
    device_config.write_text(json.dumps(REGISTRY))
    with VirtualBoard(tmp_path / "board") as vb:
        code, out = run("provision", "--port", vb.url, "--device-config", str(device_config))
    assert code == 0, out
    assert f"warning: no firmware on the board yet: aiot firmware flash --port {vb.url}" in out
    assert [p.name for p in (tmp_path / "board").iterdir()] == ["config.json"]


def test_the_device_pins_its_release_keys_and_is_warned_without(tmp_path: Path) -> None:
    with_keys, without = tmp_path / "with.json", tmp_path / "without.json"
    with_keys.write_text(json.dumps(REGISTRY))
    without.write_text(json.dumps({k: v for k, v in REGISTRY.items() if k != "release_keys"}))
    code, out = run(
        "build", "--board", "unix", "-o", str(tmp_path / "a"), "--device-config", str(with_keys)
    )
    assert code == 0 and "release keys" not in out, out
    cfg = json.loads((tmp_path / "a" / "board" / "config.json").read_text())
    assert cfg["release_keys"] == REGISTRY["release_keys"]
    code, out = run(
        "build", "--board", "unix", "-o", str(tmp_path / "b"), "--device-config", str(without)
    )
    assert code == 0, out
    assert "warning: no firmware release keys for plug-g (release_keys): it will refuse" in out
    assert "release_keys" not in json.loads((tmp_path / "b" / "board" / "config.json").read_text())
