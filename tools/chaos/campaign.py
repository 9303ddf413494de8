"""`aiot chaos`: a fault-injection campaign against a hub cluster and a fleet of
MicroPython devices on this machine, with its history checked at the end.

    schedule = make_schedule(seed=7, duration_s=60, hubs=3, devices=10)
    summary = Campaign(schedule, workdir).run()     # the JSON summary
    summary["violations"]                            # [] when every check held

The campaign runs ``hubs`` `aiot hub run` processes (tools/lab/cluster.py), each
with its own Mosquitto, and ``devices`` real firmware processes on the
MicroPython unix port (tools/lab/device.py) with the device-side history on
(tools/mpy/chaos_device.py). Operator commands (relay.set with a deadline) go through
the API of random nodes throughout, and faults are injected one after another:

    hub_kill           kill -9 of the leader or a follower; restarted after hold_s
    hub_pause          SIGSTOP of a hub for hold_s (longer than the election timeout)
    broker_kill        kill -9 of a hub's Mosquitto (its pid from /v1/status); the hub restarts it
    device_power_cut   SIGKILL of a device at a random instant; restarted after hold_s
    partition          one hub cut off the network for hold_s: its veth pair goes down
                       (one network namespace per hub), or SIGSTOP of the hub and its
                       broker where network namespaces are not available
    clock_jump         a device's clock moves by jump_ms (tools/mpy/chaos_device.py, clock.jump)

The schedule is computed up front from ``random.Random(seed)`` alone, so a seed
always gives the same sequence of faults, targets (by role and rank), holds and
commands. A fault starts at its planned time or, if the previous one has not
recovered and healed yet, as soon as it has.

The checks (docs/chaos.md):

    L  every reading a device saw acknowledged is stored on every node
    E  each (device, seq) is stored once on each node
    D  no command id runs twice on a device; the ledger and the devices agree
    C  every node's content hash is equal after quiescence
    R  after each fault, a reading that every running device sampled after the
       fault (after its restart, for a power cut) is committed within the
       recovery limit; a restarted hub becomes ready

A crashed process (a hub or a device that exits without being killed) is a
violation too.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tools.base.hubclient import HubClient, HubError
from tools.base.paths import MPY_SCRIPTS, ROOT, micropython_binary
from tools.lab.cluster import LocalCluster
from tools.lab.device import Device

DEVICE_MAIN: Final = MPY_SCRIPTS / "chaos_device.py"

KINDS: Final = (
    "hub_kill",
    "hub_pause",
    "broker_kill",
    "device_power_cut",
    "partition",
    "clock_jump",
)
HUB_KINDS: Final = ("hub_kill", "hub_pause", "broker_kill", "partition")
CHECKS: Final = ("L", "E", "D", "C", "R", "crash")

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
RECOVERY_LIMIT_S: Final = 30.0  # R: ingest resumes for every device within this
READY_LIMIT_S: Final = 90.0  # a restarted hub is ready within this
CONVERGE_LIMIT_S: Final = 90.0  # C: equal content hashes within this, once quiet
WARMUP_S: Final = 4.0
TAIL_S: Final = 4.0  # no fault is planned to start in the last seconds
# Seconds a fault is expected to take after its hold, for planning only.
_AFTER_HOLD_S: Final = {
    "hub_kill": 6.0,
    "hub_pause": 4.0,
    "broker_kill": 4.0,
    "device_power_cut": 3.0,
    "partition": 4.0,
    "clock_jump": 3.0,
}
_POLL_S: Final = 0.25
_ALERT_LEVELS: Final = ("critical", "error")


def _round(x: float) -> float:
    return round(x, 2)


# -- the schedule -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    n: int
    at_s: float  # planned start, seconds after the fleet came online
    kind: str
    role: str | None  # hub faults: "leader" or "follower"
    device: int  # device faults: the device's index; -1 otherwise
    pick: int  # which follower (by rank in node order); for a command: via which node
    hold_s: float  # hub down, paused or cut off; device off; 0 otherwise
    jump_ms: int = 0  # clock_jump
    # device_power_cut: -1, or send the device a command and cut the power
    # this many ms after the API accepted it (while it runs or reports it)
    command_kill_ms: int = -1

    def describe(self) -> str:
        """'12.3 s hub_kill leader pick 1725 hold 3.9 s'"""
        return (
            f"{self.at_s:g} s {self.kind} "
            + (f"{self.role} pick {self.pick}" if self.role else f"plug-{self.device + 1:02d}")
            + (f" hold {self.hold_s:g} s" if self.hold_s else "")
            + (f" jump {self.jump_ms} ms" if self.jump_ms else "")
            + (f" command +{self.command_kill_ms} ms" if self.command_kill_ms >= 0 else "")
        )


@dataclass(frozen=True, slots=True)
class CommandPlan:
    at_s: float
    device: int  # index into the fleet
    via: int  # the node whose API takes it
    on: bool
    deadline_s: float

    def describe(self) -> str:
        """'6.1 s plug-04 via hub-2 off deadline 11.7 s' (1-based names)"""
        return (
            f"{self.at_s:g} s plug-{self.device + 1:02d} via hub-{self.via + 1} "
            f"{'on' if self.on else 'off'} deadline {self.deadline_s:g} s"
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    duration_s: float
    hubs: int
    devices: int
    faults: tuple[Fault, ...]
    commands: tuple[CommandPlan, ...]

    def to_json(self) -> dict[str, Any]:
        """One line per fault and command (make_schedule(seed, ...) gives the
        records themselves)."""
        return {
            "faults": [f.describe() for f in self.faults],
            "commands": [c.describe() for c in self.commands],
        }


def _hold(rng: random.Random, kind: str) -> float:
    lo, hi = {
        "hub_kill": (2.0, 5.0),
        "hub_pause": (2.0, 4.0),  # the election timeout is at most 0.9 s
        "partition": (3.0, 6.0),
        "device_power_cut": (1.0, 3.0),
    }.get(kind, (0.0, 0.0))
    return round(rng.uniform(lo, hi), 1) if hi else 0.0


def make_schedule(seed: int, duration_s: float, hubs: int = 3, devices: int = 10) -> Schedule:
    """Every fault and command of a campaign, from the seed alone.

    The first faults are every kind once, in a seeded order; then kinds are
    drawn at random. Hub faults name a role (and a rank among followers),
    not a node: which node leads is only known when the fault starts."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = WARMUP_S
    cycle = list(KINDS)
    rng.shuffle(cycle)
    while True:
        kind = cycle.pop(0) if cycle else rng.choice(KINDS)
        hold = _hold(rng, kind)
        role = rng.choice(("leader", "follower")) if kind in HUB_KINDS else None
        pick = rng.randrange(1 << 16)
        device = rng.randrange(devices) if kind not in HUB_KINDS else -1
        jump = 0
        if kind == "clock_jump":
            jump = rng.choice((-1, 1)) * rng.randrange(5_000, 7_200_000)
        kill_ms = -1
        if kind == "device_power_cut" and rng.random() < 0.5:
            kill_ms = rng.randrange(0, 400)
        gap = round(rng.uniform(1.0, 3.0), 1)
        if t > duration_s - TAIL_S:
            break
        faults.append(
            Fault(len(faults) + 1, round(t, 1), kind, role, device, pick, hold, jump, kill_ms)
        )
        t += hold + _AFTER_HOLD_S[kind] + gap
    commands: list[CommandPlan] = []
    c_rng = random.Random(seed * 7919 + 1)  # its own stream: faults do not shift it
    t = 2.0
    while True:
        t += c_rng.uniform(1.0, 4.0)
        if t > duration_s - 2.0:
            break
        commands.append(
            CommandPlan(
                round(t, 1),
                c_rng.randrange(devices),
                c_rng.randrange(hubs),
                c_rng.random() < 0.5,
                round(c_rng.uniform(3.0, 30.0), 1),
            )
        )
    return Schedule(seed, duration_s, hubs, devices, tuple(faults), tuple(commands))


