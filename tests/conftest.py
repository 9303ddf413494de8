"""Test-wide hooks.

With CI=true a skipped test fails the run: every test that needs Mosquitto or
MicroPython must run in CI. Outside CI, such tests skip with a reason that
says what to install.
"""

from __future__ import annotations

import pytest

from tests.support import IN_CI

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if IN_CI and _skipped:
        terminalreporter.section("skipped tests fail the run in CI", red=True)
        for nodeid in _skipped:
            terminalreporter.line(f"SKIPPED IN CI: {nodeid}")
