"""The fuzz tests' counts, listed at the end of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.budget import ENV, RESULTS, examples


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A longer campaign (AIOT_FUZZ_EXAMPLES above the CI budget) runs each test
    # longer than the suite's per-test timeout; scale that timeout with it.
    factor = examples(100) / 100
    if factor > 1:
        here = Path(__file__).parent
        for item in items:
            if here in item.path.parents and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(round(300 * factor)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section(f"fuzz inputs ({ENV}: 100 examples -> {examples(100)})")
    for t in RESULTS.values():
        terminalreporter.line(f"{t.name}: {t.summary()}")
