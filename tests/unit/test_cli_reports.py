"""What `aiot` says without a cluster: options of the other form refused
before any request, and a command's record shown with the clock of each time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.http.serializers import ledger_json
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m
from tests.support import ROOT, free_port
from tools.cli import command

pytestmark = pytest.mark.unit
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
T0 = 1_763_700_000_000


def aiot(*args: str) -> subprocess.CompletedProcess[str]:
    # A hub that is not there: a command that reaches it fails with status 1.
    hub = ("--hub", f"http://127.0.0.1:{free_port()}", "--token", "t")
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args, *hub],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIOT_")},
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            ("--day", "2026-01-01"),
            "aiot: --day goes with --hourly; for readings give --from and --to",
        ),
        (("--hourly", "--from", "0"), "aiot: --from is for readings, not --hourly"),
        (("--hourly", "--to", "2026-01-02"), "aiot: --to is for readings, not --hourly"),
        (("--hourly", "--sensor", "1"), "aiot: --sensor is for readings, not --hourly"),
    ],
)
def test_query_refuses_options_of_the_other_form(args: tuple[str, ...], problem: str) -> None:
    out = aiot("query", "plug-1", *args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(problem) and len(out.stderr.splitlines()) == 1


def test_command_show_names_the_clock_of_each_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issued by hub-1, sent and answered through hub-2; the device's clock
    # runs 51 ms behind: it executed "before" it was issued.
    entries = [
        e.RegisterDevice(e.Device("plug-1", b"k" * 32, (RELAY,), 2000.0), 1),
        e.PutCommand("c-1", "plug-1", 3, "relay.set", (m.Param("on", False),), T0, T0 + 60_000),
        e.MarkCommand("c-1", e.LedgerState.SENT, "hub-2", T0 + 5),
        e.RecordResult(
            m.CommandResult(
                "c-1", "plug-1", 1, m.CommandStatus.DONE, detail="relay off", executed_at_ms=T0 - 11
            ),
            "hub-2",
            T0 + 40,
        ),
    ]
    with Store(tmp_path / "s") as s:
        s.apply([(i + 1, e.encode(x)) for i, x in enumerate(entries)])
        rec = s.command("c-1")
    assert rec is not None
    command.print_command(ledger_json(rec))
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        " command  c-1",
        "  device  plug-1 (seq 1, term 3)",
        "  action  relay.set on=False",
        "   state  DONE",
        "deadline  2025-11-21 04:41:00.000Z",
    ]
    assert lines[5:] == [
        " history  (hub clock)",
        "          2025-11-21 04:40:00.000Z  PENDING",
        "          2025-11-21 04:40:00.005Z  SENT on hub-2",
        "          2025-11-21 04:40:00.040Z  DONE on hub-2",
        "  result  DONE: relay off; executed at 2025-11-21 04:39:59.989Z by the device's clock, "
        "51 ms before hub-2 recorded the answer",
    ]
