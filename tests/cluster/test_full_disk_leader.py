"""The leader's disk fills up: it must not hold the cluster.

Three `aiot hub run` processes, each with its data directory on a lazy FUSE
file system of its own (tools/lab/lazyfs.py), so that one node's full disk
is that node's alone, its free space included; MicroPython plugs ingest
throughout. The leader's file system answers ENOSPC: its journal write
waits for room, and before it waits the leader steps down
(hub/state/journal.py, DurableSyncObj). The other two elect a leader and
readings keep being acknowledged while the old leader's disk stays full.
Once there is room, the old leader catches up: every acknowledged reading
is stored once on every node, the content hashes agree, no node halted and
no node voted twice in one term."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.hubs import assert_exactly_once, need_mosquitto, provision
from tests.device import Device
from tests.support import micropython, wait_until
from tools.chaos.votes import check_votes, parse_votes
from tools.lab.cluster import LocalCluster
from tools.lab.lazyfs import LazyMount, mount_available

pytestmark = [pytest.mark.cluster, pytest.mark.micropython]

PLUGS = ("plug-0", "plug-1", "plug-2")
MORE_ACKED = 300  # readings of each plug acknowledged while the old leader's disk is full


class OwnDisks(LocalCluster):
    """A LocalCluster whose node i keeps its data on ``mounts[i]`` and its
    log outside it."""

    def __init__(self, root: Path, mounts: list[LazyMount]) -> None:
        super().__init__(root, len(mounts))
        self.mounts = mounts
        for i, path in enumerate(self.configs):
            node = self.node_id(i)
            path.write_text(
                path.read_text().replace(
                    f'data_dir = "{node}"\n', f'data_dir = "{mounts[i].mountpoint}"\n'
                )
            )

    def data_dir(self, i: int) -> Path:
        return self.mounts[i].mountpoint

    def log_path(self, i: int) -> Path:
        return self.root / f"{self.node_id(i)}.log"


@contextlib.contextmanager
def own_disks(tmp_path: Path) -> Iterator[OwnDisks]:
    need_mosquitto()
    micropython()
    missing = mount_available()
    if missing is not None:
        pytest.skip(f"no lazy file system here: {missing}")
    with contextlib.ExitStack() as stack:
        mounts = []
        for i in range(3):
            m = LazyMount(tmp_path / f"disk-{i + 1}", tmp_path / f"mnt-{i + 1}")
            mounts.append(stack.enter_context(m))
        cluster = stack.enter_context(OwnDisks(tmp_path / "cluster", mounts))
        try:
            cluster.start(90)
            yield cluster
        except BaseException:
            for i in range(cluster.n):
                print(f"--- {cluster.node_id(i)} ---\n{cluster.tail(i, 40)}")
            raise
        finally:
            cluster.stop()  # before the file systems go


def _raft(cluster: OwnDisks, i: int) -> dict[str, Any]:
    out: dict[str, Any] = cluster.status(i)["raft"]
    return out


def _leader_of(cluster: OwnDisks, i: int) -> str | None:
    health = cluster.health(i)
    return None if health is None else health["leader"]


def _watermarks(cluster: OwnDisks, i: int) -> dict[str, int]:
    return {d: cluster.client(i).get(f"/v1/devices/{d}")["watermark"] for d in PLUGS}


def _acked_on(cluster: OwnDisks, i: int) -> int:
    return sum(_watermarks(cluster, i).values())


def test_a_leader_with_a_full_disk_steps_down_and_the_others_keep_committing(
    tmp_path: Path,
) -> None:
    with own_disks(tmp_path) as cluster:
        plugs: list[Device] = [provision(cluster, tmp_path, d) for d in PLUGS]
        for p in plugs:
            p.start()
        try:
            old = cluster.leader()
            wait_until(lambda: _acked_on(cluster, old) > 0, 60, "readings acknowledged")
            old_addr = _leader_of(cluster, old)
            others = [i for i in range(cluster.n) if i != old]
            enospc0 = cluster.mounts[old].ask("stats")["enospc"]
            cluster.mounts[old].full("")

            # The others elect one of them; the old leader stepped down.
            def new_leader() -> bool:
                seen = {_leader_of(cluster, i) for i in others}
                return len(seen) == 1 and None not in seen and old_addr not in seen

            wait_until(new_leader, 30, "a leader elected among the nodes with room")
            raft = _raft(cluster, old)
            assert raft["is_leader"] is False and raft["leader"] != old_addr, raft
            # It stepped down once, when its journal or its store first found no room.
            assert raft["disk_full_step_downs"] == 1, raft
            wait_until(
                lambda: cluster.status(old)["store"]["refusing"].startswith("disk nearly full"),
                10,
                "the old leader's ingest refusing",
            )
            assert cluster.mounts[old].ask("stats")["enospc"] > enospc0

            # Readings keep being acknowledged while the old leader's disk is
            # full, from every plug: those on its broker, which refuses them
            # (no room), move to another hub.
            new = next(i for i in others if _raft(cluster, i)["is_leader"])
            base = _watermarks(cluster, new)
            wait_until(
                lambda: all(
                    w >= base[d] + MORE_ACKED for d, w in _watermarks(cluster, new).items()
                ),
                60,
                "readings of every plug acknowledged with the old leader's disk full",
            )
            behind = _acked_on(cluster, old)
            assert behind < _acked_on(cluster, new)  # it stored none of them

            cluster.mounts[old].unfull()
            wait_until(
                lambda: _acked_on(cluster, old) > behind + MORE_ACKED,
                60,
                "the old leader catching up",
            )
        finally:
            acked = {p.config["device_id"]: p.interrupt()["watermark"] for p in plugs}
        print(f"acknowledged {acked}")
        assert all(w > 0 for w in acked.values()), acked
        assert_exactly_once(cluster, acked)
        votes = {}
        for i in range(cluster.n):
            assert _raft(cluster, i)["halted"] == ""
            votes[cluster.node_id(i)] = parse_votes(cluster.log_path(i).read_text())
        assert check_votes(votes) == (0, [])
