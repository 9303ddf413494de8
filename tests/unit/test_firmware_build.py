"""`aiot firmware build`: a bundle per board, with manifests and a flash budget;
generic (no device, no hub) or for one device (its config from the hub or a file)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.support import free_port, micropython
from tools.cli import firmware as cli_firmware
from tools.firmware.build import (
    BOARDS,
    BuildError,
    DeviceConfigError,
    build,
    load_device_config,
    load_wifi,
)

pytestmark = pytest.mark.unit

REGISTRY: dict[str, Any] = {
    "device_id": "plug-9",
    "key": "ab" * 32,
    "hubs": [["10.0.0.5", 1883], ["10.0.0.6", 1883]],
    "user": "plug-9",
    "password": "pw",
}
WIFI = {"wifi_ssid": "home", "wifi_password": "secret"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", list(BOARDS))
def test_every_board_builds_a_bundle_with_its_manifests(name: str, tmp_path: Path) -> None:
    board = BOARDS[name]
    info = build(board, REGISTRY, tmp_path / "b", wifi=WIFI)
    out = tmp_path / "b"
    files = info["files"]
    # bundle.json lists exactly the board's files, each with its size and sha256.
    on_disk = {p.relative_to(out / "board").as_posix() for p in (out / "board").rglob("*")}
    assert set(files) == {p for p in on_disk if (out / "board" / p).is_file()}
    for path, (size, digest) in files.items():
        data = (out / "board" / path).read_bytes()
        assert (len(data), sha(data)) == (size, digest), path
    assert "app_a/edge/node.mpy" in files and "app_a/firmware/main.mpy" in files
    assert "loader.mpy" in files and "app_a/firmware/loader.mpy" not in files
    assert not [p for p in files if p.startswith("app_a/") and not p.endswith(".mpy")]
    assert ("main.py" in files) == ("boot.py" in files) == (name != "unix")
    # The OTA bundle: named by its manifest's sha256, same app files, no config.
    raw = (out / "ota" / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert info["bundle_sha256"] == sha(raw)
    assert manifest["platform"] == board.platform and manifest["mpy"] == 6
    assert {f"app_a/{p}": v for p, v in manifest["files"].items()} == {
        p: v for p, v in files.items() if p.startswith("app_a/")
    }
    assert not (out / "ota" / "config.json").exists()
    # The device's config: the registry, the Wi-Fi secrets, the template's settings.
    cfg = json.loads((out / "board" / "config.json").read_text())
    assert {k: cfg[k] for k in REGISTRY} == REGISTRY
    assert cfg["wifi_ssid"] == "home" and cfg["data_dir"] == board.data_dir
    assert cfg["sample_ms"] == 1000 and not any(k.startswith("_") for k in cfg)
    # Every .mpy was compiled for this board's architecture.
    assert info["march"] == board.march
    b = info["budget"]
    assert b["app_bytes"] == sum(v[0] for p, v in files.items() if p.startswith("app_a/"))
    assert b["total_bytes"] >= 2 * b["app_bytes"]
    if board.fs_bytes is not None:
        assert b["free_bytes"] == board.fs_bytes - b["total_bytes"] > 0


def test_the_same_sources_give_the_same_bundle_sha(tmp_path: Path) -> None:
    a = build(BOARDS["esp32"], REGISTRY, tmp_path / "a")
    b = build(BOARDS["esp32"], {**REGISTRY, "device_id": "plug-8"}, tmp_path / "b")
    assert a["bundle_sha256"] == b["bundle_sha256"]  # the config is not part of the app
    assert a["files"]["config.json"] != b["files"]["config.json"]


def test_a_bundle_over_the_flash_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"needs [\d,]+ bytes of flash but pico_w has 868,352"):
        build(BOARDS["pico_w"], REGISTRY, tmp_path / "b", overrides={"slot_capacity": 1 << 20})
    # With the slots on a raw flash region, the same device fits.
    info = build(
        BOARDS["pico_w"],
        REGISTRY,
        tmp_path / "c",
        overrides={"slot_capacity": 1 << 20, "slots_flash": [1 << 20, 1 << 20]},
    )
    assert info["budget"]["data_slots_bytes"] == 0


def test_wifi_secrets_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot read Wi-Fi secrets"):
        load_wifi(tmp_path / "missing.json")
    bad = tmp_path / "wifi.json"
    bad.write_text("{not json")
    with pytest.raises(BuildError, match="not valid JSON"):
        load_wifi(bad)
    bad.write_text('{"ssid": "x"}')
    with pytest.raises(BuildError, match="wifi_ssid"):
        load_wifi(bad)
    bad.write_text(json.dumps(WIFI))
    assert load_wifi(bad) == WIFI


def test_the_unix_bundle_imports_from_mpy_files_only(tmp_path: Path) -> None:
    mp = micropython()
    build(BOARDS["unix"], REGISTRY, tmp_path / "b")
    board = tmp_path / "b" / "board"
    assert not list(board.rglob("*.py"))
    proc = subprocess.run(
        [
            mp,
            "-c",
            "import sys\nsys.path.insert(0, 'app_a')\n"
            "import loader, edge.node, edge.ota, firmware.main\n"
            "print(loader.__file__, edge.node.__file__, firmware.main.__file__)",
        ],
        cwd=board,
        env=dict(os.environ, MICROPYPATH=".:.frozen"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["loader.mpy", "app_a/edge/node.mpy", "app_a/firmware/main.mpy"]


def test_cli_unknown_board_and_missing_hub_are_one_line_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = typer.Typer()
    cli_firmware.register(app)
    for k in ("AIOT_CONFIG", "AIOT_HUB", "AIOT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    res = CliRunner().invoke(app, ["firmware", "build", "--board", "esp8266", "--device", "p"])
    assert res.exit_code == 2 and "unknown board 'esp8266'" in res.output
    res = CliRunner().invoke(
        app, ["firmware", "build", "--board", "esp32", "--device", "p", "-o", str(tmp_path)]
    )
    assert res.exit_code == 2 and "which hub?" in res.output


def cli_offline(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """The `aiot firmware` group, with the environment naming a hub that does
    not answer (a build that needed one would fail)."""
    monkeypatch.delenv("AIOT_CONFIG", raising=False)
    monkeypatch.setenv("AIOT_HUB", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AIOT_TOKEN", "no-hub-answers-here")
    app = typer.Typer()
    cli_firmware.register(app)
    return app


@pytest.mark.parametrize("name", list(BOARDS))
def test_a_generic_bundle_builds_offline_for_every_board(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cli_offline(monkeypatch)
    out = tmp_path / "generic"
    res = CliRunner().invoke(app, ["firmware", "build", "--board", name, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"built a generic {name} bundle in {out}: no device config" in res.output
    assert "config          none: flash it with --device ID or --device-config FILE" in res.output
    assert "Wi-Fi" not in res.output  # Wi-Fi comes with the device's config
    info = json.loads((out / "bundle.json").read_text())
    assert info["board"] == name and info["device_id"] is None
    assert "config.json" not in info["files"] and not (out / "board" / "config.json").exists()
    assert "loader.mpy" in info["files"] and "app_a/firmware/main.mpy" in info["files"]
    # The same app as a device's bundle: one OTA bundle serves both.
    device = build(BOARDS[name], REGISTRY, tmp_path / "device", wifi=WIFI)
    assert device["bundle_sha256"] == info["bundle_sha256"]
    assert {p: v for p, v in device["files"].items() if p != "config.json"} == info["files"]


def test_a_device_bundle_builds_offline_from_a_device_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cli_offline(monkeypatch)
    device_config = tmp_path / "plug-9.json"  # as `aiot device add --out` writes it
    device_config.write_text(json.dumps({**REGISTRY, "sample_ms": 250}))
    settings = tmp_path / "settings.json"
    settings.write_text('{"sample_ms": 500, "relay_pin": 4}')
    wifi = tmp_path / "wifi.json"
    wifi.write_text(json.dumps(WIFI))
    out = tmp_path / "b"
    args = ["firmware", "build", "-b", "esp32", "-o", str(out), "--device-config"]
    res = CliRunner().invoke(
        app, [*args, str(device_config), "--settings", str(settings), "--wifi-secrets", str(wifi)]
    )
    assert res.exit_code == 0, res.output
    assert f"built esp32 bundle for plug-9 in {out}" in res.output
    cfg = json.loads((out / "board" / "config.json").read_text())
    assert {k: cfg[k] for k in REGISTRY} == REGISTRY
    assert (cfg["sample_ms"], cfg["relay_pin"], cfg["wifi_ssid"]) == (500, 4, "home")
    assert cfg["data_dir"] == "/data"


def test_device_options_that_do_not_fit_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cli_offline(monkeypatch)
    device_config = tmp_path / "plug-9.json"
    device_config.write_text(json.dumps(REGISTRY))
    base = ["firmware", "build", "-b", "unix", "-o", str(tmp_path / "b")]
    for extra, says in [
        (["-d", "plug-9", "--device-config", str(device_config)], "--device or --device-config"),
        (["--settings", str(device_config)], "--wifi-secrets and --settings go into a device"),
        (["--device-config", str(tmp_path / "none.json")], "cannot read device config"),
    ]:
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and says in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_device_config_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    for text, says in [
        ("[1]", "expected a JSON object"),
        ('{"device_id": "p", "hubs": []}', "lacks key"),
        ('{"device_id": "", "key": "k", "hubs": [["h", 1]]}', "device_id must be"),
        ('{"device_id": "p", "key": "k", "hubs": []}', "hubs must be a list of [host, port]"),
        ('{"device_id": "p", "key": "k", "hubs": [["h", "1883"]]}', "hubs must be a list"),
    ]:
        path.write_text(text)
        with pytest.raises(DeviceConfigError, match=re.escape(says)):
            load_device_config(path)
    path.write_text(json.dumps(REGISTRY))
    assert load_device_config(path) == REGISTRY
