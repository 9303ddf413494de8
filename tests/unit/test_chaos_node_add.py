"""The chaos fault node_add in the schedule, and the spare node's config
(tools/chaos/schedule.py, tools/chaos/fleet.py). The campaign itself runs in
tests/cluster/test_chaos.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.core import config as hub_config
from tools.chaos.fleet import ChaosCluster
from tools.chaos.schedule import (
    ALL_KINDS,
    HUB_KINDS,
    KINDS,
    LAZY_KINDS,
    MEMBERSHIP_KINDS,
    make_schedule,
)

pytestmark = pytest.mark.unit


def test_node_add_is_drawn_only_when_asked_for() -> None:
    assert "node_add" in MEMBERSHIP_KINDS and "node_add" in ALL_KINDS
    assert "node_add" not in KINDS
    others = (KINDS, KINDS + LAZY_KINDS, ("node_drain", "hub_kill"))
    for seed in range(20):
        for kinds in others:
            s = make_schedule(seed, 600, kinds=kinds)
            assert all(f.kind != "node_add" for f in s.faults)
            assert s.spares == 0
    for seed in range(20):
        s = make_schedule(seed, 300, kinds=ALL_KINDS)
        assert any(f.kind == "node_add" for f in s.faults), seed
        assert s.spares == 1


def test_a_node_add_fault_targets_the_spare_and_has_nothing_to_heal() -> None:
    s = make_schedule(5, 300, hubs=3, devices=4, kinds=("node_add", "hub_kill"))
    adds = [f for f in s.faults if f.kind == "node_add"]
    assert len(adds) >= 2
    for f in adds:
        assert f.role is None and f.device == -1 and f.hold_s == 0
        assert "node_add" not in HUB_KINDS
        assert f.describe() == f"{f.at_s:g} s node_add pick {f.pick}"
    # The other kinds of the same schedule are drawn as always.
    kills = [f for f in s.faults if f.kind == "hub_kill"]
    assert kills and all(f.role in ("leader", "follower") and 2 <= f.hold_s <= 5 for f in kills)


def test_a_short_schedule_without_a_node_add_needs_no_spare() -> None:
    # node_add asked for but not drawn: the campaign runs no spare node.
    s = make_schedule(0, 12, kinds=("hub_kill", "node_add"))
    assert [f.kind for f in s.faults] == ["hub_kill"]
    assert s.spares == 0


def _peers(path: Path) -> list[str]:
    return [str(a) for a in hub_config.load(path).raft.peers]


def test_the_spare_is_no_peer_of_the_others_but_knows_them(tmp_path: Path) -> None:
    cluster = ChaosCluster(tmp_path, 4, None, spares=1)
    assert cluster.spares == [3]
    addresses = [cluster.raft_address(i) for i in range(4)]
    for i in range(3):
        assert sorted(_peers(cluster.configs[i])) == sorted(
            a for j, a in enumerate(addresses[:3]) if j != i
        )
    assert sorted(_peers(cluster.configs[3])) == sorted(addresses[:3])
    # Without spares every node names every other, as LocalCluster writes them.
    plain = ChaosCluster(tmp_path / "plain", 3, None)
    assert plain.spares == []
    assert all(len(_peers(c)) == 2 for c in plain.configs)
