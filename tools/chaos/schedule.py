"""The schedule of a chaos campaign: every fault and operator command, computed
up front from ``random.Random(seed)`` alone.

    s = make_schedule(seed=31, duration_s=60, hubs=3, devices=10)
    s.faults[0].describe()      # '4 s broker_kill leader pick 18178'
    s.to_json()                 # {"faults": [...], "commands": [...]}, one line each

A seed always gives the same sequence of faults, targets (by role and rank),
holds and commands. The fault kinds (how each is done and undone is in
tools/chaos/injectors.py):

    hub_kill           kill -9 of the leader or a follower; restarted after hold_s
    hub_pause          SIGSTOP of a hub for hold_s (longer than the election timeout)
    broker_kill        kill -9 of a hub's Mosquitto; the hub restarts it
    device_power_cut   SIGKILL of a device at a random instant; restarted after hold_s
    partition          one hub cut off the network for hold_s
    clock_jump         a device's clock moves by jump_ms

Two kinds need the hubs' data on a lazy file system (tools/lab/lazyfs.py)
and are drawn only when asked for (``kinds``), so that the schedule of a seed
without them stays what it was:

    power_cut          every hub at once: SIGKILL and unsynced writes dropped;
                       all restarted after hold_s
    disk_full          ENOSPC on one hub's data (the leader or a follower) or
                       on every hub's ("all") for hold_s

Two membership kinds (hub/link/membership.py), also drawn only when asked for:

    node_drain         one hub (the leader or a follower) drained for hold_s
    node_add           the spare node (configured, not a member at the start)
                       joins the running cluster and stays; a later node_add
                       first takes it out again (stopped and removed), then
                       adds it back

Two cloud kinds, for a campaign with a JetStream cloud (`aiot chaos --cloud`),
drawn only when asked for too:

    cloud_kill         kill -9 of one cloud server (by pick); started again
                       after hold_s
    cloud_partition    the site loses the cloud (the proxies its hubs reach
                       the cloud through stop) for hold_s

``power_cut_schedule`` is the power-cut run: ``cuts`` power cuts, nothing else.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Final

KINDS: Final = (
    "hub_kill",
    "hub_pause",
    "broker_kill",
    "device_power_cut",
    "partition",
    "clock_jump",
)
# Faults of the lazy file system (tools/lab/lazyfs.py), drawn only when asked for.
LAZY_KINDS: Final = ("power_cut", "disk_full")
# Membership faults (hub/link/membership.py), drawn only when asked for.
MEMBERSHIP_KINDS: Final = ("node_drain", "node_add")
ALL_KINDS: Final = KINDS + LAZY_KINDS + MEMBERSHIP_KINDS
# Faults of the site's cloud (a campaign with --cloud), drawn only when asked
# for; not in ALL_KINDS, so that `--faults all` without a cloud stays as it was.
CLOUD_KINDS: Final = ("cloud_kill", "cloud_partition")
EVERY_KIND: Final = ALL_KINDS + CLOUD_KINDS
HUB_KINDS: Final = ("hub_kill", "hub_pause", "broker_kill", "partition", "disk_full", "node_drain")
# Kinds that hit every hub at once (their target is "all").
CLUSTER_KINDS: Final = ("power_cut",)
# Kinds whose target is the spare node: no role, no device.
SPARE_KINDS: Final = ("node_add",)
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
    "power_cut": 10.0,
    "disk_full": 6.0,
    "node_drain": 6.0,
    "node_add": 8.0,
    "cloud_kill": 4.0,
    "cloud_partition": 4.0,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault; ``n`` counts from 1 in schedule order."""

    n: int
    at_s: float  # planned start, seconds after the fleet came online
    kind: str
    role: str | None  # hub faults: "leader" or "follower" ("all": disk_full on every hub)
    device: int  # device faults: the device's index; -1 otherwise
    # which follower (by rank in node order); for a command, or node_add: via
    # which node; cloud_kill: which server
    pick: int
    hold_s: float  # hub down, paused or cut off; device off; 0 otherwise
    jump_ms: int = 0  # clock_jump
    # device_power_cut: -1, or send the device a command and cut the power
    # this many ms after the API accepted it (while it runs or reports it)
    command_kill_ms: int = -1

    def describe(self) -> str:
        """'12.3 s hub_kill leader pick 1725 hold 3.9 s'"""
        if self.role:
            what = f"{self.role} pick {self.pick}"
        elif self.device >= 0:
            what = f"plug-{self.device + 1:02d}"
        else:  # the spare node, or the cloud (pick: which server)
            what = f"pick {self.pick}"
        return (
            f"{self.at_s:g} s {self.kind} "
            + what
            + (f" hold {self.hold_s:g} s" if self.hold_s else "")
            + (f" jump {self.jump_ms} ms" if self.jump_ms else "")
            + (f" command +{self.command_kill_ms} ms" if self.command_kill_ms >= 0 else "")
        )


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """One planned operator command: relay.set through a node's API."""

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
    """Everything a campaign will do, and what it was computed from."""

    seed: int
    duration_s: float
    hubs: int
    devices: int
    faults: tuple[Fault, ...]
    commands: tuple[CommandPlan, ...]
    kinds: tuple[str, ...] = KINDS
    # Every fault is injected, however long the earlier ones took, and the
    # campaign ends after the last one (the power-cut run); otherwise a fault
    # not started before the end is left out.
    until_done: bool = False

    @property
    def needs_lazy_fs(self) -> bool:
        return any(k in LAZY_KINDS for k in self.kinds)

    @property
    def spares(self) -> int:
        """Nodes configured beyond ``hubs`` but not members at the start: one
        when some fault adds a node (node_add), else none."""
        return 1 if any(f.kind in SPARE_KINDS for f in self.faults) else 0

    @property
    def needs_cloud(self) -> bool:
        """Some kind to draw is a fault of the cloud (the campaign must run one)."""
        return any(k in CLOUD_KINDS for k in self.kinds)

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
        "power_cut": (1.0, 3.0),
        "disk_full": (3.0, 8.0),
        "node_drain": (4.0, 10.0),
        "cloud_kill": (3.0, 8.0),
        "cloud_partition": (4.0, 10.0),
    }.get(kind, (0.0, 0.0))
    return round(rng.uniform(lo, hi), 1) if hi else 0.0