# -- histories and the checks (pure functions over what was recorded) --------------------


@dataclass(slots=True)
class DeviceHistory:
    """What one device recorded about itself (tools/mpy/chaos_device.py), across boots."""

    device_id: str
    flushed: list[tuple[int, int]] = field(default_factory=list)  # (first seq, count)
    watermark: int = 0  # the highest watermark it saw acknowledged
    executed: list[str] = field(default_factory=list)  # command ids, in order
    boots: int = 0
    jumps: list[int] = field(default_factory=list)
    floor: int = 0  # readings at or below were dropped by overflow (meta.floor)
    dropped: int = 0
    bad_lines: int = 0


def parse_history(device_id: str, text: str) -> DeviceHistory:
    h = DeviceHistory(device_id)
    for line in text.splitlines():
        parts = line.split()
        try:
            if parts[0] == "B" and len(parts) == 3:
                h.boots += 1
                h.watermark = max(h.watermark, int(parts[2]))
            elif parts[0] == "F" and len(parts) == 3:
                h.flushed.append((int(parts[1]), int(parts[2])))
            elif parts[0] == "W" and len(parts) == 2:
                h.watermark = max(h.watermark, int(parts[1]))
            elif parts[0] == "X" and len(parts) == 2:
                h.executed.append(parts[1])
            elif parts[0] == "J" and len(parts) == 2:
                h.jumps.append(int(parts[1]))
            else:
                h.bad_lines += 1
        except (IndexError, ValueError):
            h.bad_lines += 1
    return h


def acknowledged(h: DeviceHistory) -> set[int]:
    """Sequence numbers of readings that reached the device's flash and that
    it saw acknowledged. Numbers it reserved but never used (after a power
    cut) were never readings; readings it dropped itself (overflow) are not
    counted."""
    out: set[int] = set()
    for first, n in h.flushed:
        lo, hi = max(first, h.floor + 1), min(first + n - 1, h.watermark)
        if lo <= hi:
            out.update(range(lo, hi + 1))
    return out


def _violation(check: str, detail: str, **where: Any) -> dict[str, Any]:
    return {"check": check, **where, "detail": detail}


def _ranges(seqs: list[int], limit: int = 5) -> str:
    """'3-7, 12, 40-41' for the first few runs of sorted numbers."""
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


@dataclass(slots=True)
class StorageResult:
    readings_acked: int = 0
    readings_lost: int = 0
    duplicates_stored: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)


def check_storage(
    devices: list[DeviceHistory], stored: dict[str, dict[str, list[int]]]
) -> StorageResult:
    """L and E. ``stored``: node id -> device id -> the sequence numbers its
    API returned (one entry per stored reading)."""
    res = StorageResult()
    lost: set[tuple[str, int]] = set()
    for h in devices:
        acked = acknowledged(h)
        res.readings_acked += len(acked)
        for node, per_device in sorted(stored.items()):
            seqs = per_device.get(h.device_id, [])
            distinct = set(seqs)
            dups = len(seqs) - len(distinct)
            if dups:
                res.duplicates_stored += dups
                twice = sorted(s for s, c in Counter(seqs).items() if c > 1)
                res.violations.append(
                    _violation(
                        "E",
                        f"{dups} readings stored more than once (seq {_ranges(twice)})",
                        node=node,
                        device=h.device_id,
                    )
                )
            missing = sorted(acked - distinct)
            if missing:
                lost.update((h.device_id, s) for s in missing)
                res.violations.append(
                    _violation(
                        "L",
                        f"{len(missing)} of {len(acked)} acknowledged readings missing "
                        f"(seq {_ranges(missing)}; the device saw up to {h.watermark} acked)",
                        node=node,
                        device=h.device_id,
                    )
                )
    res.readings_lost = len(lost)
    return res


