"""Test-wide hooks.

With CI=true a skipped test fails the run: every test that needs Mosquitto or
MicroPython must run in CI. Outside CI, such tests skip with a reason that
says what to install.

Under pytest-xdist (`make test TEST_WORKERS=2`: `-n 2 --dist loadfile`) a worker runs each
test file whole, so its module fixtures start once; the files that keep every
core busy (the local model, torch, the decision bench) are one unit, so they
run one after another and never beside each other: torch's and llama.cpp's
threads on one oversubscribed core slowed two of them from under a minute past
the 300 s timeout.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import IN_CI

_skipped: list[str] = []

# The test files that use every core (the local model, torch, the decision
# bench) and Chromium's processes: one unit of work under xdist, so they never
# run beside each other.
CPU_BOUND: tuple[str, ...] = (
    "tests/llm/",
    "tests/integration/test_bench_decide.py",
    "tests/integration/test_bench_all.py",
    "tests/browser/",
)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: none without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadfile``, each test file whole in one worker, and the
    CPU_BOUND files together as one unit, one after another."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling  # lazy: only under pytest-xdist

    class FilesAndCpuBound(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "cpu-bound" if path.startswith(CPU_BOUND) else path

    return FilesAndCpuBound(config, log)


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
