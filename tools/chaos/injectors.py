"""The fault kinds of a chaos campaign: how each is done to a running fleet,
and how it is undone.

    injector = Injector(fleet, send_command)
    heal = injector.inject(fault, target, event)  # target: the hub's or the device's index
    ...                                           # the fault's hold
    if heal is not None:
        heal()

    hub_kill           kill -9 of the hub (its Mosquitto dies with it); healed by
                       starting it again
    hub_pause          SIGSTOP of the hub; healed by SIGCONT
    partition          the host side of the hub's veth down, so that nothing
                       reaches the hub's namespace (tools/chaos/netns.py); without
                       namespaces, SIGSTOP of the hub and its Mosquitto. Healed
                       by the link going up, or SIGCONT
    broker_kill        kill -9 of the hub's Mosquitto (its pid from /v1/status);
                       nothing to undo: the hub restarts it
    device_power_cut   SIGKILL of the device, some of them a few ms after a
                       command to it was accepted; healed by starting it again
    clock_jump         the device's clock moves (clock.jump in its data
                       directory, tools/mpy/chaos_device.py); nothing to undo:
                       the device resyncs from the next commit-ack
    power_cut          SIGKILL of every hub and its Mosquitto at once, then
                       every write no sync made durable dropped from the
                       lazy file system their data is on (tools/lab/lazyfs.py);
                       healed by starting every hub again
    disk_full          the lazy file system answers ENOSPC to anything that
                       grows a file or adds a name, under one hub's data
                       directory or every hub's; healed by answering again
    node_drain         the hub drained through another hub's API; healed by
                       undraining it
    node_add           the spare node joins: POST /v1/cluster/nodes through a
                       member's API, then started (`aiot cluster add-node`,
                       then `aiot hub run`); it stays, nothing to heal. If an
                       earlier node_add joined it, it leaves first: stopped
                       (SIGTERM) and removed (DELETE /v1/cluster/nodes/...,
                       which also removes its node record); it keeps its data
                       and rejoins as a node that was away
    cloud_kill         kill -9 of one cloud server (tools/chaos/cloud.py);
                       healed by starting it again (it rejoins the cluster)
    cloud_partition    the proxies the site reaches the cloud through stop:
                       every hub's link and connection to the cloud is gone;
                       healed by starting them again on the same ports

What an injection did beyond its kind (the broker's pid, the command's delay,
the jump) goes into the fault's event.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from tools.base.errors import ToolError
from tools.base.hubclient import HubClient, HubError
from tools.chaos.cloud import ChaosCloud, export_status
from tools.chaos.fleet import ChaosCluster, Fleet
from tools.chaos.schedule import Fault
from tools.chaos.votes import parse_votes
from tools.lab.cluster import ClusterError
from tools.lab.lazyfs import LazyMount

Heal = Callable[[], None]

# Kinds whose recovery is measured from the heal (the device's restart), not
# from the injection: a device that is off samples nothing.
MEASURED_FROM_HEAL: Final = frozenset({"device_power_cut"})
# Kinds after which the hub (every hub, for power_cut) must become ready again (check R).
NEEDS_READY: Final = frozenset({"hub_kill", "hub_pause", "partition", "power_cut", "node_add"})
ALL_HUBS: Final = -1  # the target of a fault on every hub
FIRST_BACK_S: Final = 10.0  # power_cut: the others start at the latest this long after the first
MEMBERSHIP_TRY_S: Final = 20.0  # node_add: how long a refused membership change is retried


class Skipped(Exception):
    """A fault that could not start; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SendCommand(Protocol):
    """Post relay.set for ``device`` through hub ``via``'s API and record it;
    True if the API accepted it."""

    def __call__(self, via: int, device: str, on: bool, deadline_s: float, fault: int) -> bool: ...