@dataclass(slots=True)
class CommandsResult:
    executed: int = 0  # handler runs on the devices
    executed_twice: int = 0  # command ids that ran more than once
    by_state: dict[str, int] = field(default_factory=dict)  # the ledger's final states
    executed_not_done: int = 0  # ran, but the ledger says otherwise (documented limits)
    # accepted by the API, then refused by the device: the command carried a
    # term below one the device had already seen (the proposer's stale view)
    stale_term: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)


def check_commands(
    devices: list[DeviceHistory], ledger: dict[str, dict[str, Any]]
) -> CommandsResult:
    """D. ``ledger``: command id -> its record from the API (state, device_id)."""
    res = CommandsResult()
    res.by_state = dict(sorted(Counter(str(r["state"]) for r in ledger.values()).items()))
    for cid, entry in sorted(ledger.items()):
        result = entry.get("result") or {}
        if (result.get("payload") or {}).get("reason") == "STALE_TERM":
            res.stale_term.append(cid)
    for h in devices:
        counts = Counter(h.executed)
        res.executed += len(h.executed)
        for cid, n in sorted(counts.items()):
            rec = ledger.get(cid)
            if n > 1:
                res.executed_twice += 1
                res.violations.append(
                    _violation("D", f"command {cid} executed {n} times", device=h.device_id)
                )
            if rec is None or rec["device_id"] != h.device_id:
                res.violations.append(
                    _violation(
                        "D",
                        f"command {cid} executed but the ledger has no such command "
                        "for this device",
                        device=h.device_id,
                    )
                )
            elif rec["state"] not in ("DONE", "FAILED"):
                res.executed_not_done += 1
    executed = {(h.device_id, cid) for h in devices for cid in h.executed}
    for cid, rec in sorted(ledger.items()):
        if rec["state"] == "DONE" and (rec["device_id"], cid) not in executed:
            res.violations.append(
                _violation(
                    "D",
                    f"the ledger says command {cid} is DONE, but the device never ran it",
                    device=rec["device_id"],
                )
            )
    return res


def check_convergence(hashes: dict[str, str | None]) -> tuple[bool, list[dict[str, Any]]]:
    """C. ``hashes``: node id -> content hash after quiescence (None: no answer)."""
    values = set(hashes.values())
    if len(values) == 1 and None not in values:
        return True, []
    return False, [
        _violation(
            "C",
            "content hashes differ after quiescence: "
            + ", ".join(f"{n}={(v or 'no answer')[:12]}" for n, v in sorted(hashes.items())),
        )
    ]


