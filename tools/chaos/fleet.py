"""The hubs and devices a chaos campaign runs, and what it sees of them.

    fleet = Fleet(workdir, hubs=3, device_ids=["plug-01", ...], netns=None, say=log, now=clock)
    fleet.start_cluster()       # every hub ready, a leader agreed
    fleet.start_devices()       # registered through the API, running, each acknowledged once
    fleet.members()             # the Raft members: every hub but a spare not added yet
    fleet.healthy()             # members the campaign has not taken down, and alive
    fleet.progress()            # each device's committed watermark, as a healthy node sees it
    fleet.check_processes()     # a hub or device that exited by itself: a crash, restarted
    fleet.close()

The hubs are `aiot hub run` processes (tools/lab/cluster.py), each with its own
Mosquitto and, given a Netns, in its own network namespace. The devices run
the firmware on the MicroPython unix port (tools/lab/device.py) through
tools/mpy/chaos_device.py, which keeps each device's history on its "flash"
(its data directory). Which hubs and devices the campaign has taken down is
kept here (``down_hubs``, ``frozen_hubs``, ``off_devices``), so that a fault
the campaign injected is never taken for a crash.

With ``spares`` (node_add), the cluster has that many nodes more than
``hubs``: configured, with every other node as a peer, but not in the other
nodes' peers, not started and not Raft members (``outside``) until a node_add
joins one (tools/chaos/injectors.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from tools.base.hubclient import HubClient, HubError
from tools.base.paths import MPY_SCRIPTS
from tools.chaos import ChaosError
from tools.chaos.checks import READY_LIMIT_S, violation
from tools.chaos.netns import Netns
from tools.lab.cluster import LocalCluster
from tools.lab.device import Device
from tools.lab.lazyfs import LazyMount

DEVICE_MAIN: Final = MPY_SCRIPTS / "chaos_device.py"
# Devices: one sample (3 readings) every 100 ms, a record every 250 ms; acks
# time out after 1.5 s and a silent hub is left after 4 s (tests/cluster/hubs.py
# DEVICE_TUNING, at a tenth of its sampling rate so two cores keep up).
DEVICE_TUNING: Final[dict[str, Any]] = {
    "sample_ms": 100,
    "flush_ms": 250,
    "offline_flush_ms": 1000,
    "status_ms": 2000,
    "keepalive_s": 2,
    "slot_capacity": 256 * 1024,
    "record_bytes": 512,
    "ack_timeout_ms": 1500,
    "failover_after_ms": 4000,
    "return_after_s": 20,
}
ELECTION_MS: Final = (300, 900)
POLL_S: Final = 0.25


def _round(x: float) -> float:
    return round(x, 2)


class ChaosCluster(LocalCluster):
    """A LocalCluster whose nodes run in their own network namespaces (when
    ``netns`` is given), each bound to its namespace's address.

    Given ``lazy`` (a mounted tools/lab/lazyfs.py), every node's data
    directory is on that file system, which a power cut rolls back to what
    was synced; the configs, the TLS files and the logs stay outside it (a
    log is what an observer saw, not what the node's disk kept).
    ``durable_journal=False`` turns the Raft journal's syncs off.

    The last ``spares`` of the ``nodes`` are spare nodes: the others' configs
    do not name them as peers (a node added later, as `aiot cluster
    add-node` adds one), their own configs name every other node.
    ``extra``: TOML tables every config gets (the site's [cloud] table)."""

    def __init__(
        self,
        root: Path,
        nodes: int,
        netns: Netns | None,
        lazy: LazyMount | None = None,
        durable_journal: bool = True,
        spares: int = 0,
        extra: str = "",
    ) -> None:
        hosts = None if netns is None else [netns.ip(i) for i in range(nodes)]
        super().__init__(root, nodes, extra=extra, election_ms=ELECTION_MS, hosts=hosts)
        self.netns = netns
        self.lazy = lazy
        self.spares = list(range(nodes - spares, nodes))
        for i, path in enumerate(self.configs):
            node = self.node_id(i)
            text = path.read_text()
            if spares and i not in self.spares:
                peers = ", ".join(
                    f'"{self.raft_address(j)}"'
                    for j in range(nodes)
                    if j != i and j not in self.spares
                )
                text = re.sub(r"^peers = \[.*\]$", f"peers = [{peers}]", text, count=1, flags=re.M)
            if lazy is not None:
                text = text.replace(
                    f'data_dir = "{node}"\n', f'data_dir = "{lazy.mountpoint / node}"\n'
                )
            if not durable_journal:
                text = text.replace("[raft]\n", "[raft]\ndurable_journal = false\n", 1)
            path.write_text(text)

    def host(self, i: int) -> str:
        """The address node i binds to."""
        return "127.0.0.1" if self.netns is None else self.netns.ip(i)

    def raft_address(self, i: int) -> str:
        """Node i's raft.bind, host:port (its name in the Raft membership)."""
        return f"{self.host(i)}:{self.ports[i].raft}"

    def data_dir(self, i: int) -> Path:
        if self.lazy is None:
            return super().data_dir(i)
        return self.lazy.mountpoint / self.node_id(i)

    def log_path(self, i: int) -> Path:
        if self.lazy is None:
            return super().log_path(i)
        return self.root / f"{self.node_id(i)}.log"

    def command(self, i: int) -> list[str]:
        # Through `ip netns exec`, which execs: the process keeps its pid, so
        # kill, pause and resume reach it.
        argv = super().command(i)
        if self.netns is None:
            return argv
        return ["ip", "netns", "exec", self.netns.names[i], *argv]


def chaos_device(workdir: Path, config: dict[str, Any]) -> Device:
    """The firmware through tools/mpy/chaos_device.py: firmware/main.py's
    main() with the device's history kept in its data directory."""
    return Device(workdir, config, main=DEVICE_MAIN)


class Fleet:
    """The cluster and devices of one campaign, and which of them the campaign
    has taken down."""

    def __init__(
        self,
        workdir: Path,
        hubs: int,
        device_ids: list[str],
        netns: Netns | None,
        say: Callable[[str], None],
        now: Callable[[], float],
        lazy: LazyMount | None = None,
        durable_journal: bool = True,
        spares: int = 0,
        extra: str = "",
    ) -> None:
        """``say`` logs progress; ``now`` is the campaign's clock (seconds),
        for the crash reports; ``lazy``: the hubs' data on that lazy file
        system (power_cut, disk_full); ``durable_journal``: the hubs' switch;
        ``spares``: nodes configured beyond ``hubs``, outside the cluster;
        ``extra``: TOML tables for every hub's config."""
        self.workdir = workdir
        self.netns = netns
        self.say = say
        self.now = now
        self.cluster = ChaosCluster(
            workdir / "cluster", hubs + spares, netns, lazy, durable_journal, spares, extra
        )
        self.ids = device_ids
        self.devices: list[Device] = []
        self.api: list[HubClient] = []
        self.down_hubs: set[int] = set()  # killed by the campaign
        self.frozen_hubs: set[int] = set()  # paused or cut off
        self.off_devices: set[int] = set()
        self.stopped_brokers: set[int] = set()  # pids (partitions by SIGSTOP)
        self.outside: set[int] = set(self.cluster.spares)  # not Raft members
        self.violations: list[dict[str, Any]] = []  # crashes

    # -- set-up and tear-down

    def start_cluster(self) -> None:
        """Every member started, ready, and agreed on a leader."""
        for i in self.members():
            self.cluster.start_node(i)
        self.cluster.wait_ready(120)
        self.api = [HubClient.from_config(c, timeout=3.0) for c in self.cluster.configs]

    def start_devices(self, timeout: float = 120.0) -> None:
        """Register and start every device; return once each has had a
        reading acknowledged."""
        for dev_id in self.ids:
            secrets = self.cluster.add_device(dev_id)
            dev = chaos_device(self.workdir / dev_id, {**secrets, **DEVICE_TUNING})
            self.devices.append(dev.start())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.progress()
            if got is not None and all(got.get(d, 0) > 0 for d in self.ids):
                return
            self.check_processes()
            time.sleep(0.5)
        raise ChaosError(f"the devices did not all get a first acknowledgement in {timeout:g} s")

    def heal_everything(self) -> None:
        """Every hub running and reachable, every device on."""
        for i in sorted(self.frozen_hubs):
            if self.netns is not None:
                self.netns.heal(i)
            self.cluster.resume(i)
        self.frozen_hubs.clear()
        for i in sorted(self.down_hubs):
            self.cluster.start_node(i)
        self.down_hubs.clear()
        for k in sorted(self.off_devices):
            self.devices[k].start()
        self.off_devices.clear()

    def stop_devices(self) -> dict[str, dict[str, Any] | None]:
        """Ctrl-C to every device: its final counters (None: it printed none
        and was killed; its flash still tells)."""
        finals: dict[str, dict[str, Any] | None] = {}
        for dev_id, d in zip(self.ids, self.devices, strict=True):
            try:
                finals[dev_id] = d.interrupt(60)
            except (AssertionError, subprocess.TimeoutExpired, ValueError) as exc:
                self.say(f"{dev_id}: no counters at exit ({exc}); reading its flash")
                d.kill()
                finals[dev_id] = None
        return finals

    def close(self) -> None:
        """Stop everything the fleet started, whatever state it is in."""
        for d in self.devices:
            d.stop()
        for pid in self.stopped_brokers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for i in range(self.cluster.n):
            self.cluster.resume(i)
        self.cluster.stop()
        for c in self.api:
            c.close()

    # -- observing

    def members(self) -> list[int]:
        """The hubs in the cluster: all but the spares not added (``outside``)."""
        return [i for i in range(self.cluster.n) if i not in self.outside]

    def healthy(self) -> list[int]:
        return [
            i
            for i in self.members()
            if i not in self.down_hubs and i not in self.frozen_hubs and self.cluster.alive(i)
        ]

    def progress(self) -> dict[str, int] | None:
        """Each device's committed watermark, as one healthy node sees it."""
        for i in self.healthy():
            try:
                rows = self.api[i].get("/v1/devices")
            except HubError:
                continue
            return {r["device_id"]: int(r["watermark"]) for r in rows}
        return None

    def baseline(self) -> dict[str, int]:
        """Each device's committed watermark now, as a healthy node sees it."""
        for _ in range(40):
            got = self.progress()
            if got is not None:
                return got
            time.sleep(POLL_S)
        raise ChaosError("no hub answers for the devices' progress")

    def leader(self) -> int | None:
        for i in self.healthy():
            try:
                addr = self.api[i].get("/v1/health").get("leader")
            except HubError:
                continue
            if addr:
                for j, p in enumerate(self.cluster.ports):
                    if addr.endswith(f":{p.raft}"):
                        return j
        return None

    def ready(self, i: int) -> bool:
        try:
            h = self.api[i].get("/v1/health")
        except HubError:
            return False
        return bool(h.get("ready") and h.get("leader"))

    def broker_pid(self, i: int) -> int | None:
        """The pid of hub i's Mosquitto, as its /v1/status says."""
        for _ in range(5):
            with contextlib.suppress(HubError, KeyError, TypeError, ValueError):
                pid = self.api[i].get("/v1/status")["broker"]["pid"]
                return int(pid) if pid else None
            time.sleep(0.5)
        return None

    def sampled_since(
        self, device_ids: Iterable[str], since_ms: int, wm0: dict[str, int], avoid: int | None
    ) -> set[str] | None:
        """The devices of which one healthy node holds a new reading (above
        the watermark ``wm0`` had) sampled since ``since_ms``, and not later
        than now (a clock that jumped ahead earlier stamped readings in the
        future). Asks ``avoid`` (the fault's hub, which may still be catching
        up) last. None: no node answers."""
        for i in sorted(self.healthy(), key=lambda i: i == avoid):
            out: set[str] = set()
            try:
                for d in device_ids:
                    got = self.api[i].get(
                        f"/v1/devices/{d}/readings",
                        from_ms=since_ms,
                        to_ms=int(time.time() * 1000) + 2000,
                        limit=5000,
                    )
                    if any(int(r["seq"]) > wm0.get(d, 0) for r in got["readings"]):
                        out.add(d)
            except HubError:
                continue
            return out
        return None

    def wait_ready(self, i: int) -> float | None:
        """Seconds until hub i is ready (None: not within READY_LIMIT_S)."""
        t = time.monotonic()
        while time.monotonic() - t < READY_LIMIT_S:
            if self.ready(i):
                return _round(time.monotonic() - t)
            self.check_processes()
            time.sleep(POLL_S)
        return None

    def wait_broker(self, i: int, old_pid: int, since: float) -> float | None:
        """Seconds from ``since`` until hub i runs a new broker its consumer
        is connected to (None: not within READY_LIMIT_S)."""
        while time.monotonic() - since < READY_LIMIT_S:
            with contextlib.suppress(HubError, KeyError, TypeError):
                b = self.api[i].get("/v1/status")["broker"]
                if b["pid"] and b["pid"] != old_pid and b["consumer_connected"]:
                    return _round(time.monotonic() - since)
            time.sleep(POLL_S)
        return None

    def wait_orders(self, i: int, since: float, timeout: float = 30.0) -> dict[str, Any]:
        """After hub i joined: wait until every running device ran (DONE) a
        broker order (``hubs.set``, hub/link/membership.py) that names hub
        i's broker. ``followed``: how many did, of how many; ``followed_s``:
        seconds from ``since`` until all had (None: not within ``timeout``)."""
        broker = f"{self.cluster.host(i)}:{self.cluster.ports[i].broker}"
        todo = {d for k, d in enumerate(self.ids) if k not in self.off_devices}
        total = len(todo)
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for d in sorted(todo):
                for j in self.healthy():
                    try:
                        cmds = self.api[j].get("/v1/commands", device=d)
                    except HubError:
                        continue
                    orders = sorted(
                        (c for c in cmds if c["action"] == "hubs.set"), key=lambda c: c["seq"]
                    )
                    last = orders[-1] if orders else {"state": None, "params": {}}
                    named = broker in str(last["params"].get("hubs", "")).split(",")
                    if last["state"] == "DONE" and named:
                        todo.discard(d)
                    break
            if todo:
                time.sleep(POLL_S)
        return {
            "followed": f"{total - len(todo)}/{total}",
            "followed_s": None if todo else _round(time.monotonic() - since),
        }

    def wait_commands_final(self, command_ids: list[str], timeout: float = 40.0) -> int:
        """Let the fleet answer what was issued; the number still open."""
        open_ids = set(command_ids)
        deadline = time.monotonic() + timeout
        while open_ids and time.monotonic() < deadline:
            for cid in sorted(open_ids):
                for i in self.healthy():
                    try:
                        rec = self.api[i].get(f"/v1/commands/{cid}")
                    except HubError:
                        continue
                    if rec["state"] not in ("PENDING", "SENT"):
                        open_ids.discard(cid)
                    break
            if open_ids:
                time.sleep(0.5)
        return len(open_ids)

    def family(self, i: int) -> list[int]:
        """Hub i's process and every process under it (its Mosquitto)."""
        proc = self.cluster.procs[i]
        if proc is None or proc.poll() is not None:
            return []
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        out = [proc.pid]
        for pid in out:
            out.extend(child for child, parent in parents.items() if parent == pid)
        return out

    def check_processes(self) -> None:
        """A hub or device that exited on its own is a violation; it is restarted."""
        cluster = self.cluster
        for i in self.members():
            if i not in self.down_hubs and not cluster.alive(i):
                proc = cluster.procs[i]
                code = None if proc is None else proc.returncode
                self.violations.append(
                    violation(
                        "crash",
                        f"{cluster.node_id(i)} exited with {code} at {self.now():.1f} s: "
                        + cluster.tail(i, 5).replace("\n", " | ")[-600:],
                    )
                )
                self.say(f"!! {cluster.node_id(i)} exited by itself ({code}); restarting")
                cluster.start_node(i)
        for k, d in enumerate(self.devices):
            if k in self.off_devices or d.proc is None or d.proc.poll() is None:
                continue
            code = d.proc.returncode
            tail = d.log.read_text(errors="replace")[-600:].replace("\n", " | ")
            self.violations.append(
                violation(
                    "crash",
                    f"exited with {code} at {self.now():.1f} s: {tail}",
                    device=self.ids[k],
                )
            )
            self.say(f"!! {self.ids[k]} exited by itself ({code}); restarting")
            d.kill()
            d.start()
