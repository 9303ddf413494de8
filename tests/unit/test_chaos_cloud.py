"""The cloud in the chaos campaign: the cloud kinds in the schedule (drawn
only with --cloud, every other schedule unchanged), --faults with and
without --cloud, and check X made to fail. The campaign itself runs in
tests/cluster/test_chaos.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer

from tools.chaos import ChaosError
from tools.chaos.campaign import Campaign
from tools.chaos.checks import CHECKS, Reading, check_cloud
from tools.chaos.schedule import (
    ALL_KINDS,
    CLOUD_KINDS,
    EVERY_KIND,
    HUB_KINDS,
    KINDS,
    LAZY_KINDS,
    make_schedule,
    power_cut_schedule,
)
from tools.cli.chaos import _kinds

pytestmark = pytest.mark.unit

# sha256 of the schedules (to_json, 100 seeds of 300 s, 3 hubs, 10 devices)
# computed before the cloud kinds existed: a seed without them must keep its
# schedule, fault for fault and command for command.
_BEFORE = {
    "default": "2a29fb68d3fb709ee58a4c9480efc99039e6298d40de2e7262b6d607fdf45cef",
    "all": "062cc4587f6c30fdf7873478a76ee24b5ac6dabe6df14f3bb0b3d736c7eb53be",
    "lazy": "7a274d735842b1a6a54616c9df0de8c70f5dda33cc54b0e979a3815e2a8eb2f4",
    "membership": "dd6c1d6ccf5982ffb3e631d12304af3e1db0533d13ab8c69d424d58b8720eba0",
}
_KIND_SETS = {
    "default": KINDS,
    "all": ALL_KINDS,
    "lazy": KINDS + LAZY_KINDS,
    "membership": ("node_add", "node_drain", "hub_kill"),
}


@pytest.mark.parametrize("name", sorted(_BEFORE))
def test_schedules_without_the_cloud_kinds_are_unchanged(name: str) -> None:
    digest = hashlib.sha256()
    for seed in range(100):
        s = make_schedule(seed, 300, 3, 10, _KIND_SETS[name])
        digest.update(json.dumps(s.to_json(), sort_keys=True).encode())
        assert not s.needs_cloud
    assert digest.hexdigest() == _BEFORE[name]


def test_the_power_cut_run_is_unchanged() -> None:
    digest = hashlib.sha256()
    for seed in range(20):
        digest.update(json.dumps(power_cut_schedule(seed, 5).to_json()).encode())
    assert digest.hexdigest() == (
        "b68c515fb501a4e78a41a8b65e004f7976db2751ecd4933fa3f2c278894e7c2b"
    )


def test_the_cloud_kinds_are_drawn_only_when_asked_for() -> None:
    assert set(CLOUD_KINDS) == {"cloud_kill", "cloud_partition"}
    assert not set(CLOUD_KINDS) & set(ALL_KINDS) and set(CLOUD_KINDS) <= set(EVERY_KIND)
    for seed in range(50):
        for kinds in _KIND_SETS.values():
            assert all(
                f.kind not in CLOUD_KINDS for f in make_schedule(seed, 600, kinds=kinds).faults
            )
    for seed in range(20):
        s = make_schedule(seed, 300, kinds=KINDS + CLOUD_KINDS)
        assert s.needs_cloud
        # The first faults are every kind once, the cloud's included.
        assert sorted(f.kind for f in s.faults[:8]) == sorted(KINDS + CLOUD_KINDS), seed


def test_a_cloud_fault_has_no_hub_role_and_no_device() -> None:
    s = make_schedule(7, 600, hubs=3, devices=4, kinds=("hub_kill", *CLOUD_KINDS))
    cloud = [f for f in s.faults if f.kind in CLOUD_KINDS]
    assert {f.kind for f in cloud} == set(CLOUD_KINDS)
    for f in cloud:
        assert f.kind not in HUB_KINDS and f.role is None and f.device == -1
        lo, hi = (3.0, 8.0) if f.kind == "cloud_kill" else (4.0, 10.0)
        assert lo <= f.hold_s <= hi
        assert f.describe() == f"{f.at_s:g} s {f.kind} pick {f.pick} hold {f.hold_s:g} s"
    kills = [f for f in s.faults if f.kind == "hub_kill"]
    assert kills and all(f.role in ("leader", "follower") for f in kills)


def test_a_campaign_without_a_cloud_refuses_the_cloud_kinds(tmp_path: Path) -> None:
    plan = make_schedule(1, 60, kinds=("hub_kill", "cloud_kill"))
    with pytest.raises(ChaosError, match="need a cloud"):
        Campaign(plan, tmp_path, use_netns=False)
    Campaign(plan, tmp_path, use_netns=False, cloud_nodes=1)  # with one: accepted


def test_faults_option_with_and_without_cloud(capsys: pytest.CaptureFixture[str]) -> None:
    assert _kinds(None) == KINDS
    assert _kinds(None, cloud=True) == KINDS + CLOUD_KINDS
    assert _kinds("all") == ALL_KINDS
    assert _kinds("all", cloud=True) == ALL_KINDS + CLOUD_KINDS
    assert _kinds("cloud_kill, hub_kill", cloud=True) == ("cloud_kill", "hub_kill")
    with pytest.raises(typer.Exit):
        _kinds("cloud_partition,hub_kill")  # no --cloud
    assert "cloud_partition needs a cloud: add --cloud" in capsys.readouterr().err
    with pytest.raises(typer.Exit):
        _kinds("cloud_nap", cloud=True)
    assert "unknown ['cloud_nap']" in capsys.readouterr().err


# -- check X ------------------------------------------------------------------------------


def _r(seq: int, value: float = 0.0) -> Reading:
    sample, sensor = divmod(seq - 1, 3)
    return Reading(seq, 1_763_700_000_000 + 100 * sample, sensor, value or 230.5 + seq)


def _hubs(*seqs: int) -> dict[str, dict[str, list[Reading]]]:
    """Three nodes that store the same readings of plug-01."""
    return {node: {"plug-01": [_r(s) for s in seqs]} for node in ("hub-1", "hub-2", "hub-3")}


def test_check_x_holds_when_the_cloud_has_every_stored_reading_once() -> None:
    assert "X" in CHECKS
    res = check_cloud(_hubs(*range(1, 31)), {"plug-01": [_r(s) for s in range(1, 31)]}, 0.4)
    assert res.violations == []
    assert (res.readings, res.lost, res.duplicates, res.differ, res.unknown) == (30, 0, 0, 0, 0)


def test_check_x_reports_a_missing_and_a_duplicated_reading() -> None:
    # As the stream read back would give them: seq 7 never exported, seq 12
    # exported twice (a resend the de-duplication did not catch).
    in_cloud = [_r(s) for s in range(1, 31) if s != 7] + [_r(12)]
    res = check_cloud(_hubs(*range(1, 31)), {"plug-01": in_cloud}, 1.5)
    assert (res.readings, res.lost, res.duplicates) == (29, 1, 1)
    details = sorted(v["detail"] for v in res.violations)
    assert [v["check"] for v in res.violations] == ["X", "X"]
    assert all(v["device"] == "plug-01" for v in res.violations)
    assert details == [
        "1 readings in the cloud more than once: seq 12",
        "1 readings stored on the hubs but not in the cloud (of 30 stored): seq 7",
    ]


def test_check_x_reports_readings_the_hubs_do_not_store_or_store_otherwise() -> None:
    in_cloud = [_r(s) for s in range(1, 10)] + [_r(10, value=1.25), _r(44)]
    res = check_cloud(_hubs(*range(1, 11)), {"plug-01": in_cloud}, 0.2)
    assert (res.lost, res.duplicates, res.differ, res.unknown) == (0, 0, 1, 1)
    assert sorted(v["detail"] for v in res.violations) == [
        "1 readings in the cloud but stored on no hub: seq 44",
        "1 readings in the cloud otherwise than the hubs store them: seq 10",
    ]


def test_check_x_counts_a_reading_one_node_stores_and_an_export_that_never_caught_up() -> None:
    stored = _hubs(1, 2, 3)
    stored["hub-3"]["plug-01"].append(_r(4))  # a reading only one node holds (L's concern)
    stored["hub-3"]["plug-02"] = [_r(1)]
    res = check_cloud(stored, {"plug-01": [_r(1), _r(2), _r(3)]}, None, 120.0)
    assert res.lost == 2
    assert [v["detail"] for v in res.violations] == [
        "the cloud export did not catch up within 120 s",
        "1 readings stored on the hubs but not in the cloud (of 4 stored): seq 4",
        "1 readings stored on the hubs but not in the cloud (of 1 stored): seq 1",
    ]
