"""The browser tier: Debian's chromium driven by playwright's Python package.

Nothing is downloaded at test time: playwright launches the system browser
(``executable_path``), never its own build. Outside CI a missing browser or
package skips with the command that installs it; in CI a skip fails the run
(tests/conftest.py).

Screenshots go to ``tests/browser/artifacts/<test>/`` (git-ignored), or under
``$AIOT_BROWSER_ARTIFACTS`` when set; the run's summary names the folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(
    os.environ.get("AIOT_BROWSER_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts"
)
CHROMIUM_HINT = "apt-get install -y chromium"
PLAYWRIGHT_HINT = "pip install -e '.[dev]' (the playwright package; no 'playwright install')"

_written: list[Path] = []


def chromium_path() -> str:
    """$AIOT_CHROMIUM when set, else Debian's chromium; skip when missing."""
    given = os.environ.get("AIOT_CHROMIUM")
    if given:
        if not Path(given).exists():
            pytest.skip(f"AIOT_CHROMIUM={given} does not exist")
        return given
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.skip(f"chromium not found: {CHROMIUM_HINT}")
    return found


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = ARTIFACTS / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _written.append(path)
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (playwright Browser) for the module's tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright not installed: {PLAYWRIGHT_HINT}")
    path = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _written:
        terminalreporter.section("browser screenshots")
        for path in _written:
            shots = sorted(p.name for p in path.glob("*.png"))
            terminalreporter.line(f"{path}: {', '.join(shots) or 'none'}")
