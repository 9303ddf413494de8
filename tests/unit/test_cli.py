"""`aiot` lists only commands that work, and each one does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from protocol import wire
from protocol.golden import CASES, TEST_KEY, VECTORS
from tools.base.errors import ToolError
from tools.base.hubclient import HubError
from tools.base.ports import free_port
from tools.cli import app
from tools.demo.energy import DemoError
from tools.firmware.build import BuildError
from tools.firmware.flash import FlashError
from tools.firmware.ota import OtaError
from tools.firmware.virtual import VirtualBoardError
from tools.lab.cluster import ClusterError
from tools.lab.mosquitto import BrokerError
from tools.ml.anomaly_train import TrainError

pytestmark = pytest.mark.unit


def aiot(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        input=stdin.decode("latin-1") if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def without_hub_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in ("AIOT_CONFIG", "AIOT_HUB", "AIOT_TOKEN")
    }


def test_importing_the_cli_loads_neither_the_web_stack_nor_the_daemon() -> None:
    # `aiot hub run` is the one command that needs them; every other command
    # (and `aiot --help`) starts without loading them.
    code = (
        "import sys, tools.cli; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'hub.daemon', 'hub.http') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "error",
    [
        HubError,
        BrokerError,
        ClusterError,
        DemoError,
        BuildError,
        FlashError,
        OtaError,
        VirtualBoardError,
        TrainError,
    ],
)
def test_the_errors_commands_report_in_one_line_are_tool_errors(error: type[Exception]) -> None:
    # tools/cli/output.py's reported() turns a ToolError into `aiot: ...` and
    # an exit status; one that is not a ToolError would be a traceback.
    assert issubclass(error, ToolError)


def test_commands_on_a_hub_take_the_hub_options_after_their_own_and_before_json() -> None:
    root: Any = get_command(app)

    def options(group: str, name: str) -> list[str]:
        return [p.name for p in root.get_command(None, group).get_command(None, name).params]

    assert options("device", "list") == ["config", "hub", "token", "json_out"]
    assert options("device", "remove") == ["device_id", "config", "hub", "token"]
    assert options("decisions", "list") == ["device", "limit", "config", "hub", "token", "json_out"]


def test_hub_commands_exit_2_without_a_hub_and_1_when_it_does_not_answer() -> None:
    env = without_hub_env()
    for args in (("device", "list"), ("backup", "/nonexistent/backup")):
        out = aiot(*args, env=env)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("aiot: which hub?") and "Traceback" not in out.stderr
    out = aiot(
        "device", "list", "--hub", f"http://127.0.0.1:{free_port()}", "--token", "t", env=env
    )
    assert out.returncode == 1
    assert out.stderr.startswith("aiot: hub at http://127.0.0.1:") and "not reachable" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def listed_commands(help_text: str) -> set[str]:
    block = help_text.split("Commands", 1)[1]
    return set(re.findall(r"^│ (\w[\w-]*) ", block, flags=re.M))


def test_help_lists_exactly_the_working_groups() -> None:
    out = aiot("--help")
    assert out.returncode == 0
    assert listed_commands(out.stdout) == {
        "bench",
        "protocol",
        "hub",
        "device",
        "command",
        "cluster",
        "query",
        "user",
        "token",
        "demo",
        "decisions",
        "alerts",
        "ask",
        "models",
        "policy",
        "eval",
        "backup",
        "restore",
        "firmware",
        "chaos",
        "cloud",
        "overview",
        "inbox",
        "reply",
    }
    assert listed_commands(aiot("user", "--help").stdout) == {"add", "list", "remove", "invite"}
    assert listed_commands(aiot("cloud", "--help").stdout) == {
        "up",
        "down",
        "status",
        "add-site",
        "leaf-config",
        "push-model",
        "push-rules",
        "sites",
        "query",
        "events",
    }
    assert listed_commands(aiot("hub", "--help").stdout) == {"run", "install-service"}
    assert listed_commands(aiot("device", "--help").stdout) == {
        "add",
        "list",
        "show",
        "remove",
        "run",
    }
    assert listed_commands(aiot("command", "--help").stdout) == {"send", "list", "show"}
    assert listed_commands(aiot("token", "--help").stdout) == {"create", "revoke", "revoked"}
    assert listed_commands(aiot("cluster", "--help").stdout) == {
        "init",
        "cert",
        "status",
        "add-node",
        "remove-node",
        "drain",
        "undrain",
    }
    assert listed_commands(aiot("bench", "--help").stdout) == {
        "codec",
        "edge",
        "ingest",
        "failover",
        "flood",
        "decide",
        "soak",
        "cloud",
        "all",
    }
    assert listed_commands(aiot("protocol", "--help").stdout) == {"decode", "walkthrough"}


def test_decode_prints_json_for_an_envelope() -> None:
    out = aiot("protocol", "decode", str(VECTORS / "command-edge.bin"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["payload_type"] == "Command"
    assert doc["payload"]["params"][3]["text_value"] == "power over the limit for 10 s"


def test_decode_verifies_a_signed_frame_from_stdin_hex(tmp_path: Path) -> None:
    frame = wire.seal(wire.encode(CASES["commit_ack"]), TEST_KEY)
    out = aiot(
        "protocol", "decode", "-", "--hex", "--key", TEST_KEY.hex(), stdin=frame.hex().encode()
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["payload"]["watermark"] == 1056


def test_decode_rejects_a_bad_hmac_with_one_clear_line(tmp_path: Path) -> None:
    frame = wire.seal(wire.encode(CASES["commit_ack"]), bytes(32))
    path = tmp_path / "f.bin"
    path.write_bytes(frame)
    out = aiot("protocol", "decode", str(path), "--key", TEST_KEY.hex())
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "aiot: not a valid aiot v1 message: bad_hmac: trailer does not match the device key"
    )
    assert "Traceback" not in out.stderr


def test_decode_rejects_garbage_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"\x00" * 40)
    out = aiot("protocol", "decode", str(path))
    assert out.returncode == 1 and "wrong_root" in out.stderr
    out = aiot("protocol", "decode", str(tmp_path / "missing.bin"))
    assert out.returncode == 2 and "cannot read" in out.stderr
    out = aiot("protocol", "decode", str(path), "--key", "zz")
    assert out.returncode == 2 and "--key must be hex" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.bench
@pytest.mark.micropython
def test_bench_codec_json_has_the_promised_keys() -> None:
    out = aiot("bench", "codec", "--json", "--seconds", "0.2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    for key in (
        "batch_readings",
        "bytes_per_reading",
        "edge_encode_per_s_micropython",
        "official_encode_per_s_cpython",
        "ratio",
    ):
        assert key in doc
    assert doc["batch_readings"] == 32
    assert doc["bytes_per_reading"] == doc["frame_bytes_edge"] / 32 <= 12
    assert doc["edge_encode_per_s_micropython"] > 0 and doc["official_encode_per_s_cpython"] > 0
    want = doc["edge_encode_per_s_micropython"] / doc["official_encode_per_s_cpython"]
    assert doc["ratio"] == pytest.approx(want, rel=1e-3)