class Injector:
    """Does the faults of a schedule to one fleet."""

    def __init__(
        self, fleet: Fleet, send_command: SendCommand, cloud: ChaosCloud | None = None
    ) -> None:
        self.fleet = fleet
        self.send_command = send_command
        self.cloud = cloud
        self._kinds: dict[str, Callable[[Fault, int, dict[str, Any]], Heal | None]] = {
            "hub_kill": self._kill_hub,
            "hub_pause": self._pause_hub,
            "partition": self._cut_off,
            "broker_kill": self._kill_broker,
            "device_power_cut": self._cut_power,
            "clock_jump": self._jump_clock,
            "power_cut": self._cut_all_power,
            "disk_full": self._fill_disk,
            "node_drain": self._drain_hub,
            "node_add": self._add_node,
            "cloud_kill": self._kill_cloud_server,
            "cloud_partition": self._cut_cloud,
        }

    def inject(self, f: Fault, target: int, ev: dict[str, Any]) -> Heal | None:
        """Start fault ``f`` on ``target`` (a hub's index for hub kinds, else a
        device's); what undoes it after the hold (None: nothing does). Raises
        Skipped if it cannot start."""
        return self._kinds[f.kind](f, target, ev)

    # -- hubs

    def _kill_hub(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        cluster = self.fleet.cluster
        return _taken(i, self.fleet.down_hubs, cluster.kill, cluster.start_node)

    def _pause_hub(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        cluster = self.fleet.cluster
        return _taken(i, self.fleet.frozen_hubs, cluster.pause, cluster.resume)

    def _cut_off(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        fleet = self.fleet
        if fleet.netns is not None:
            return _taken(i, fleet.frozen_hubs, fleet.netns.cut, fleet.netns.heal)
        # Without namespaces: the hub and its broker stop answering anyone.
        fleet.frozen_hubs.add(i)
        broker = fleet.broker_pid(i)
        fleet.cluster.pause(i)
        if broker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker, signal.SIGSTOP)
                fleet.stopped_brokers.add(broker)

        def heal_stop() -> None:
            if broker:
                fleet.stopped_brokers.discard(broker)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(broker, signal.SIGCONT)
            fleet.cluster.resume(i)
            fleet.frozen_hubs.discard(i)

        return heal_stop

    def _kill_broker(self, f: Fault, i: int, ev: dict[str, Any]) -> None:
        pid = self.fleet.broker_pid(i)
        if pid is None:
            raise Skipped(f"{ev['target']} did not say its broker's pid")
        ev["broker_pid"] = pid
        os.kill(pid, signal.SIGKILL)

    def _drain_hub(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        # Drained through another hub's API; back (undrained) after the hold.
        fleet = self.fleet
        cluster = fleet.cluster
        node = cluster.node_id(i)
        via = [j for j in fleet.healthy() if j != i]
        if not via:
            raise Skipped("no other hub answers to drain it through")
        try:
            cluster.client(via[0]).post(f"/v1/cluster/drains/{node}", {})
        except ToolError as exc:  # the last serving node (409), no leader, ...
            raise Skipped(f"drain refused: {exc}") from None
        ev["via"] = cluster.node_id(via[0])

        def undrain() -> None:
            for j in [*via, i]:
                with contextlib.suppress(ToolError):
                    cluster.client(j).delete(f"/v1/cluster/drains/{node}")
                    return

        return undrain

    def _add_node(self, f: Fault, i: int, ev: dict[str, Any]) -> None:
        # Through a member's API (by pick); the node stays once it has joined.
        fleet = self.fleet
        cluster = fleet.cluster
        via = [j for j in fleet.healthy() if j != i]
        if not via:
            raise Skipped("no member answers to add the node through")
        j = via[f.pick % len(via)]
        ev["via"] = cluster.node_id(j)
        address = cluster.raft_address(i)
        if i not in fleet.outside:
            ev["rejoin"] = True
            fleet.outside.add(i)  # from now on its exit is no crash
            with contextlib.suppress(ClusterError):  # killed when it does not stop
                cluster.stop_node(i)
            err = _membership(cluster.client(j), "delete", address)
            if err:
                fleet.outside.discard(i)
                cluster.start_node(i)
                raise Skipped(f"removing {ev['target']} was refused: {err}")
        err = _membership(cluster.client(j), "post", address)
        if err:
            raise Skipped(f"adding {ev['target']} was refused: {err}")
        cluster.start_node(i)
        fleet.outside.discard(i)

    # -- the cloud

    def _cloud(self) -> ChaosCloud:
        if self.cloud is None:
            raise Skipped("the campaign runs no cloud (aiot chaos --cloud)")
        return self.cloud

    def _kill_cloud_server(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        cloud = self._cloud()
        cloud.kill(i)

        def heal() -> None:
            ev["export_at_heal"] = _export_line(self.fleet)
            ev["cloud_ready_s"] = cloud.start(i)

        return heal

    def _cut_cloud(self, f: Fault, _target: int, ev: dict[str, Any]) -> Heal:
        cloud = self._cloud()
        cloud.cut()

        def heal() -> None:
            ev["export_at_heal"] = _export_line(self.fleet)
            cloud.heal()

        return heal

    # -- the hubs' disks (a lazy file system)

    def _lazy(self) -> LazyMount:
        lazy = self.fleet.cluster.lazy
        if lazy is None:
            raise Skipped("the hubs' data is not on a lazy file system (tools/lab/lazyfs.py)")
        return lazy

    def _cut_all_power(self, f: Fault, _target: int, ev: dict[str, Any]) -> Heal:
        fleet, lazy = self.fleet, self._lazy()
        cluster = fleet.cluster
        first = _first_back(cluster, fleet.members(), fleet.leader(), f.pick)
        ev["first_back"] = cluster.node_id(first)
        members = fleet.members()
        pids = [pid for i in members for pid in fleet.family(i)]
        fleet.down_hubs.update(members)
        for pid in pids:  # all at once, before waiting for any
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for i in members:
            cluster.kill(i)  # reaps it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_exists(pid) for pid in pids):
            time.sleep(0.02)
        ev["undone"] = lazy.cut()

        def heal() -> None:
            # The power comes back to one follower of the cut first, the
            # others once it is up (or FIRST_BACK_S passed). Its election
            # timer has run out by the time a peer answers (pysyncobj stands
            # for election only once connected to someone), so it is the
            # first candidate: a node that forgot its term votes for itself
            # in a term it has voted in already, and check V sees it.
            up = _up_logged(cluster, first)
            cluster.start_node(first)
            deadline = time.monotonic() + FIRST_BACK_S
            while time.monotonic() < deadline and cluster.alive(first):
                if _up_logged(cluster, first) > up:
                    break
                time.sleep(0.05)
            for i in members:
                if i != first:
                    cluster.start_node(i)
            fleet.down_hubs.clear()

        return heal

    def _fill_disk(self, f: Fault, i: int, ev: dict[str, Any]) -> Heal:
        lazy = self._lazy()
        prefix = "" if i == ALL_HUBS else self.fleet.cluster.node_id(i)
        before = int(lazy.ask("stats")["enospc"])
        lazy.full(prefix)

        def heal() -> None:
            lazy.unfull()
            ev["enospc_answers"] = int(lazy.ask("stats")["enospc"]) - before

        return heal

    # -- devices

    def _cut_power(self, f: Fault, k: int, ev: dict[str, Any]) -> Heal:
        fleet = self.fleet
        if f.command_kill_ms >= 0:
            healthy = fleet.healthy()
            via = healthy[f.pick % len(healthy)]
            on = bool(f.pick & 1)
            if self.send_command(via, fleet.ids[k], on, 30.0, f.n):
                time.sleep(f.command_kill_ms / 1000)
            ev["command_kill_ms"] = f.command_kill_ms
        devices = fleet.devices
        return _taken(
            k, fleet.off_devices, lambda k: devices[k].kill(), lambda k: devices[k].start()
        )

    def _jump_clock(self, f: Fault, k: int, ev: dict[str, Any]) -> None:
        ev["jump_ms"] = f.jump_ms
        data = Path(self.fleet.devices[k].config["data_dir"])
        tmp = data / "clock.jump.tmp"
        tmp.write_text(str(f.jump_ms))
        tmp.rename(data / "clock.jump")
        deadline = time.monotonic() + 5
        while (data / "clock.jump").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _membership(client: HubClient, method: str, address: str) -> str:
    """Add ("post") or remove ("delete") the Raft member ``address`` through
    ``client``'s node, retried while it is refused for a while (no leader,
    another change not committed yet, a timeout that may or may not have
    applied): "" once done (or already so), else the last refusal."""
    deadline = time.monotonic() + MEMBERSHIP_TRY_S
    while True:
        try:
            if method == "post":
                client.post("/v1/cluster/nodes", {"raft": address})
            else:
                client.delete(f"/v1/cluster/nodes/{address}")
            return ""
        except HubError as exc:
            # "already a member" (409) to an add, "not a member" (404) to a removal: done.
            if "already a member" in str(exc) if method == "post" else exc.status == 404:
                return ""
            if exc.status == 422 or time.monotonic() > deadline:
                return str(exc)[:200]
        time.sleep(0.5)


def _export_line(fleet: Fleet) -> str:
    """The leader's export as the fault ends: 'connected' or its error."""
    x = export_status(fleet)
    if x is None:
        return "no leader answered"
    if x.get("error"):
        return f"error: {str(x['error'])[:120]}"
    return "connected" if x.get("connected") else "not connected"


def _first_back(cluster: ChaosCluster, members: list[int], leader: int | None, pick: int) -> int:
    """Which hub gets power back first after a cut: a follower whose first
    recorded vote went to another node, if there is one (the worst case: if
    it forgot its term, it stands for election in a term it has already
    voted in, and votes for itself), else a follower by ``pick``."""
    followers = [i for i in members if i != leader]
    worst = []
    for i in followers:
        with contextlib.suppress(OSError):
            votes = parse_votes(cluster.log_path(i).read_text(errors="replace"))
            own = f"{cluster.host(i)}:{cluster.ports[i].raft}"
            if votes and min(votes)[1] != own:
                worst.append(i)
    pool = worst or followers
    return pool[pick % len(pool)]


def _up_logged(cluster: ChaosCluster, i: int) -> int:
    """How many times hub i's log says it is up (hub/daemon.py: "hub hub-1 up: raft ...")."""
    try:
        text = cluster.log_path(i).read_text(errors="replace")
    except OSError:
        return 0
    return text.count(f"hub {cluster.node_id(i)} up: ")


def _exists(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie that init has not reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _taken(
    i: int, marks: set[int], do: Callable[[int], object], undo: Callable[[int], object]
) -> Heal:
    """Mark ``i`` as taken down by the campaign (in ``marks``, so that it is
    not taken for a crash) and ``do(i)``; the heal does ``undo(i)`` and
    clears the mark."""
    marks.add(i)
    do(i)

    def heal() -> None:
        undo(i)
        marks.discard(i)

    return heal