def check_recovery(
    events: list[dict[str, Any]], limit_s: float
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """R. The slowest recovery per fault kind (None: one never recovered)."""
    worst: dict[str, float | None] = {}
    violations = []
    for ev in events:
        if "skipped" in ev:
            continue
        kind, rec = ev["kind"], ev.get("recovery_s")
        if kind not in worst:
            worst[kind] = rec
        elif rec is None or worst[kind] is None:
            worst[kind] = None
        else:
            worst[kind] = max(rec, worst[kind] or 0.0)
        if rec is None or rec > limit_s:
            stalled = ev.get("stalled") or []
            violations.append(
                _violation(
                    "R",
                    f"ingest did not resume within {limit_s:g} s of fault {ev['n']} "
                    f"({kind} on {ev['target']} at {ev['at_s']} s)"
                    + (f"; devices still stalled: {', '.join(stalled)}" if stalled else ""),
                    fault=ev["n"],
                )
            )
        if ev.get("ready_s") is None and ev.get("needs_ready"):
            violations.append(
                _violation(
                    "R",
                    f"{ev['target']} was not ready within {READY_LIMIT_S:g} s of its "
                    f"restart (fault {ev['n']})",
                    fault=ev["n"],
                )
            )
    return {k: worst[k] for k in sorted(worst)}, violations


# -- the network: one namespace per hub ---------------------------------------------------


def netns_available() -> bool:
    """True if this process can create network namespaces (``ip netns``)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    name = f"aiotprobe{os.getpid()}"
    ok = _ip("netns", "add", name)
    if ok:
        _ip("netns", "del", name)
    return ok


def _ip(*args: str, netns: str | None = None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def _ip_or_fail(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ChaosError(f"{' '.join(argv)}: {proc.stderr.strip()}")


class ChaosError(RuntimeError):
    """The campaign could not run (set-up, not a finding)."""


class Netns:
    """A bridge in this namespace and one namespace per hub, joined by a veth
    pair: the hub's processes (and its broker) run inside, everything else
    reaches them over the bridge. Cutting a hub off = its veth going down."""

    def __init__(self, hubs: int) -> None:
        pid = os.getpid()
        self.tag = f"ach{pid % 1_000_000}"
        self.bridge = f"{self.tag}b"
        self.names = [f"{self.tag}n{i}" for i in range(hubs)]
        self.veths = [f"{self.tag}v{i}" for i in range(hubs)]
        self.prefix = self._free_prefix(pid)
        self.up_done = False

    @staticmethod
    def _free_prefix(pid: int) -> str:
        routes = subprocess.run(
            ["ip", "-4", "route", "show"], capture_output=True, text=True, timeout=30
        ).stdout
        rng = random.Random(pid)
        for _ in range(200):
            prefix = f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}"
            if f"{prefix}." not in routes:
                return prefix
        raise ChaosError("no free 10.x.y.0/24 for the hub network")

    def ip(self, i: int) -> str:
        return f"{self.prefix}.{10 + i}"

    def up(self) -> None:
        self.down()  # leftovers of an earlier run with the same pid
        self.up_done = True
        _ip_or_fail("link", "add", self.bridge, "type", "bridge")
        _ip_or_fail("addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
        _ip_or_fail("link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.names, self.veths, strict=True)):
            inside = f"{veth}i"
            _ip_or_fail("netns", "add", ns)
            _ip_or_fail("link", "add", veth, "type", "veth", "peer", "name", inside)
            _ip_or_fail("link", "set", inside, "netns", ns)
            _ip_or_fail("link", "set", veth, "master", self.bridge, "up")
            _ip_or_fail("addr", "add", f"{self.ip(i)}/24", "dev", inside, netns=ns)
            _ip_or_fail("link", "set", inside, "up", netns=ns)
            _ip_or_fail("link", "set", "lo", "up", netns=ns)

    def cut(self, i: int) -> None:
        _ip_or_fail("link", "set", self.veths[i], "down")

    def heal(self, i: int) -> None:
        _ip_or_fail("link", "set", self.veths[i], "up")

    def down(self) -> None:
        for ns in self.names:
            _ip("netns", "del", ns)
        for veth in self.veths:
            _ip("link", "del", veth)
        _ip("link", "del", self.bridge)


class ChaosDevice(Device):
    """The firmware through tools/mpy/chaos_device.py: firmware/main.py's
    main() with the device's history kept in its data directory."""

    def start(self) -> ChaosDevice:
        path = self.workdir / "config.json"
        path.write_text(json.dumps(self.config))
        env = dict(os.environ, MICROPYPATH=f"{ROOT}:.frozen", PYTHONPATH=str(ROOT))
        argv = [micropython_binary(), "-X", f"heapsize={self.heap}", str(DEVICE_MAIN)]
        self._close_log()
        self._log_file = self.log.open("a")
        self.proc = subprocess.Popen(
            [*argv, "--config", str(path)],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        return self


class ChaosCluster(LocalCluster):
    """A LocalCluster whose nodes run in their own network namespaces (when
    ``netns`` is given), each bound to its namespace's address."""

    def __init__(self, root: Path, nodes: int, netns: Netns | None) -> None:
        super().__init__(root, nodes, election_ms=ELECTION_MS)
        self.netns = netns
        if netns is not None:
            for path in self.configs:
                text = path.read_text()
                for j, p in enumerate(self.ports):
                    for port in (p.raft, p.broker, p.http):
                        text = text.replace(f"127.0.0.1:{port}", f"{netns.ip(j)}:{port}")
                path.write_text(text)

    def start_node(self, i: int) -> None:
        # LocalCluster.start_node, run through `ip netns exec` (which execs:
        # the process keeps its pid, so kill, pause and resume reach it).
        if self.alive(i):
            raise ChaosError(f"{self.node_id(i)} is already running")
        self.data_dir(i).mkdir(parents=True, exist_ok=True)
        if self._logs[i] is not None:
            self._logs[i].close()
        self._logs[i] = self.log_path(i).open("ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = [sys.executable, "-m", "tools.cli", "hub", "run", "--config", str(self.configs[i])]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns.names[i], *argv]
        self.procs[i] = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._logs[i], stderr=self._logs[i]
        )


# -- the campaign -------------------------------------------------------------------------


class Campaign:
    """One run of a schedule: set up, inject, record, check, tear down."""

    def __init__(
        self,
        schedule: Schedule,
        workdir: Path,
        use_netns: bool | None = None,
        recovery_limit_s: float = RECOVERY_LIMIT_S,
        log: Callable[[str], None] | None = None,
        before_checks: Callable[[Campaign], None] | None = None,
        converge_limit_s: float = CONVERGE_LIMIT_S,
    ) -> None:
        """``before_checks`` runs once the devices have stopped, before the
        checks gather anything (the tests plant faults there that every
        campaign must catch)."""
        self.s = schedule
        self.before_checks = before_checks
        self.converge_limit = converge_limit_s
        self.workdir = workdir
        self.use_netns = netns_available() if use_netns is None else use_netns
        self.limit = recovery_limit_s
        self._log = log or (lambda _msg: None)
        self.netns: Netns | None = None
        self.cluster: ChaosCluster | None = None
        self.devices: list[ChaosDevice] = []
        self.ids = [f"plug-{k + 1:02d}" for k in range(schedule.devices)]
        self.api: list[HubClient] = []
        self.down_hubs: set[int] = set()  # killed by the campaign
        self.frozen_hubs: set[int] = set()  # paused or cut off
        self.off_devices: set[int] = set()
        self.stopped_brokers: set[int] = set()  # pids (partitions by SIGSTOP)
        self.events: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def partition_method(self) -> str:
        return "netns" if self.use_netns else "sigstop"

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        self._log(f"[{self.now():7.2f}] {msg}" if self.t0 else msg)

    # -- set-up and tear-down

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        try:
            if self.use_netns:
                self.netns = Netns(self.s.hubs)
                self.netns.up()
            self.cluster = ChaosCluster(self.workdir / "cluster", self.s.hubs, self.netns)
            self.cluster.start(120)
            self.api = [HubClient.from_config(c, timeout=3.0) for c in self.cluster.configs]
            yield
        finally:
            self._stop.set()
            for d in self.devices:
                d.stop()
            for pid in self.stopped_brokers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            if self.cluster is not None:
                for i in range(self.cluster.n):
                    self.cluster.resume(i)
                self.cluster.stop()
            for c in self.api:
                c.close()
            if self.netns is not None:
                self.netns.down()

    def run(self) -> dict[str, Any]:
        with self._running():
            assert self.cluster is not None
            cluster = self.cluster
            self.say(
                f"cluster up: {cluster.n} hubs, leader {cluster.node_id(self._leader() or 0)}, "
                f"partition method {self.partition_method}"
            )
            for dev_id in self.ids:
                secrets = cluster.add_device(dev_id)
                dev = ChaosDevice(self.workdir / dev_id, {**secrets, **DEVICE_TUNING})
                self.devices.append(dev.start())
            self._wait_fleet_online()
            self.t0 = time.monotonic()
            self.say(f"{len(self.devices)} devices online; campaign of {self.s.duration_s:g} s")
            issuer = threading.Thread(target=self._issue_commands, name="commands", daemon=True)
            issuer.start()
            try:
                self._inject_all()
            finally:
                self._stop.set()
                issuer.join(30)
            return self._finish()

    def _wait_fleet_online(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self._progress(set())
            if got is not None and all(got.get(d, 0) > 0 for d in self.ids):
                return
            self._check_processes()
            time.sleep(0.5)
        raise ChaosError(f"the devices did not all get a first acknowledgement in {timeout:g} s")

    # -- observing the cluster

    def _healthy(self) -> list[int]:
        assert self.cluster is not None
        return [
            i
            for i in range(self.cluster.n)
            if i not in self.down_hubs and i not in self.frozen_hubs and self.cluster.alive(i)
        ]

    def _progress(self, exclude: set[int]) -> dict[str, int] | None:
        """Each device's committed watermark, as one healthy node sees it."""
        for i in self._healthy():
            if i in exclude:
                continue
            try:
                rows = self.api[i].get("/v1/devices")
            except HubError:
                continue
            return {r["device_id"]: int(r["watermark"]) for r in rows}
        return None

    def _leader(self) -> int | None:
        assert self.cluster is not None
        for i in self._healthy():
            try:
                addr = self.api[i].get("/v1/health").get("leader")
            except HubError:
                continue
            if addr:
                for j, p in enumerate(self.cluster.ports):
                    if addr.endswith(f":{p.raft}"):
                        return j
        return None

    def _ready(self, i: int) -> bool:
        try:
            h = self.api[i].get("/v1/health")
        except HubError:
            return False
        return bool(h.get("ready") and h.get("leader"))

    def _check_processes(self) -> None:
        """A hub or device that exited on its own is a violation; it is restarted."""
        assert self.cluster is not None
        for i in range(self.cluster.n):
            if i not in self.down_hubs and not self.cluster.alive(i):
                proc = self.cluster.procs[i]
                code = None if proc is None else proc.returncode
                self.violations.append(
                    _violation(
                        "crash",
                        f"{self.cluster.node_id(i)} exited with {code} at {self.now():.1f} s: "
                        + self.cluster.tail(i, 5).replace("\n", " | ")[-600:],
                    )
                )
                self.say(f"!! {self.cluster.node_id(i)} exited by itself ({code}); restarting")
                self.cluster.start_node(i)
        for k, d in enumerate(self.devices):
            if k in self.off_devices or d.proc is None or d.proc.poll() is None:
                continue
            code = d.proc.returncode
            tail = d.log.read_text(errors="replace")[-600:].replace("\n", " | ")
            self.violations.append(
                _violation(
                    "crash",
                    f"exited with {code} at {self.now():.1f} s: {tail}",
                    device=self.ids[k],
                )
            )
            self.say(f"!! {self.ids[k]} exited by itself ({code}); restarting")
            d.kill()
            d.start()

    # -- commands

    def _issue_commands(self) -> None:
        assert self.cluster is not None
        clients = [HubClient.from_config(c, timeout=5.0) for c in self.cluster.configs]
        try:
            for plan in self.s.commands:
                if self._stop.wait(max(0.0, plan.at_s - self.now())):
                    return
                self._command(
                    clients[plan.via], plan.via, self.ids[plan.device], plan.on, plan.deadline_s
                )
        finally:
            for c in clients:
                c.close()

    def _command(
        self, client: HubClient, via: int, device: str, on: bool, deadline_s: float, **extra: Any
    ) -> bool:
        """relay.set through node ``via``'s API, recorded; True if accepted."""
        assert self.cluster is not None
        rec: dict[str, Any] = {
            "at_s": _round(self.now()),
            "device": device,
            "via": self.cluster.node_id(via),
            "on": on,
            "deadline_s": deadline_s,
            **extra,
        }
        body = {
            "device": device,
            "action": "relay.set",
            "params": {"on": on},
            "deadline_s": deadline_s,
        }
        try:
            out = client.post("/v1/commands", body)
            rec.update(command_id=out["command_id"], seq=out["seq"], state=out["state"])
        except HubError as exc:
            rec.update(error=str(exc)[:200], status=exc.status)
        with self._lock:
            self.commands.append(rec)
        return "command_id" in rec

    # -- faults

    def _inject_all(self) -> None:
        for f in self.s.faults:
            while self.now() < f.at_s:
                self._check_processes()
                time.sleep(min(_POLL_S, max(0.0, f.at_s - self.now())))
            if self.now() > self.s.duration_s - TAIL_S:
                self.say(f"fault {f.n} ({f.kind}) not reached: the campaign is over")
                break
            self.events.append(self._fault(f))
        while self.now() < self.s.duration_s:
            self._check_processes()
            time.sleep(_POLL_S)

    def _resolve_hub(self, f: Fault) -> tuple[int, bool]:
        """The node a hub fault hits, and whether it led."""
        deadline = time.monotonic() + 15
        leader = self._leader()
        while leader is None and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            leader = self._leader()
        healthy = self._healthy()
        if f.role == "leader" and leader is not None:
            return leader, True
        followers = sorted(i for i in healthy if i != leader)
        if not followers:
            followers = healthy
        target = followers[f.pick % len(followers)]
        return target, target == leader

    def _fault(self, f: Fault) -> dict[str, Any]:
        assert self.cluster is not None
        cluster = self.cluster
        ev: dict[str, Any] = {
            "n": f.n,
            "kind": f.kind,
            "planned_at_s": f.at_s,
            "hold_s": f.hold_s,
        }
        hub: int | None = None
        dev: int | None = None
        heal: Callable[[], None] | None = None
        measure_from_heal = False
        if f.kind in HUB_KINDS:
            hub, was_leader = self._resolve_hub(f)
            ev["target"] = cluster.node_id(hub)
            ev["leader"] = was_leader
        else:
            dev = f.device
            ev["target"] = self.ids[dev]
        wm0 = self._baseline()
        ev["at_s"] = _round(self.now())
        t_inject = time.monotonic()
        since_ms = int(time.time() * 1000)
        if f.kind == "hub_kill":
            assert hub is not None
            self.down_hubs.add(hub)
            cluster.kill(hub)
            heal = self._restart_hub(hub)
        elif f.kind == "hub_pause":
            assert hub is not None
            self.frozen_hubs.add(hub)
            cluster.pause(hub)
            heal = self._resume_hub(hub)
        elif f.kind == "partition":
            assert hub is not None
            self.frozen_hubs.add(hub)
            heal = self._cut_off(hub)
        elif f.kind == "broker_kill":
            assert hub is not None
            pid = self._broker_pid(hub)
            if pid is None:
                ev["skipped"] = f"{ev['target']} did not say its broker's pid"
                self.say(f"fault {f.n}: {f.kind} skipped: {ev['skipped']}")
                return ev
            ev["broker_pid"] = pid
            os.kill(pid, signal.SIGKILL)
        elif f.kind == "device_power_cut":
            assert dev is not None
            if f.command_kill_ms >= 0:
                healthy = self._healthy()
                via = healthy[f.pick % len(healthy)]
                on = bool(f.pick & 1)
                if self._command(self.api[via], via, self.ids[dev], on, 30.0, fault=f.n):
                    time.sleep(f.command_kill_ms / 1000)
                ev["command_kill_ms"] = f.command_kill_ms
            self.off_devices.add(dev)
            self.devices[dev].kill()
            heal = self._power_on(dev)
            measure_from_heal = True
        elif f.kind == "clock_jump":
            assert dev is not None
            ev["jump_ms"] = f.jump_ms
            self._jump_clock(dev, f.jump_ms)
        self.say(
            f"fault {f.n}: {f.kind} on {ev['target']}"
            + (" (leader)" if ev.get("leader") else "")
            + (f", hold {f.hold_s:g} s" if f.hold_s else "")
            + (f", jump {f.jump_ms / 1000:+.1f} s" if f.jump_ms else "")
            + (
                f", {f.command_kill_ms} ms after a command"
                if f.kind == "device_power_cut" and f.command_kill_ms >= 0
                else ""
            )
        )
        healed_at: float | None = None if heal is not None else t_inject
        t_measure = t_inject
        recovered: float | None = None
        resumed: set[str] = set()
        stalled: list[str] = []
        while True:
            now = time.monotonic()
            if healed_at is None and now - t_inject >= f.hold_s:
                assert heal is not None
                heal()
                healed_at = time.monotonic()
                ev["healed_at_s"] = _round(self.now())
                if measure_from_heal:
                    wm0 = self._baseline()
                    t_measure = healed_at
                    since_ms = int(time.time() * 1000)
            if recovered is None and (not measure_from_heal or healed_at is not None):
                running = [d for k, d in enumerate(self.ids) if k not in self.off_devices]
                todo = [d for d in running if d not in resumed]
                got = self._sampled_since(todo, since_ms, wm0, hub)
                if got is not None:
                    resumed |= got
                    stalled = [d for d in running if d not in resumed]
                    if not stalled:
                        recovered = time.monotonic() - t_measure
            if healed_at is not None and (
                recovered is not None or time.monotonic() - t_measure > self.limit
            ):
                break
            self._check_processes()
            time.sleep(_POLL_S)
        ev["recovery_s"] = None if recovered is None else _round(recovered)
        if recovered is None:
            ev["stalled"] = stalled
        if f.kind in ("hub_kill", "hub_pause", "partition") and hub is not None:
            ev["needs_ready"] = True
            ev["ready_s"] = self._wait_ready(hub)
        elif f.kind == "broker_kill" and hub is not None:
            ev["broker_restarted_s"] = self._wait_broker(hub, ev["broker_pid"], t_inject)
        self.say(
            f"fault {f.n}: ingest resumed after {ev['recovery_s']} s"
            if recovered is not None
            else f"fault {f.n}: ingest did NOT resume within {self.limit:g} s: {stalled}"
        )
        return ev

    def _baseline(self) -> dict[str, int]:
        """Each device's committed watermark now, as a healthy node sees it."""
        for _ in range(40):
            got = self._progress(set())
            if got is not None:
                return got
            time.sleep(_POLL_S)
        raise ChaosError("no hub answers for the devices' progress")

    def _sampled_since(
        self, device_ids: list[str], since_ms: int, wm0: dict[str, int], avoid: int | None
    ) -> set[str] | None:
        """The devices of which one healthy node holds a new reading (above
        the watermark ``wm0`` had) sampled since ``since_ms``, and not later
        than now (a clock that jumped ahead earlier stamped readings in the
        future). Asks ``avoid`` (the fault's hub, which may still be catching
        up) last. None: no node answers."""
        for i in sorted(self._healthy(), key=lambda i: i == avoid):
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

    def _broker_pid(self, i: int) -> int | None:
        for _ in range(5):
            with contextlib.suppress(HubError, KeyError, TypeError, ValueError):
                pid = self.api[i].get("/v1/status")["broker"]["pid"]
                return int(pid) if pid else None
            time.sleep(0.5)
        return None

    def _restart_hub(self, i: int) -> Callable[[], None]:
        def heal() -> None:
            assert self.cluster is not None
            self.cluster.start_node(i)
            self.down_hubs.discard(i)

        return heal

    def _resume_hub(self, i: int) -> Callable[[], None]:
        def heal() -> None:
            assert self.cluster is not None
            self.cluster.resume(i)
            self.frozen_hubs.discard(i)

        return heal

    def _cut_off(self, i: int) -> Callable[[], None]:
        assert self.cluster is not None
        cluster = self.cluster
        if self.netns is not None:
            netns = self.netns
            netns.cut(i)

            def heal_net() -> None:
                netns.heal(i)
                self.frozen_hubs.discard(i)

            return heal_net
        # Without namespaces: the hub and its broker stop answering anyone.
        broker = self._broker_pid(i)
        cluster.pause(i)
        if broker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker, signal.SIGSTOP)
                self.stopped_brokers.add(broker)

        def heal_stop() -> None:
            if broker:
                self.stopped_brokers.discard(broker)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(broker, signal.SIGCONT)
            cluster.resume(i)
            self.frozen_hubs.discard(i)

        return heal_stop

    def _power_on(self, k: int) -> Callable[[], None]:
        def heal() -> None:
            self.devices[k].start()
            self.off_devices.discard(k)

        return heal

    def _jump_clock(self, k: int, ms: int) -> None:
        data = Path(self.devices[k].config["data_dir"])
        tmp = data / "clock.jump.tmp"
        tmp.write_text(str(ms))
        tmp.rename(data / "clock.jump")
        deadline = time.monotonic() + 5
        while (data / "clock.jump").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _wait_ready(self, i: int) -> float | None:
        t = time.monotonic()
        while time.monotonic() - t < READY_LIMIT_S:
            if self._ready(i):
                return _round(time.monotonic() - t)
            self._check_processes()
            time.sleep(_POLL_S)
        return None

    def _wait_broker(self, i: int, old_pid: int, since: float) -> float | None:
        while time.monotonic() - since < READY_LIMIT_S:
            with contextlib.suppress(HubError, KeyError, TypeError):
                b = self.api[i].get("/v1/status")["broker"]
                if b["pid"] and b["pid"] != old_pid and b["consumer_connected"]:
                    return _round(time.monotonic() - since)
            time.sleep(_POLL_S)
        return None

    # -- the end: quiesce, gather, check

    def _heal_everything(self) -> None:
        assert self.cluster is not None
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

    def _wait_commands_final(self, timeout: float = 40.0) -> int:
        """Let the fleet answer what was issued; the number still open."""
        ids = [c["command_id"] for c in self.commands if "command_id" in c]
        open_ids = set(ids)
        deadline = time.monotonic() + timeout
        while open_ids and time.monotonic() < deadline:
            for cid in sorted(open_ids):
                for i in self._healthy():
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

    def _converge(self) -> dict[str, str | None]:
        assert self.cluster is not None
        # Hashing a large store takes a while on a busy machine.
        clients = [HubClient.from_config(c, timeout=60.0) for c in self.cluster.configs]
        deadline = time.monotonic() + self.converge_limit
        hashes: dict[str, str | None] = {}
        try:
            while time.monotonic() < deadline:
                hashes = {}
                for i, client in enumerate(clients):
                    try:
                        st = client.get("/v1/status", hash="true")
                        hashes[self.cluster.node_id(i)] = str(st["content_hash"])
                    except (HubError, KeyError):
                        hashes[self.cluster.node_id(i)] = None
                if len(set(hashes.values())) == 1 and None not in hashes.values():
                    return hashes
                time.sleep(1.0)
        finally:
            for client in clients:
                client.close()
        return hashes

    def _stored(self, i: int, device_id: str) -> list[int]:
        """Every sequence number node i stores for the device, one per reading
        (time ranges are split until none is truncated)."""
        client = HubClient.from_config(self.cluster.configs[i], timeout=60.0)  # type: ignore[union-attr]
        out: list[int] = []
        try:
            todo = [(0, 2**62)]
            while todo:
                lo, hi = todo.pop()
                got = client.get(
                    f"/v1/devices/{device_id}/readings", from_ms=lo, to_ms=hi, limit=100_000
                )
                if got["truncated"] and hi - lo > 1:
                    mid = (lo + hi) // 2
                    todo += [(lo, mid), (mid, hi)]
                    continue
                if got["truncated"]:
                    raise ChaosError(f"more than 100000 readings of {device_id} in one ms")
                out.extend(int(r["seq"]) for r in got["readings"])
        finally:
            client.close()
        return out

    def _device_history(self, k: int, final: dict[str, Any] | None) -> DeviceHistory:
        dev = self.devices[k]
        data = Path(dev.config["data_dir"])
        path = data / "history.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        h = parse_history(self.ids[k], text)
        if final is not None:
            h.watermark = max(h.watermark, int(final.get("watermark", 0)))
            h.dropped = int(final.get("dropped", 0))
        with contextlib.suppress(Exception):
            from edge.meta import Meta  # the device's own metadata, read on CPython

            meta = Meta(str(data))
            h.watermark = max(h.watermark, meta.watermark)
            h.floor = meta.floor
            h.dropped = max(h.dropped, meta.dropped)
        return h

    def _log_alerts(self) -> dict[str, dict[str, list[str]]]:
        """Critical and error lines of each hub's log (observations for the
        record, not violations: the checks judge the outcome)."""
        assert self.cluster is not None
        out: dict[str, dict[str, list[str]]] = {}
        for i in range(self.cluster.n):
            found: dict[str, list[str]] = {level: [] for level in _ALERT_LEVELS}
            with contextlib.suppress(OSError):
                for line in self.cluster.log_path(i).read_text(errors="replace").splitlines():
                    with contextlib.suppress(ValueError, AttributeError):
                        rec = json.loads(line)
                        if rec.get("level") in found:
                            found[rec["level"]].append(f"{rec.get('ts')} {rec.get('msg')}"[:300])
            out[self.cluster.node_id(i)] = found
        return out

    def _finish(self) -> dict[str, Any]:
        assert self.cluster is not None
        cluster = self.cluster
        self.say("campaign over: healing everything, letting commands finish")
        self._heal_everything()
        for i in range(cluster.n):
            self._wait_ready(i)
        still_open = self._wait_commands_final()
        finals: dict[str, dict[str, Any] | None] = {}
        for k, d in enumerate(self.devices):
            try:
                finals[self.ids[k]] = d.interrupt(60)
            except (AssertionError, subprocess.TimeoutExpired, ValueError) as exc:
                self.say(f"{self.ids[k]}: no counters at exit ({exc}); reading its flash")
                d.kill()
                finals[self.ids[k]] = None
        if self.before_checks is not None:
            self.before_checks(self)
        self.say("devices stopped; waiting for equal content hashes")
        hashes = self._converge()
        converged, c_viol = check_convergence(hashes)
        histories = [self._device_history(k, finals[self.ids[k]]) for k in range(len(self.ids))]
        stored = {
            cluster.node_id(i): {d: self._stored(i, d) for d in self.ids} for i in range(cluster.n)
        }
        ledger: dict[str, dict[str, Any]] = {}
        reader = self._healthy()[0]
        for dev_id in self.ids:
            for rec in self.api[reader].get("/v1/commands", device=dev_id):
                ledger[rec["command_id"]] = rec
        storage = check_storage(histories, stored)
        commands = check_commands(histories, ledger)
        worst, r_viol = check_recovery(self.events, self.limit)
        violations = storage.violations + commands.violations + c_viol + r_viol + self.violations
        issued = [c for c in self.commands if "command_id" in c]
        alerts = self._log_alerts()
        summary: dict[str, Any] = {
            "seed": self.s.seed,
            "duration_s": self.s.duration_s,
            "hubs": self.s.hubs,
            "devices": self.s.devices,
            "faults_injected": {
                k: sum(1 for e in self.events if e["kind"] == k and "skipped" not in e)
                for k in KINDS
            },
            "readings_acked": storage.readings_acked,
            "readings_lost": storage.readings_lost,
            "duplicates_stored": storage.duplicates_stored,
            "commands_issued": len(issued),
            "commands_refused": len(self.commands) - len(issued),
            "commands_executed": commands.executed,
            "commands_executed_twice": commands.executed_twice,
            "commands_by_state": commands.by_state,
            "commands_open_at_end": still_open,
            "commands_executed_not_done": commands.executed_not_done,
            "commands_stale_term": len(commands.stale_term),
            "converged": converged,
            "max_recovery_s": worst,
            "recovery_limit_s": self.limit,
            "violations": violations,
            "partition_method": self.partition_method,
            "device_boots": sum(h.boots for h in histories),
            "clock_jumps_applied": sum(len(h.jumps) for h in histories),
            "hub_log_alerts": {
                level: sum(len(a[level]) for a in alerts.values()) for level in _ALERT_LEVELS
            },
            "schedule": self.s.to_json(),
            "events": [_event_line(e) for e in self.events],
        }
        history = {
            "summary": summary,
            "commands": self.commands,
            "hashes": hashes,
            "hub_log_alerts": alerts,
            "devices": {
                h.device_id: {
                    "watermark": h.watermark,
                    "boots": h.boots,
                    "records": len(h.flushed),
                    "executed": h.executed,
                    "jumps": h.jumps,
                    "floor": h.floor,
                    "dropped": h.dropped,
                    "bad_lines": h.bad_lines,
                    "final": finals[h.device_id],
                }
                for h in histories
            },
        }
        (self.workdir / "history.json").write_text(json.dumps(history, indent=1))
        self.say(
            f"checked: {storage.readings_acked} acknowledged readings, "
            f"{len(issued)} commands, {len(violations)} violations"
        )
        return summary


def _event_line(ev: dict[str, Any]) -> str:
    """'3 hub_pause hub-3 (leader) at 15.6 s: resumed in 3.17 s, ready 0.0 s'"""
    if "skipped" in ev:
        return f"{ev['n']} {ev['kind']} {ev['target']}: skipped, {ev['skipped']}"
    rec = ev.get("recovery_s")
    out = (
        f"{ev['n']} {ev['kind']} {ev['target']}"
        + (" (leader)" if ev.get("leader") else "")
        + f" at {ev['at_s']:g} s: "
        + (f"resumed in {rec:g} s" if rec is not None else "did not resume")
    )
    if ev.get("needs_ready"):
        ready = ev.get("ready_s")
        out += f", ready {ready:g} s after healing" if ready is not None else ", never ready"
    return out


def run(
    seed: int,
    duration_s: float,
    hubs: int = 3,
    devices: int = 10,
    workdir: Path | None = None,
    keep: bool = False,
    use_netns: bool | None = None,
    recovery_limit_s: float = RECOVERY_LIMIT_S,
    log: Callable[[str], None] | None = None,
    before_checks: Callable[[Campaign], None] | None = None,
    converge_limit_s: float = CONVERGE_LIMIT_S,
) -> dict[str, Any]:
    """Make the schedule, run the campaign in ``workdir`` (a new temporary
    directory if None), return the summary. The directory is removed unless
    ``keep`` is set or the campaign found a violation (then ``workdir`` is in
    the summary)."""
    schedule = make_schedule(seed, duration_s, hubs, devices)
    if log is not None:
        log(
            f"schedule for seed {seed}: {len(schedule.faults)} faults, "
            f"{len(schedule.commands)} commands"
        )
        for f in schedule.faults:
            log(f"  {f.n:3d}  {f.describe()}")
    own = workdir is None
    root = Path(tempfile.mkdtemp(prefix=f"aiot-chaos-{seed}-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    summary = Campaign(
        schedule, root, use_netns, recovery_limit_s, log, before_checks, converge_limit_s
    ).run()
    if keep or summary["violations"] or not own:
        summary["workdir"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return summary
