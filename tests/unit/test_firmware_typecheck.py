"""The device code type-checks against the MicroPython stubs, and a misuse of
a MicroPython API fails the check (tools/firmware/typecheck.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.base.paths import ROOT
from tools.firmware.typecheck import STUBS, check

pytestmark = pytest.mark.unit


def tree(tmp_path: Path) -> Path:
    for package in ("edge", "firmware"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


@pytest.mark.parametrize("port", sorted(STUBS))
def test_edge_and_firmware_pass(port: str) -> None:
    code, out = check(port)
    assert code == 0, out
    assert "Success: no issues found" in out


@pytest.mark.parametrize("port", sorted(STUBS))
def test_a_misused_machine_api_in_the_firmware_fails(port: str, tmp_path: Path) -> None:
    root = tree(tmp_path)
    board = root / "firmware" / "board.py"
    text = board.read_text()
    assert "        self._wdt.feed()\n" in text
    board.write_text(text.replace("        self._wdt.feed()\n", "        self._wdt.feed(1)\n"))
    code, out = check(port, cwd=root)
    assert code == 1
    line = text[: text.index("        self._wdt.feed()\n")].count("\n") + 1
    assert f'firmware/board.py:{line}: error: Too many arguments for "feed" of "WDT"' in out


def test_port_specific_apis_are_checked_against_their_own_stubs(tmp_path: Path) -> None:
    root = tree(tmp_path)
    board = root / "firmware" / "board.py"
    text = board.read_text()
    text = text.replace("esp32.Partition.TYPE_DATA", "esp32.Partition.TYPE_DATUM")
    text = text.replace("rp2.Flash(start=region[0], len=region[1])", "rp2.Flash(region[0])")
    board.write_text(text)
    code, esp = check("esp32", cwd=root)
    assert code == 1 and 'has no attribute "TYPE_DATUM"' in esp and "rp2" not in esp
    code, pico = check("rp2", cwd=root)
    assert code == 1 and "TYPE_DATUM" not in pico
    assert "firmware/board.py" in pico and "Flash" in pico
