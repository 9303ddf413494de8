"""The fuzz tests' counts, listed at the end of the run."""

from __future__ import annotations

import pytest

from tests.fuzz.budget import ENV, RESULTS, examples


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section(f"fuzz inputs ({ENV}: 100 examples -> {examples(100)})")
    for t in RESULTS.values():
        terminalreporter.line(f"{t.name}: {t.summary()}")
