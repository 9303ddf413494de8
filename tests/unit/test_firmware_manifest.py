"""firmware/manifest.toml: what a bundle ships, and where the version is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.base.paths import ROOT
from tools.firmware.build import BOARDS, BuildError, build, firmware_version, load_manifest

pytestmark = pytest.mark.unit

REGISTRY = {"device_id": "plug-9", "key": "ab" * 32, "hubs": [["10.0.0.5", 1883]]}


def test_every_device_module_is_shipped_once() -> None:
    m = load_manifest()
    device_code = {
        p.relative_to(ROOT).as_posix()
        for d in ("edge", "firmware")
        for p in (ROOT / d).glob("*.py")
    }
    named = [*m.app, m.loader, m.boot]
    assert sorted(named) == sorted(set(named)), "a module is named twice"
    assert set(named) == device_code
    assert all((ROOT / p).is_file() for p in named)


def test_the_version_is_read_from_the_module_the_manifest_names(tmp_path: Path) -> None:
    assert firmware_version() == "0.1.0"
    for package in ("edge", "firmware"):
        shutil.copytree(ROOT / package, tmp_path / package)
    node = tmp_path / "edge" / "node.py"
    node.write_text(node.read_text().replace('FIRMWARE = "0.1.0"', 'FIRMWARE = "7.1.2"'))
    assert firmware_version(tmp_path) == "7.1.2"
    assert build(BOARDS["unix"], REGISTRY, tmp_path / "out", root=tmp_path)["version"] == "7.1.2"


def test_a_module_left_out_of_the_manifest_is_not_shipped(tmp_path: Path) -> None:
    for package in ("edge", "firmware"):
        shutil.copytree(ROOT / package, tmp_path / package)
    manifest = tmp_path / "firmware" / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('"firmware/board.py", ', ""))
    info = build(BOARDS["unix"], REGISTRY, tmp_path / "out", root=tmp_path)
    assert "app_a/firmware/main.mpy" in info["files"]
    assert "app_a/firmware/board.mpy" not in info["files"]


def test_a_broken_manifest_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "manifest.toml").write_text("version = \n")
    with pytest.raises(BuildError, match="not a firmware manifest"):
        load_manifest(tmp_path)
    with pytest.raises(BuildError, match="cannot read"):
        load_manifest(tmp_path / "nowhere")
