"""Power cuts of every hub at once, on a lazy file system that drops every
write not yet synced (tools/lab/lazyfs.py, docs/chaos.md "Power cuts").

Three `aiot hub run` processes keep their data directories on the lazy file
system; MicroPython plugs ingest throughout and record what was acknowledged.
Each cut is a SIGKILL of every hub and its Mosquitto at once, then the cut of
the file system; the hubs start again and ingest must resume. Afterwards:
every acknowledged reading is on every node, nothing is stored twice, no
command ran twice, the replicas converge, and no node voted for two
candidates in one term (check V, from the vote each hub logs once it is
stored). CI runs a few cuts; `aiot chaos --power-cuts 20` runs the full
twenty. With `durable_journal = false` the same run must show the loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import need_mosquitto
from tests.support import micropython
from tools.chaos import campaign as chaos
from tools.chaos.schedule import (
    ALL_KINDS,
    KINDS,
    LAZY_KINDS,
    make_schedule,
    power_cut_schedule,
)
from tools.chaos.votes import check_votes, parse_votes
from tools.lab.lazyfs import mount_available

CI_SEED = 5
CI_CUTS = 5
DEVICES = 4


def _prereqs() -> None:
    need_mosquitto()
    micropython()
    missing = mount_available()
    if missing is not None:
        pytest.skip(f"no lazy file system here: {missing}")


def _show(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        if key != "schedule":
            print(f"{key}: {value}")


@pytest.mark.cluster
@pytest.mark.micropython
def test_power_cuts_of_every_hub_lose_nothing_acknowledged(tmp_path: Path) -> None:
    _prereqs()
    summary = chaos.run(
        CI_SEED, 0, hubs=3, devices=DEVICES, workdir=tmp_path, power_cuts=CI_CUTS, log=print
    )
    _show(summary)
    assert summary["violations"] == []
    assert summary["faults_injected"] == {"power_cut": CI_CUTS}
    assert summary["lazy_fs"]["cuts"] == CI_CUTS
    # The cuts took something back each time: unsynced writes were there to drop.
    assert summary["lazy_fs"]["files_cut_back"] > 0
    assert summary["readings_acked"] > 0 and summary["readings_lost"] == 0
    assert summary["duplicates_stored"] == 0 and summary["commands_executed_twice"] == 0
    assert summary["converged"] is True
    assert summary["double_votes"] == 0 and summary["votes_recorded"] > 0
    assert all(v is not None for v in summary["max_recovery_s"].values())


@pytest.mark.cluster
@pytest.mark.micropython
def test_without_the_journal_syncs_power_cuts_show_the_loss(tmp_path: Path) -> None:
    """The mutation check: `durable_journal = false`, the same cuts. The
    term and vote and the journal are lost with every cut, so a node votes
    again in a term it already voted in, and acknowledged readings can go
    missing; the checks must say so."""
    _prereqs()
    summary = chaos.run(
        CI_SEED,
        0,
        hubs=3,
        devices=DEVICES,
        workdir=tmp_path,
        power_cuts=1,
        durable_journal=False,
        recovery_limit_s=5.0,
        log=print,
    )
    _show(summary)
    assert summary["durable_journal"] is False
    assert summary["double_votes"] > 0 or summary["readings_lost"] > 0
    checks = {v["check"] for v in summary["violations"]}
    assert "V" in checks or "L" in checks


@pytest.mark.unit
def test_the_power_cut_schedule_and_the_default_kinds() -> None:
    plan = power_cut_schedule(CI_SEED, 20)
    assert len(plan.faults) == 20 and plan.until_done and plan.needs_lazy_fs
    assert {f.kind for f in plan.faults} == {"power_cut"}
    assert {f.role for f in plan.faults} == {"all"}
    # Without asking for them, no schedule draws the lazy kinds, and a seed's
    # schedule is what it was before they existed.
    default = make_schedule(31, 600, 3, 10)
    assert not default.needs_lazy_fs and default.kinds == KINDS
    assert default.faults[0].describe() == "4 s broker_kill leader pick 18178"
    every = make_schedule(31, 600, 3, 10, ALL_KINDS)
    assert {f.kind for f in every.faults[: len(ALL_KINDS)]} == set(ALL_KINDS)
    assert {f.kind for f in every.faults} >= set(LAZY_KINDS) and every.needs_lazy_fs
    with pytest.raises(ValueError, match="unknown"):
        make_schedule(31, 60, 3, 10, ("power_cut", "meteor"))


@pytest.mark.unit
def test_check_v_finds_two_votes_in_one_term() -> None:
    def line(msg: str) -> str:
        return json.dumps({"level": "info", "logger": "hub.raft.journal", "msg": msg})

    log = "\n".join(
        [
            line("raft vote persisted: term 3 for 10.0.0.1:5000"),
            line("raft vote persisted: term 3 for 10.0.0.1:5000"),  # the same vote again
            '{"msg": "not json',
            line("raft vote persisted: term 4 for 10.0.0.2:5000"),
            line("hub hub-1 started"),
        ]
    )
    votes = parse_votes(log)
    assert votes == [(3, "10.0.0.1:5000"), (3, "10.0.0.1:5000"), (4, "10.0.0.2:5000")]
    assert check_votes({"hub-1": votes}) == (0, [])
    again = [*votes, (4, "10.0.0.3:5000")]
    n, violations = check_votes({"hub-1": votes, "hub-2": again})
    assert n == 1
    assert violations == [
        {
            "check": "V",
            "node": "hub-2",
            "detail": "voted in term 4 for 10.0.0.2:5000, 10.0.0.3:5000",
        }
    ]