def make_schedule(
    seed: int,
    duration_s: float,
    hubs: int = 3,
    devices: int = 10,
    kinds: tuple[str, ...] = KINDS,
) -> Schedule:
    """Every fault and command of a campaign, from the seed alone.

    The first faults are every kind once, in a seeded order; then kinds are
    drawn at random. Hub faults name a role (and a rank among followers),
    not a node: which node leads is only known when the fault starts.
    ``kinds``: the kinds to draw from (KINDS, the default, keeps every
    seed's schedule as it was; ALL_KINDS adds power_cut, disk_full,
    node_drain and node_add; CLOUD_KINDS are the cloud's)."""
    unknown = sorted(set(kinds) - set(EVERY_KIND))
    if unknown or not kinds:
        raise ValueError(f"fault kinds: unknown {unknown}, expected some of {list(EVERY_KIND)}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = WARMUP_S
    cycle = list(kinds)
    rng.shuffle(cycle)
    while True:
        kind = cycle.pop(0) if cycle else rng.choice(kinds)
        hold = _hold(rng, kind)
        role = _role(rng, kind)
        pick = rng.randrange(1 << 16)
        device = rng.randrange(devices) if kind not in HUB_KINDS + SPARE_KINDS + CLOUD_KINDS else -1
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
    return Schedule(seed, duration_s, hubs, devices, tuple(faults), tuple(commands), kinds)


def _role(rng: random.Random, kind: str) -> str | None:
    if kind == "disk_full":
        return rng.choice(("leader", "follower", "all"))
    if kind in CLUSTER_KINDS:
        return "all"
    return rng.choice(("leader", "follower")) if kind in HUB_KINDS else None


def power_cut_schedule(seed: int, cuts: int, hubs: int = 3, devices: int = 10) -> Schedule:
    """``cuts`` power cuts of every hub at once, and commands throughout:
    every cut is injected (``until_done``), each once the previous one has
    recovered; ``duration_s`` is what the plan expects them to take."""
    per_cut = 3.0 + _AFTER_HOLD_S["power_cut"] + 3.0
    plan = make_schedule(seed, WARMUP_S + TAIL_S + cuts * per_cut, hubs, devices, ("power_cut",))
    faults = plan.faults[:cuts]
    if len(faults) < cuts:
        raise ValueError(f"planned {len(faults)} power cuts, not {cuts}")
    return dataclasses.replace(plan, faults=faults, until_done=True)
