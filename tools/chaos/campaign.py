"""`aiot chaos`: a fault-injection campaign against a hub cluster and a fleet of
MicroPython devices on this machine, with its history checked at the end.

    summary = run(seed=7, duration_s=60, hubs=3, devices=10)   # the JSON summary
    summary["violations"]                                      # [] when every check held

    schedule = make_schedule(7, 60, 3, 10)                     # the same, in steps
    summary = Campaign(schedule, workdir).run()

The campaign runs the fleet (tools/chaos/fleet.py: ``hubs`` `aiot hub run`
processes, each with its own Mosquitto, and ``devices`` firmware processes on
the MicroPython unix port with the device-side history on). Operator commands
(relay.set with a deadline) go through the API of random nodes throughout,
and the schedule's faults (tools/chaos/schedule.py) are injected one after
another (tools/chaos/injectors.py). A fault starts at its planned time or, if
the previous one has not recovered and healed yet, as soon as it has.

After each fault the campaign measures recovery: how long until a reading
that every running device sampled after the fault (after its restart, for a
power cut) is committed. At the end everything is healed, the devices are
stopped, and the checks (tools/chaos/checks.py, docs/chaos.md) judge what was
gathered (tools/chaos/gather.py). A crashed process (a hub or a device that
exits without being killed) is a violation too.

With ``cloud_nodes`` (`aiot chaos --cloud`) the site also exports to a
JetStream cloud of that many servers (tools/chaos/cloud.py): every hub gets
the site's [cloud] table, the schedule may hold cloud_kill and
cloud_partition, and check X compares the cloud's copy with what the hubs
store once the export has caught up.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from tools.base.hubclient import HubClient, HubError
from tools.chaos import ChaosError
from tools.chaos.checks import (
    CloudResult,
    CommandsResult,
    DeviceHistory,
    StorageResult,
    check_commands,
    check_convergence,
    check_recovery,
    check_storage,
)
from tools.chaos.cloud import ChaosCloud, cloud_target, compare_cloud, wait_for_export
from tools.chaos.fleet import POLL_S, ChaosCluster, Fleet
from tools.chaos.gather import (
    ALERT_LEVELS,
    content_hashes,
    device_history,
    log_alerts,
    stored_readings,
)
from tools.chaos.injectors import (
    ALL_HUBS,
    MEASURED_FROM_HEAL,
    NEEDS_READY,
    Heal,
    Injector,
    Skipped,
)
from tools.chaos.netns import Netns, netns_available
from tools.chaos.schedule import (
    CLOUD_KINDS,
    CLUSTER_KINDS,
    HUB_KINDS,
    KINDS,
    SPARE_KINDS,
    TAIL_S,
    Fault,
    Schedule,
    make_schedule,
    power_cut_schedule,
)
from tools.chaos.votes import check_votes, parse_votes
from tools.lab.lazyfs import LazyFSError, LazyMount

RECOVERY_LIMIT_S: Final = 30.0  # R: ingest resumes for every device within this
CONVERGE_LIMIT_S: Final = 90.0  # C: equal content hashes within this, once quiet
EXPORT_LIMIT_S: Final = 120.0  # X: the export catches up within this, once the devices stop


def _round(x: float) -> float:
    return round(x, 2)


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
        durable_journal: bool = True,
        cloud_nodes: int = 0,
    ) -> None:
        """``before_checks`` runs once the devices have stopped, before the
        checks gather anything (the tests plant faults there that every
        campaign must catch). The hubs' data goes on a lazy file system
        (tools/lab/lazyfs.py) when the schedule has power_cut or disk_full;
        ``durable_journal=False`` turns the hubs' journal syncs off (the
        power-loss window, to see that the checks notice it); ``cloud_nodes``:
        a JetStream cloud of that many servers that the site exports to (0:
        none; the cloud kinds need one)."""
        if schedule.needs_cloud and cloud_nodes < 1:
            raise ChaosError("cloud_kill and cloud_partition need a cloud (aiot chaos --cloud)")
        self.s = schedule
        self.cloud_nodes = cloud_nodes
        self.cloud: ChaosCloud | None = None
        self.durable_journal = durable_journal
        self.lazy: LazyMount | None = None
        self.before_checks = before_checks
        self.converge_limit = converge_limit_s
        self.workdir = workdir
        self.use_netns = netns_available() if use_netns is None else use_netns
        self.limit = recovery_limit_s
        self._log = log or (lambda _msg: None)
        self.netns: Netns | None = None
        self._fleet: Fleet | None = None
        self.ids = [f"plug-{k + 1:02d}" for k in range(schedule.devices)]
        self.events: list[dict[str, Any]] = []
        self.commands: list[dict[str, Any]] = []
        self.t0 = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()

    @property
    def partition_method(self) -> str:
        return "netns" if self.use_netns else "sigstop"

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            raise RuntimeError("the campaign is not running")
        return self._fleet

    @property
    def cluster(self) -> ChaosCluster | None:
        """The hub cluster while the campaign runs."""
        return None if self._fleet is None else self._fleet.cluster

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        self._log(f"[{self.now():7.2f}] {msg}" if self.t0 else msg)

    # -- set-up and tear-down

    @contextlib.contextmanager
    def _running(self) -> Iterator[Fleet]:
        try:
            if self.use_netns:
                self.netns = Netns(self.s.hubs + self.s.spares)
                self.netns.up()
            if self.cloud_nodes:
                listen = "127.0.0.1" if self.netns is None else self.netns.gateway
                self.cloud = ChaosCloud(self.workdir / "cloud", self.cloud_nodes, listen)
                self.cloud.up()
            if self.s.needs_lazy_fs:
                self.lazy = LazyMount(self.workdir / "disk", self.workdir / "data")
                try:
                    self.lazy.mount()
                except LazyFSError as exc:
                    msg = f"power_cut and disk_full need a lazy file system: {exc}"
                    raise ChaosError(msg) from None
            self._fleet = Fleet(
                self.workdir,
                self.s.hubs,
                self.ids,
                self.netns,
                self.say,
                self.now,
                self.lazy,
                self.durable_journal,
                self.s.spares,
                "" if self.cloud is None else self.cloud.table,
            )
            self._fleet.start_cluster()
            yield self._fleet
        finally:
            self._stop.set()
            if self._fleet is not None:
                self._fleet.close()
            if self.cloud is not None:
                self.cloud.close()
            if self.lazy is not None:
                self.lazy.unmount()
            if self.netns is not None:
                self.netns.down()

    def run(self) -> dict[str, Any]:
        with self._running() as fleet:
            self.say(
                f"cluster up: {len(fleet.members())} hubs"
                + (f" and {len(fleet.outside)} spare, " if fleet.outside else ", ")
                + f"leader {fleet.cluster.node_id(fleet.leader() or 0)}, "
                f"partition method {self.partition_method}"
                + (f", a cloud of {self.cloud.nodes} servers" if self.cloud else "")
            )
            fleet.start_devices()
            self.t0 = time.monotonic()
            self.say(f"{len(fleet.devices)} devices online; campaign of {self.s.duration_s:g} s")
            issuer = threading.Thread(target=self._issue_commands, name="commands", daemon=True)
            issuer.start()
            try:
                self._inject_all(Injector(fleet, self._fault_command, self.cloud))
            finally:
                self._stop.set()
                issuer.join(30)
            return self._finish()

    # -- commands

    def _issue_commands(self) -> None:
        clients = [HubClient.from_config(c, timeout=5.0) for c in self.fleet.cluster.configs]
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

    def _fault_command(
        self, via: int, device: str, on: bool, deadline_s: float, fault: int
    ) -> bool:
        """A command sent as part of fault ``fault`` (a power cut while it runs)."""
        return self._command(self.fleet.api[via], via, device, on, deadline_s, fault=fault)

    def _command(
        self, client: HubClient, via: int, device: str, on: bool, deadline_s: float, **extra: Any
    ) -> bool:
        """relay.set through node ``via``'s API, recorded; True if accepted."""
        rec: dict[str, Any] = {
            "at_s": _round(self.now()),
            "device": device,
            "via": self.fleet.cluster.node_id(via),
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

    def _inject_all(self, injector: Injector) -> None:
        for f in self.s.faults:
            while self.now() < f.at_s:
                self._check_processes()
                time.sleep(min(POLL_S, max(0.0, f.at_s - self.now())))
            if not self.s.until_done and self.now() > self.s.duration_s - TAIL_S:
                self.say(f"fault {f.n} ({f.kind}) not reached: the campaign is over")
                break
            self.events.append(self._fault(f, injector))
        while not self.s.until_done and self.now() < self.s.duration_s:
            self._check_processes()
            time.sleep(POLL_S)

    def _resolve_hub(self, f: Fault) -> tuple[int, bool]:
        """The node a hub fault hits, and whether it led."""
        deadline = time.monotonic() + 15
        leader = self.fleet.leader()
        while leader is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
            leader = self.fleet.leader()
        healthy = self.fleet.healthy()
        if f.role == "leader" and leader is not None:
            return leader, True
        followers = sorted(i for i in healthy if i != leader)
        if not followers:
            followers = healthy
        target = followers[f.pick % len(followers)]
        return target, target == leader

    def _check_processes(self) -> None:
        self.fleet.check_processes()
        if self.cloud is not None:
            self.cloud.check_servers(self.now())

    def _fault(self, f: Fault, injector: Injector) -> dict[str, Any]:
        """Inject ``f``, heal it after its hold, and measure the recovery: the
        fault's event."""
        fleet = self.fleet
        ev: dict[str, Any] = {"n": f.n, "kind": f.kind, "planned_at_s": f.at_s, "hold_s": f.hold_s}
        hub: int | None = None
        if f.kind in CLUSTER_KINDS or f.role == "all":
            target = ALL_HUBS
            ev["target"] = "all hubs"
        elif f.kind in SPARE_KINDS:
            hub = target = fleet.cluster.spares[0]
            ev["target"] = fleet.cluster.node_id(hub)
        elif f.kind in CLOUD_KINDS:
            target, ev["target"] = cloud_target(self.cloud, f, ALL_HUBS)
        elif f.kind in HUB_KINDS:
            hub, was_leader = self._resolve_hub(f)
            target = hub
            ev["target"] = fleet.cluster.node_id(hub)
            ev["leader"] = was_leader
        else:
            target = f.device
            ev["target"] = self.ids[target]
        wm0 = fleet.baseline()
        ev["at_s"] = _round(self.now())
        t_inject = time.monotonic()
        since_ms = int(time.time() * 1000)
        try:
            heal = injector.inject(f, target, ev)
        except Skipped as exc:
            ev["skipped"] = exc.reason
            self.say(f"fault {f.n}: {f.kind} skipped: {ev['skipped']}")
            return ev
        self.say(_injected_line(f, ev))
        recovered, stalled = self._recover(f, ev, heal, hub, wm0, t_inject, since_ms)
        ev["recovery_s"] = None if recovered is None else _round(recovered)
        if recovered is None:
            ev["stalled"] = stalled
        if f.kind in NEEDS_READY and (hub is not None or target == ALL_HUBS):
            ev["needs_ready"] = True
            waits = [fleet.wait_ready(i) for i in ([hub] if hub is not None else fleet.healthy())]
            ev["ready_s"] = None if None in waits else max(w or 0.0 for w in waits)
        elif f.kind == "broker_kill" and hub is not None:
            ev["broker_restarted_s"] = fleet.wait_broker(hub, ev["broker_pid"], t_inject)
        if f.kind in SPARE_KINDS and hub is not None:
            ev.update(fleet.wait_orders(hub, t_inject))
        self.say(
            f"fault {f.n}: ingest resumed after {ev['recovery_s']} s"
            if recovered is not None
            else f"fault {f.n}: ingest did NOT resume within {self.limit:g} s: {stalled}"
        )
        return ev

    def _recover(
        self,
        f: Fault,
        ev: dict[str, Any],
        heal: Heal | None,
        hub: int | None,
        wm0: dict[str, int],
        t_inject: float,
        since_ms: int,
    ) -> tuple[float | None, list[str]]:
        """Heal after the hold; wait until every running device has a reading
        sampled since the fault (or since the heal) committed, or the
        recovery limit passes. The seconds it took (None: it did not) and
        the devices still stalled."""
        fleet = self.fleet
        from_heal = f.kind in MEASURED_FROM_HEAL
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
                if from_heal:
                    wm0 = fleet.baseline()
                    t_measure = healed_at
                    since_ms = int(time.time() * 1000)
            if recovered is None and (not from_heal or healed_at is not None):
                running = [d for k, d in enumerate(self.ids) if k not in fleet.off_devices]
                todo = [d for d in running if d not in resumed]
                got = fleet.sampled_since(todo, since_ms, wm0, hub)
                if got is not None:
                    resumed |= got
                    stalled = [d for d in running if d not in resumed]
                    if not stalled:
                        recovered = time.monotonic() - t_measure
            if healed_at is not None and (
                recovered is not None or time.monotonic() - t_measure > self.limit
            ):
                return recovered, stalled
            fleet.check_processes()
            time.sleep(POLL_S)

    # -- the end: quiesce, gather, check

    def _finish(self) -> dict[str, Any]:
        fleet = self.fleet
        cluster = fleet.cluster
        self.say("campaign over: healing everything, letting commands finish")
        fleet.heal_everything()
        if self.cloud is not None:
            self.cloud.heal_everything(self.now())
        members = fleet.members()  # the spare too, if a node_add joined it
        for i in members:
            fleet.wait_ready(i)
        issued = [c for c in self.commands if "command_id" in c]
        still_open = fleet.wait_commands_final([c["command_id"] for c in issued])
        finals = fleet.stop_devices()
        if self.before_checks is not None:
            self.before_checks(self)
        # With a cloud: how long until the leader's export caught up.
        caught_up_s = (
            None if self.cloud is None else wait_for_export(fleet, self.say, EXPORT_LIMIT_S)
        )
        self.say("devices stopped; waiting for equal content hashes")
        hashes = content_hashes(cluster, self.converge_limit, members)
        converged, c_viol = check_convergence(hashes)
        histories = [
            device_history(d, dev_id, finals[dev_id])
            for dev_id, d in zip(self.ids, fleet.devices, strict=True)
        ]
        stored = {
            cluster.node_id(i): {d: stored_readings(cluster, i, d) for d in self.ids}
            for i in members
        }
        storage = check_storage(histories, stored)
        cloud = None  # X: the cloud's copy against what the hubs store
        if self.cloud is not None:
            cloud = compare_cloud(self.cloud, fleet, stored, caught_up_s, EXPORT_LIMIT_S)
        commands = check_commands(histories, _ledger(fleet, self.ids))
        worst, r_viol = check_recovery(self.events, self.limit)
        votes = _votes(cluster)
        double_votes, v_viol = check_votes(votes)
        violations = (
            storage.violations + commands.violations + c_viol + r_viol + v_viol + fleet.violations
        )
        if self.cloud is not None and cloud is not None:
            violations += cloud.violations + self.cloud.violations
        alerts = log_alerts(cluster)
        summary = _summary(
            self,
            storage,
            commands,
            histories,
            alerts,
            violations,
            commands_open_at_end=still_open,
            converged=converged,
            max_recovery_s=worst,
        )
        summary["votes_recorded"] = sum(len(v) for v in votes.values())
        summary["double_votes"] = double_votes
        summary["durable_journal"] = self.durable_journal
        summary["hubs_checked"] = [cluster.node_id(i) for i in members]
        if cloud is not None:
            summary.update(_cloud_figures(self.cloud_nodes, cloud, caught_up_s))
        if self.lazy is not None:
            summary["lazy_fs"] = _lazy_figures(self)
        history = {
            "summary": summary,
            "commands": self.commands,
            "hashes": hashes,
            "hub_log_alerts": alerts,
            "devices": {h.device_id: _digest(h, finals[h.device_id]) for h in histories},
        }
        (self.workdir / "history.json").write_text(json.dumps(history, indent=1))
        self.say(
            f"checked: {storage.readings_acked} acknowledged readings, "
            f"{len(issued)} commands, {len(violations)} violations"
        )
        return summary


def _ledger(fleet: Fleet, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every device's commands as a healthy hub's API lists them, by command id."""
    reader = fleet.healthy()[0]
    return {
        rec["command_id"]: rec
        for dev_id in ids
        for rec in fleet.api[reader].get("/v1/commands", device=dev_id)
    }


def _votes(cluster: ChaosCluster) -> dict[str, Any]:
    """The votes each hub's log recorded (a spare never started has none)."""
    return {
        cluster.node_id(i): parse_votes(cluster.log_path(i).read_text(errors="replace"))
        for i in range(cluster.n)
        if cluster.log_path(i).exists()
    }


def _cloud_figures(nodes: int, cloud: CloudResult, caught_up_s: float | None) -> dict[str, Any]:
    """The cloud's part of the JSON summary (docs/chaos.md)."""
    return {
        "cloud_nodes": nodes,
        "cloud_readings": cloud.readings,
        "cloud_readings_lost": cloud.lost,
        "cloud_duplicates": cloud.duplicates,
        "cloud_readings_differ": cloud.differ,
        "cloud_readings_unknown": cloud.unknown,
        "cloud_catch_up_s": caught_up_s,
    }


def _summary(
    self: Campaign,
    storage: StorageResult,
    commands: CommandsResult,
    histories: list[DeviceHistory],
    alerts: dict[str, dict[str, list[str]]],
    violations: list[dict[str, Any]],
    *,
    commands_open_at_end: int,
    converged: bool,
    max_recovery_s: dict[str, float | None],
) -> dict[str, Any]:
    """The JSON summary (docs/chaos.md, "The JSON summary")."""
    issued = sum(1 for c in self.commands if "command_id" in c)
    return {
        "seed": self.s.seed,
        "duration_s": self.s.duration_s,
        "hubs": self.s.hubs,
        "devices": self.s.devices,
        "faults_injected": {
            k: sum(1 for e in self.events if e["kind"] == k and "skipped" not in e)
            for k in self.s.kinds
        },
        "readings_acked": storage.readings_acked,
        "readings_lost": storage.readings_lost,
        "duplicates_stored": storage.duplicates_stored,
        "commands_issued": issued,
        "commands_refused": len(self.commands) - issued,
        "commands_executed": commands.executed,
        "commands_executed_twice": commands.executed_twice,
        "commands_by_state": commands.by_state,
        "commands_open_at_end": commands_open_at_end,
        "commands_executed_not_done": commands.executed_not_done,
        "commands_stale_term": len(commands.stale_term),
        "converged": converged,
        "max_recovery_s": max_recovery_s,
        "recovery_limit_s": self.limit,
        "violations": violations,
        "partition_method": self.partition_method,
        "device_boots": sum(h.boots for h in histories),
        "clock_jumps_applied": sum(len(h.jumps) for h in histories),
        "hub_log_alerts": {
            level: sum(len(a[level]) for a in alerts.values()) for level in ALERT_LEVELS
        },
        "schedule": self.s.to_json(),
        "events": [_event_line(e) for e in self.events],
    }


def _lazy_figures(self: Campaign) -> dict[str, int]:
    """What the power cuts took back, summed (tools/lab/lazyfs.py)."""
    assert self.lazy is not None
    cuts = self.lazy.cuts
    return {
        "cuts": len(cuts),
        "files_cut_back": sum(c["files"] for c in cuts),
        "pages_restored": sum(c["pages"] for c in cuts),
        "names_undone": sum(c["names"] for c in cuts),
    }


def _digest(h: DeviceHistory, final: dict[str, Any] | None) -> dict[str, Any]:
    """One device's part of history.json."""
    return {
        "watermark": h.watermark,
        "boots": h.boots,
        "records": len(h.flushed),
        "executed": h.executed,
        "jumps": h.jumps,
        "floor": h.floor,
        "dropped": h.dropped,
        "bad_lines": h.bad_lines,
        "final": final,
    }


def _injected_line(f: Fault, ev: dict[str, Any]) -> str:
    """'fault 3: hub_pause on hub-1 (leader), hold 2.1 s'"""
    return (
        f"fault {f.n}: {f.kind} on {ev['target']}"
        + (" (leader)" if ev.get("leader") else "")
        + (" (it left first)" if ev.get("rejoin") else "")
        + (f", hold {f.hold_s:g} s" if f.hold_s else "")
        + (f", jump {f.jump_ms / 1000:+.1f} s" if f.jump_ms else "")
        + (
            f", {f.command_kill_ms} ms after a command"
            if f.kind == "device_power_cut" and f.command_kill_ms >= 0
            else ""
        )
    )


def _event_line(ev: dict[str, Any]) -> str:
    """'3 hub_pause hub-3 (leader) at 15.6 s: resumed in 3.17 s, ready 0.0 s'"""
    if "skipped" in ev:
        return f"{ev['n']} {ev['kind']} {ev['target']}: skipped, {ev['skipped']}"
    rec = ev.get("recovery_s")
    out = (
        f"{ev['n']} {ev['kind']} {ev['target']}"
        + (" (leader)" if ev.get("leader") else "")
        + (" (rejoin)" if ev.get("rejoin") else "")
        + f" at {ev['at_s']:g} s: "
        + (f"resumed in {rec:g} s" if rec is not None else "did not resume")
    )
    if ev.get("needs_ready"):
        ready = ev.get("ready_s")
        after = "later" if ev["kind"] in SPARE_KINDS else "after healing"  # no heal to wait for
        out += f", ready {ready:g} s {after}" if ready is not None else ", never ready"
    if "undone" in ev:
        u = ev["undone"]
        out += f", cut back {u['files']} files, {u['pages']} pages, {u['names']} names"
    if "export_at_heal" in ev:
        out += f", export at heal: {ev['export_at_heal']}"
    if ev.get("kind") == "cloud_kill":
        ready = ev.get("cloud_ready_s")
        out += f", cloud ready {ready:g} s after" if ready is not None else ", cloud never ready"
    if "enospc_answers" in ev:
        out += f", {ev['enospc_answers']} ENOSPC answers"
    if "followed" in ev:
        took = ev["followed_s"]
        out += f", orders naming it run by {ev['followed']} devices" + (
            f" in {took:g} s" if took is not None else ""
        )
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
    kinds: tuple[str, ...] = KINDS,
    power_cuts: int = 0,
    durable_journal: bool = True,
    cloud_nodes: int = 0,
) -> dict[str, Any]:
    """Make the schedule, run the campaign in ``workdir`` (a new temporary
    directory if None), return the summary. The directory is removed unless
    ``keep`` is set or the campaign found a violation (then ``workdir`` is in
    the summary). ``kinds``: the fault kinds to draw (schedule.py);
    ``power_cuts`` > 0: the power-cut run instead, that many cuts of every
    hub at once and nothing else (``duration_s`` is then ignored);
    ``cloud_nodes``: the site exports to a JetStream cloud of that many
    servers (0: none)."""
    if power_cuts > 0:
        schedule = power_cut_schedule(seed, power_cuts, hubs, devices)
    else:
        schedule = make_schedule(seed, duration_s, hubs, devices, kinds)
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
        schedule,
        root,
        use_netns,
        recovery_limit_s,
        log,
        before_checks,
        converge_limit_s,
        durable_journal,
        cloud_nodes,
    ).run()
    if keep or summary["violations"] or not own:
        summary["workdir"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return summary
