"""The decision engine: the Raft leader decides from applied readings.

    engine = DecisionEngine(hub, ruleset, guard, cfg.decisions)
    hub's on_applied -> engine.notice(results)     # batch results, on the loop
    task = asyncio.create_task(engine.run())

Every node follows the applied batches (it knows, per device, the last
sequence number it has looked at), but only the leader decides: a node that
becomes leader starts from the current watermarks, so history is never
decided twice, and rule state (how long a condition has held) starts afresh.

For each new reading the rules tier (hub/decide/rules.py) may fire. A firing with
an action is checked by the guard (hub/decide/guard.py); what the guard allows is
proposed together with its provenance as one GROUP entry (the COMMAND and
the DECISION commit together or not at all), so a command never enters the
ledger without the record of why. A blocked or alert-only firing is recorded
as a DECISION without a command. Delivery then takes the command to the
device like any other (hub/link/delivery.py).

Optional tiers plug in through ``scorers``: the ONNX anomaly tier feeds
scores back into the rules (rules on ``sensor = "anomaly"``), and the LLM
tier is consulted off the ingest path with a deadline (hub/decide/llm.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from hub.core.clock import wall_ms
from hub.core.config import DecisionsConfig
from hub.core.fsutil import sha256_file
from hub.core.tariff import NONE as NO_TARIFF
from hub.core.tariff import Tariff
from hub.core.validate import ConfigError
from hub.decide import facts as f
from hub.decide import llm
from hub.decide import rules as r
from hub.decide.anomaly import AnomalyError, DeviceWindows
from hub.decide.factwatch import FactWatch, State, power_state
from hub.decide.guard import Guard, Proposal, Verdict, load_guard
from hub.decide.policies import Policies, Policy
from hub.decide.registry import LLM_ADAPTER, Adapter, ModelRegistry
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import RaftError
from hub.state.store import Store

if TYPE_CHECKING:
    from hub.state.raft import RaftNode

log = logging.getLogger("aiot.engine")

_MAX_READINGS_PER_STEP: Final = 5000


class DecisionEngine:
    def __init__(
        self,
        raft: RaftNode,
        ruleset: r.RuleSet,
        guard: Guard,
        cfg: DecisionsConfig,
        clock: Callable[[], int] = wall_ms,
        models: ModelRegistry | None = None,
    ) -> None:
        self._raft = raft
        self.rules = r.Engine(ruleset)
        self._config_rules = ruleset  # the hub config's; rule sets from the registry add to them
        self.rule_sets: tuple[str, ...] = ()  # the active ones in use ("rules-x@3", ...)
        self.rules_error = ""  # why the active rule sets are not in use ("": they are)
        self._refused: tuple[str, ...] = ()  # the rule sets rules_error is about
        self.guard = guard
        self.cfg = cfg
        self._clock = clock
        self._seen: dict[str, int] = {}  # device -> last seq looked at
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._was_leader = False
        self._bound: set[str] = set()
        self.decided: dict[str, int] = {}  # by tier
        self.commands = 0
        self.blocked = 0
        self.failed = 0
        self.latency_s: list[float] = []  # reading committed -> decision proposed (last 1000)
        self.on_decision: Callable[[str, float], None] | None = None  # (tier, seconds)
        self._models = models
        self._windows: Any = None  # hub.anomaly.DeviceWindows, once a model is active
        self.scored = 0
        self.score_errors = 0
        self._last_score: dict[str, Any] = {}  # device -> last WindowScore
        self.llm: LlmTier | None = None

    # -- inputs -------------------------------------------------------------------------

    def notice(self, results: Iterable[ApplyResult]) -> None:
        any_batch = False
        for res in results:
            if res.type is e.EntryType.BATCH and res.outcome is Outcome.APPLIED and res.stored:
                self._dirty.add(res.device_id)
                any_batch = True
            elif res.type in (e.EntryType.REGISTER_DEVICE, e.EntryType.REMOVE_DEVICE):
                self._bound.discard(res.device_id)
                if res.type is e.EntryType.REMOVE_DEVICE:
                    self.rules.unbind(res.device_id)
                    self.guard.forget(res.device_id)
                    self._seen.pop(res.device_id, None)
        if any_batch:
            self._wake.set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            # Woken by applied batches, and twice a second to notice a
            # leadership change before the next batch arrives.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.step()
            except RaftError as exc:
                log.info("decisions paused: %s", exc)
                await asyncio.sleep(0.5)

    def follow_rule_sets(self) -> None:
        """Run the config's rules plus the registry's active rule sets (kind
        "rules", hub/decide/registry.py) once they change: the rules are
        replaced and every known device rebound; a rule that stays (same id
        and stream) keeps its state. A rule id defined twice keeps the rules
        as they were and says why (``rules_error``, the status)."""
        if self._models is None:
            return
        sets = self._models.rule_sets()
        names = tuple(name for name, _ in sets)
        if names == self.rule_sets or (self.rules_error and names == self._refused):
            return
        merged = self._config_rules
        try:
            for _, rs in sets:
                merged = merged + rs
        except ConfigError as exc:
            self._refused, self.rules_error = names, f"{', '.join(names)}: {exc}"
            log.error("rule sets not in use: %s", self.rules_error)
            return
        self.rule_sets, self.rules_error = names, ""
        for problem in self.rules.load(merged):
            log.warning("rule cannot run: %s", problem)
        log.info("rules in use: the config's and %s", ", ".join(names) or "no rule set")

    def follow_adapter(self) -> None:
        """Have the LLM tier run the registry's active LoRA adapter (kind
        "lora", named llm-adapter) on its base; the tier's own model is a base
        an adapter may name."""
        if self.llm is None or self._models is None:
            return
        self._models.bases.setdefault(self.llm.model_sha256, self.llm.model_path)
        loaded = self._models.active.get(LLM_ADAPTER)
        want = loaded.model if loaded is not None and isinstance(loaded.model, Adapter) else None
        base = None if want is None else self._models.base_path(want.base_sha256)
        path = None if want is None else (want.path or self._models.blob_path(want.sha256))
        self.llm.follow(want, base, path)

    async def step(self) -> None:
        self.follow_rule_sets()
        self.follow_adapter()
        leader = self._raft.status().is_leader
        dirty, self._dirty = self._dirty, set()
        if leader and not self._was_leader:
            # A new leader: decide from now on, never over history. Devices
            # registered later start from their first reading.
            def positions(s: Store) -> dict[str, int]:
                return {d.device_id: s.watermark(d.device_id) for d in s.devices()}

            self._seen = self._raft.read(positions)
            self._was_leader = True
            if self.llm is not None:  # each device's state seen from here is its baseline
                self.llm.factwatch.forget()
            log.info("decision engine active (this node leads)")
            return
        self._was_leader = leader
        for device_id in dirty:
            if not leader or not self.cfg.enabled:
                self._seen[device_id] = self._raft.read(
                    partial(Store.watermark, device_id=device_id)
                )
                continue
            await self._device(device_id)

    async def _device(self, device_id: str) -> None:
        t0 = time.monotonic()
        device = self._raft.read(lambda s: s.device(device_id))
        if device is None:
            return
        if device_id not in self._bound:
            for problem in self.rules.bind(device):
                log.warning("rule cannot run: %s", problem)
            self._bound.add(device_id)
        first = self._seen.get(device_id, 0)  # unknown: registered since this node leads
        rows = self._raft.read(
            lambda s: s.readings(device_id, first + 1, None, _MAX_READINGS_PER_STEP)
        )
        if not rows:
            return
        self._seen[device_id] = rows[-1].seq
        if len(rows) == _MAX_READINGS_PER_STEP:
            self._dirty.add(device_id)
            self._wake.set()
        fired: list[r.Decision] = []
        windows = self._anomaly_windows()
        for x in rows:
            fired.extend(self.rules.reading(device_id, x.sensor, x.ts_ms, x.value))
            if windows is not None:
                fired.extend(self._score(windows, device, x.ts_ms, x.sensor, x.value))
        for d in fired:
            await self._act(device, d, t0)
        if self.llm is not None:  # its facts changed with no rule firing
            self.llm.watch(self, device, rows)

    def _anomaly_windows(self) -> Any:
        """The ONNX tier's windows, with the registry's current model (the
        swap happens here, between two readings: no window is lost)."""
        model = None if self._models is None else self._models.current("anomaly")
        if model is None:
            return None
        if self._windows is None:
            self._windows = DeviceWindows(model)
        elif self._windows.model is not model:
            self._windows.model = model
        return self._windows

    def _score(
        self, windows: Any, device: e.Device, ts_ms: int, sensor: int, value: float
    ) -> list[r.Decision]:
        try:
            ws = windows.add(device.device_id, ts_ms, sensor, value, device.limit_w)
        except AnomalyError:
            self.score_errors += 1
            return []
        if ws is None:
            return []
        self.scored += 1
        self._last_score[device.device_id] = ws
        return list(self.rules.anomaly(device.device_id, ws.end_ms, ws.score))

    async def _act(self, device: e.Device, d: r.Decision, t0: float) -> None:
        now = self._clock()
        tier = e.Tier.ONNX if d.sensor == r.ANOMALY else e.Tier.RULES
        record: dict[str, Any] = {
            "rule": d.rule_id,
            "description": d.description,
            "facts": list(d.facts),
            "trigger": {
                "sensor": d.sensor,
                "value": d.value,
                "threshold": d.threshold,
                "ts_ms": d.ts_ms,
                "since_ms": d.since_ms,
            },
            "alert": d.alert,
        }
        if tier is e.Tier.ONNX:
            ws = self._last_score.get(device.device_id)
            if ws is not None:
                record["model"] = {"name": ws.model, "sha256": ws.model_sha256}
                record["score"] = round(ws.score, 6)
                model = self._models.current("anomaly") if self._models else None
                if model is not None:
                    unusual = model.unusual_features(ws.features)
                    record["facts"] = [*record["facts"], *(f"{u} is unusual" for u in unusual)]
        parts: list[bytes] = []
        command_id = ""
        if d.action is not None:
            proposal = Proposal(device.device_id, d.action, d.params, tier.name.lower())
            verdict: Verdict = self.guard.check(proposal, device, now)
            record["action"] = {"name": d.action, "params": {p.name: p.value for p in d.params}}
            record["guard"] = verdict.to_dict()
            if verdict.allowed:
                command_id = uuid.uuid4().hex[:16]
                term = self._raft.status().term
                deadline = now + self.cfg.command_deadline_s * 1000
                parts.append(e.encode(verdict.command(command_id, term, now, deadline)))
                self.commands += 1
            else:
                self.blocked += 1
        latency = time.monotonic() - t0
        record["latency_ms"] = round(latency * 1000, 3)
        decision_id = "d-" + uuid.uuid4().hex[:16]
        body = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()
        parts.append(
            e.encode(e.Decision(decision_id, device.device_id, tier, now, command_id, body))
        )
        try:
            results = await self._raft.propose(e.group(parts))
        except RaftError as exc:
            self.failed += 1
            log.warning("decision %s not recorded: %s", decision_id, exc.reason)
            return
        bad = [x for x in results if x.error is not None]
        if bad:
            self.failed += 1
            log.warning("decision %s refused: %s", decision_id, bad[0].reason)
            return
        if self.llm is not None and tier is not e.Tier.LLM:
            self.llm.consult(self, device, d, tier)
        key = tier.name.lower()
        self.decided[key] = self.decided.get(key, 0) + 1
        self.latency_s = [*self.latency_s[-999:], latency]
        if self.on_decision is not None:
            self.on_decision(key, latency)
        log.info(
            "decision device=%s tier=%s rule=%s action=%s command=%s",
            device.device_id,
            key,
            d.rule_id,
            d.action or "alert",
            command_id or "-",
        )

    def status(self) -> dict[str, Any]:
        return {
            "active": self._was_leader and self.cfg.enabled,
            "decided": dict(self.decided),
            "commands": self.commands,
            "blocked": self.blocked,
            "failed": self.failed,
            "guard": self.guard.stats(),
            "rule_problems": [str(p) for p in self.rules.problems()],
            "rule_sets": list(self.rule_sets),
            "rules_error": self.rules_error or None,
            "windows_scored": self.scored,
            "score_errors": self.score_errors,
            "llm": None if self.llm is None else self.llm.status(),
        }


def load(config_source: Any, cfg: DecisionsConfig) -> tuple[r.RuleSet, Guard]:
    """The rules and guard of the hub config file (ConfigError on anything wrong)."""
    return r.load_rules(config_source), Guard(load_guard(config_source))


@dataclass(frozen=True)
class LlmSetup:
    """What the LLM tier runs: a base GGUF, maybe a LoRA adapter, and the trust
    its eval report earns that pair."""

    base: Path
    base_sha256: str
    adapter: Adapter | None
    adapter_path: Path | None
    trust: llm.Trust

    @property
    def key(self) -> tuple[str, str]:
        return self.base_sha256, self.adapter.sha256 if self.adapter else ""


_RETRY_FAILED_S: Final = 30.0
_MAX_WAITING: Final = 1024  # devices whose consultation waits, at most
_PRIME_S: Final = 120.0  # a new worker's priming, at most (the old one serves meanwhile)
_PRIME_POLICIES: Final = 16  # the policies a new worker with an adapter reads first, at most


class LlmTier:
    """The LLM tier: consulted after a lower tier fires, or when a device's
    facts changed with no rule firing (``watch``), off the ingest path.

    One consultation at a time (the worker answers one request at a time):
    meanwhile the newest request of each device waits, and one that waited
    past the deadline is dropped (``missed``). The model gets
    symbolic facts (hub/decide/facts.py: "power is over the limit for 12 s"), the
    policy and the device's actions; its answer is grammar-constrained and
    validated (hub/decide/llm.py). It is recorded as an LLM decision with its
    provenance. It actuates only when the trust gate says its measured
    accuracy reaches the threshold; otherwise it is advisory: the
    recommendation is recorded and the tiers below keep acting. A missed
    deadline or an invalid answer is recorded as a fallback and changes
    nothing.

    It follows the registry's active LoRA adapter (``follow``): a second
    worker loads base + adapter while the first keeps answering, then takes
    its place; a consultation in flight finishes on the old one, which is
    closed after it. An adapter that does not load leaves the running pair.
    """

    def __init__(self, model_path: Any, cfg: DecisionsConfig, report_path: Any) -> None:
        self._llm = llm
        self.cfg = cfg
        self.model_path = model_path
        self.model_sha256 = sha256_file(model_path)
        self._report_path = report_path
        self.tariff: Tariff = NO_TARIFF  # the hub's [tariff]: local time and period facts
        self.setup = self.plan(None, None)
        self.worker: Any = None
        self._starting: asyncio.Task[None] | None = None
        self._switching: asyncio.Task[None] | None = None
        self._failed: tuple[tuple[str, str], float] | None = None  # (key, when)
        self._busy = False
        self._current: tuple[Any, asyncio.Task[None]] | None = None  # (worker, consultation)
        self.consulted = 0
        self.skipped = 0
        self.swaps = 0
        self.primed = 0  # workers primed with the newest consultation's prompt (loads, swaps)
        self.primed_policies = 0  # policies a new worker read or evaluated before it took over
        # (capabilities, policy text) of the newest consultations, oldest first:
        # what a new worker evaluates before it takes over
        self._recent: dict[str, tuple[tuple[Any, ...], str]] = {}
        self.outcomes: dict[str, int] = {}
        self.error = ""
        self.adapter_error = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self.factwatch = FactWatch()
        self._over_since: dict[str, int] = {}  # device -> when its power went over the limit
        # device -> (engine, device, decision, tier, since): the newest request
        # of each device while a consultation runs (insertion order: oldest first)
        self._waiting: dict[str, tuple[Any, e.Device, r.Decision, e.Tier | None, float]] = {}
        self.missed = 0

    @property
    def trust(self) -> llm.Trust:
        return self.setup.trust

    def plan(
        self, adapter: Adapter | None, base: Path | None, path: Path | None = None
    ) -> LlmSetup:
        """The setup for ``adapter`` (None: the configured model alone) on ``base``;
        its eval report is the one in the adapter's signed manifest."""
        if adapter is None or base is None:
            report = llm.load_report(self._report_path)
            base_path, base_sha, adapter = self.model_path, self.model_sha256, None
        else:
            report, base_path, base_sha = adapter.report, base, adapter.base_sha256
        t = llm.trust(
            report,
            model_sha256=base_sha,
            adapter_sha256=adapter.sha256 if adapter else "",
            threshold=self.cfg.llm_trust_threshold,
        )
        return LlmSetup(base_path, base_sha, adapter, path if adapter else None, t)

    def follow(self, adapter: Adapter | None, base: Path | None, path: Path | None) -> None:
        """Run ``adapter`` on ``base`` from now on (None: the configured model
        alone); the engine calls it each step, on every node."""
        if adapter is None or base is None:
            key = (self.model_sha256, "")
        else:
            key = (adapter.base_sha256, adapter.sha256)
        if key == self.setup.key or self._switching is not None or self._starting_now():
            return
        failed = self._failed
        if failed and failed[0] == key and time.monotonic() - failed[1] < _RETRY_FAILED_S:
            return
        want = self.plan(adapter, base, path)
        if self.worker is None:  # not loaded yet: the first use loads this one
            self.setup, self.error, self._starting = want, "", None
            return
        self._switching = asyncio.create_task(self._switch(want))

    def _starting_now(self) -> bool:
        return self._starting is not None and not self._starting.done()

    async def _spawn(self, s: LlmSetup) -> Any:
        worker = self._llm.LlmWorker(
            s.base,
            expected_sha256=s.base_sha256,
            lora_path=s.adapter_path,
            lora_sha256=s.adapter.sha256 if s.adapter else "",
        )
        await worker.start()
        return worker

    async def _switch(self, new: LlmSetup) -> None:
        try:
            try:
                worker = await self._spawn(new)
            except Exception as exc:  # the running pair stays
                self._failed = (new.key, time.monotonic())
                self.adapter_error = f"{self._describe(new)}: {exc}"
                log.error("LLM tier keeps %s: %s", self._describe(self.setup), self.adapter_error)
                return
            await self._prime(worker, new)
            old, self.worker, self.setup = self.worker, worker, new
            self.adapter_error, self._failed = "", None
            self.swaps += 1
            log.info("LLM tier runs %s (%s)", self._describe(new), new.trust.reason)
            cur = self._current
            if cur is not None and cur[0] is old and not cur[1].done():
                await asyncio.wait({cur[1]})  # the consultation in flight ends on the old one
            if old is not None:
                await old.aclose()
        finally:
            self._switching = None

    def _remember(self, caps: Sequence[Any], policy: str) -> None:
        key = json.dumps([str(c) for c in caps]) + "\n" + policy
        self._recent.pop(key, None)
        self._recent[key] = (tuple(caps), policy)
        while len(self._recent) > _PRIME_POLICIES:
            self._recent.pop(next(iter(self._recent)))

    async def _prime(self, worker: Any, s: LlmSetup) -> None:
        """Before ``worker`` takes over, while the old one still answers (or,
        for the first worker, before it answers at all): with an adapter, have
        it read the policies of the newest consultations (up to 16, newest
        first), so none of their first decisions waits for a reading; with
        the base alone, evaluate the newest consultation's static prompt (its
        device's actions and policy: llama.cpp keeps one prefix). A failure
        only costs those first decisions the time of the reading or prompt."""
        recent = list(reversed(self._recent.values()))[: 1 if s.adapter is None else None]
        deadline = time.monotonic() + _PRIME_S
        for i, (caps, policy) in enumerate(recent):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError(f"{len(recent) - i} policies left unread")
                await worker.prime(caps, policy, timeout_s=left)
            except Exception as exc:  # ModelError, a worker that died, no time left
                log.warning("LLM tier: priming %s failed: %s", self._describe(s), exc)
                return
            self.primed_policies += 1
            if i == 0:
                self.primed += 1

    @staticmethod
    def _describe(s: LlmSetup) -> str:
        return f"{s.base.name}" + (f" + {s.adapter.name}" if s.adapter else "")

    async def _start(self) -> None:
        try:
            worker = await self._spawn(self.setup)
        except Exception as exc:  # a model that does not load: the tier stays off
            self.error = str(exc)
            log.error("the LLM tier is off: %s", exc)
            return
        await self._prime(worker, self.setup)  # with the consultation that asked for it
        self.worker = worker
        log.info("LLM tier ready: %s (%s)", self._describe(self.setup), self.trust.reason)

    def watch(self, engine: DecisionEngine, device: e.Device, rows: Sequence[Any]) -> None:
        """After the engine read a device's new readings: consult the LLM when
        the device's state (hub/decide/factwatch.py) changed, though no rule
        fired: its policy in words may ask for what no rule does."""
        power = next((x for x in reversed(rows) if x.sensor == r.POWER_W), None)
        if power is None:
            return
        state = power_state(power.value, device.limit_w)
        since = self._over_since.pop(device.device_id, power.ts_ms)
        if state == "over":
            self._over_since[device.device_id] = since
        score = engine._last_score.get(device.device_id)
        now = State(
            state,
            None if score is None else score.score >= f.ANOMALY_HIGH,
            self.tariff.period_at(power.ts_ms),
            engine.guard.is_critical(device.device_id),
        )
        if self.factwatch.observe(device.device_id, now, power.ts_ms):
            d = r.Decision(
                "", device.device_id, None, (), (), power.ts_ms, False, r.POWER_W,
                power.value, device.limit_w or 0.0, since,
            )  # fmt: skip
            self.consult(engine, device, d, None)

    def consult(
        self, engine: DecisionEngine, device: e.Device, d: r.Decision, tier: e.Tier | None
    ) -> None:
        """Ask the LLM about ``d`` (after ``tier`` fired; None: the device's
        facts changed). While a consultation runs, the newest request of each
        device waits; one that waited past the deadline is dropped (``missed``:
        the tiers below stand)."""
        if self.error:
            return
        if self.worker is None:
            if self._starting is None:  # loaded on first use, by the leader only
                with contextlib.suppress(RaftError):  # then loaded unprimed
                    self._remember(device.capabilities, self._policy(engine, device).text)
                self._starting = asyncio.create_task(self._start())
            self.skipped += 1
            return
        if self._busy:
            self._waiting.pop(device.device_id, None)  # the newest goes last
            self._waiting[device.device_id] = (engine, device, d, tier, time.monotonic())
            if len(self._waiting) > _MAX_WAITING:
                self._waiting.pop(next(iter(self._waiting)))
                self.missed += 1
            return
        self._busy = True
        worker, setup = self.worker, self.setup
        task = asyncio.create_task(self._consult(engine, device, d, tier, worker, setup))
        self._current = (worker, task)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def facts(self, engine: DecisionEngine, device: e.Device, d: r.Decision) -> list[str]:
        """What the lower tiers state about the device now, in the hub's own
        sentences (hub/decide/facts.py): power against the limit and the
        rule's grace period, the anomaly score, the relay, critical, the local
        time and the tariff period (``[tariff]``: its zone; a period only with
        time-of-use prices)."""
        out = []
        power = power_state(d.value, device.limit_w) if d.sensor == r.POWER_W else None
        if power == "over":
            held_ms = d.ts_ms - d.since_ms
            out.append(f.power_fact(over_for_s=held_ms / 1000))
            grace_ms = next(
                (x.for_ms for x in engine.rules.ruleset.rules if x.rule_id == d.rule_id), 0
            )
            if grace_ms:
                out.append(f.grace_fact(longer=held_ms >= grace_ms))
        elif d.sensor == r.POWER_W:  # near or under the limit (no limit: near)
            out.append(f.power_fact(near=power != "under"))
        if d.sensor == r.ANOMALY:
            out.append(f.anomaly_fact(d.value))
        out.append(f.relay_fact(True))  # it draws power, so its relay is on
        if engine.guard.is_critical(device.device_id):
            out.append(f.critical_fact())
        local = self.tariff.local(d.ts_ms)
        out.append(f.time_fact(local.hour * 60 + local.minute))
        period = self.tariff.period_at(d.ts_ms)
        if period is not None:
            out.append(f.tariff_fact(period))
        return out

    async def _consult(
        self,
        engine: DecisionEngine,
        device: e.Device,
        d: r.Decision,
        tier: e.Tier | None,
        worker: Any,
        setup: LlmSetup,
    ) -> None:
        try:
            facts = self.facts(engine, device, d)
            # The device class's policy in words (docs/llm.md "Operator policies").
            policy = self._policy(engine, device)
            self._remember(device.capabilities, policy.text)
            result = await worker.decide(
                device.capabilities, facts, policy.text, deadline_ms=self.cfg.llm_deadline_ms
            )
            self.consulted += 1
            outcome = str(result.outcome)
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            await self._record(engine, device, d, tier, facts, result, setup, policy)
        except RaftError as exc:
            log.info("LLM decision not recorded: %s", exc.reason)
        finally:
            self._busy = False
            self._next()

    def _policy(self, engine: DecisionEngine, device: e.Device) -> Policy:
        return engine._raft.read(lambda s: Policies(self.cfg).of_device(s, device.device_id))

    def _next(self) -> None:
        """Start the oldest waiting consultation still within its deadline."""
        while self._waiting:
            engine, device, d, tier, since = self._waiting.pop(next(iter(self._waiting)))
            if (time.monotonic() - since) * 1000 > self.cfg.llm_deadline_ms:
                self.missed += 1
                continue
            self.consult(engine, device, d, tier)
            return

    async def _record(
        self,
        engine: DecisionEngine,
        device: e.Device,
        d: r.Decision,
        tier: e.Tier | None,
        facts: list[str],
        result: Any,
        setup: LlmSetup,
        policy: Policy,
    ) -> None:
        now = engine._clock()
        adapter = setup.adapter
        record: dict[str, Any] = {
            "facts": facts,
            "after": {"tier": "facts", "rule": None}
            if tier is None
            else {"tier": tier.name.lower(), "rule": d.rule_id},
            "policy": policy.text,
            "policy_source": policy.source,
            "mode": str(setup.trust.mode),
            "trust": setup.trust.reason,
            "llm": result.provenance.to_json(),
            "model": {
                "name": result.provenance.model_name,
                "sha256": result.provenance.model_sha256,
                "adapter": None
                if adapter is None
                else {"name": adapter.name, "sha256": result.provenance.adapter_sha256},
            },
            "latency_ms": result.provenance.latency_ms,
            "alert": False,
        }
        parts: list[bytes] = []
        command_id = ""
        if result.fallback:
            record["fallback"] = f"{result.outcome}: the tier below stands"
        else:
            dec = result.decision
            record["recommendation"] = {
                "action": dec.action,
                "params": {p.name: p.value for p in dec.params},
                "reason": dec.reason,
            }
            if not dec.is_none and setup.trust.may_actuate:
                proposal = Proposal(device.device_id, dec.action, dec.params, "llm")
                verdict = engine.guard.check(proposal, device, now)
                record["action"] = {
                    "name": dec.action,
                    "params": record["recommendation"]["params"],
                }
                record["guard"] = verdict.to_dict()
                if verdict.allowed:
                    command_id = uuid.uuid4().hex[:16]
                    deadline = now + engine.cfg.command_deadline_s * 1000
                    term = engine._raft.status().term
                    parts.append(e.encode(verdict.command(command_id, term, now, deadline)))
        decision = e.Decision(
            "d-" + uuid.uuid4().hex[:16], device.device_id, e.Tier.LLM, now, command_id,
            _record_body(record),
        )  # fmt: skip
        parts.append(e.encode(decision))
        results = await engine._raft.propose(e.group(parts))
        if all(x.error is None for x in results):
            engine.decided["llm"] = engine.decided.get("llm", 0) + 1
            if engine.on_decision is not None:
                engine.on_decision("llm", result.provenance.latency_ms / 1000)

    def status(self) -> dict[str, Any]:
        s = self.setup
        return {
            "model": s.base.name,
            "ready": self.worker is not None,
            "mode": str(s.trust.mode),
            "trust": s.trust.reason,
            "base_sha256": s.base_sha256,
            "adapter": None if s.adapter is None else s.adapter.name,
            "adapter_sha256": None if s.adapter is None else s.adapter.sha256,
            "adapter_error": self.adapter_error or None,
            "swaps": self.swaps,
            "primed": self.primed,
            "primed_policies": self.primed_policies,
            "consulted": self.consulted,
            "skipped": self.skipped,
            "fact_changes": self.factwatch.changes,
            "waiting": len(self._waiting),
            "missed": self.missed,
            "outcomes": dict(self.outcomes),
            "error": self.error or None,
        }

    async def aclose(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._switching is not None:
            self._switching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._switching
        if self.worker is not None:
            await self.worker.aclose()


_RECORD_MAX: Final = 30_000  # bytes of an LLM decision's record (e.Decision's limit is larger)


def _record_body(record: dict[str, Any]) -> bytes:
    """The record as JSON within _RECORD_MAX: a long policy is cut (and said so),
    never the JSON itself."""

    def dumps(x: dict[str, Any]) -> bytes:
        return json.dumps(
            x, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode()

    body = dumps(record)
    if len(body) > _RECORD_MAX:
        text = str(record.get("policy", ""))
        body = dumps({**record, "policy": text[:1000] + " ...", "policy_cut": len(text)})
    if len(body) > _RECORD_MAX:  # facts and the answer are bounded: not expected
        body = dumps({"error": "record too long", "mode": record.get("mode")})
    return body


def llm_tier(cfg: DecisionsConfig, models_dir: Path = llm.MODELS_DIR) -> LlmTier | None:
    """The LLM tier the config asks for, or None (off, or not installed: logged).

    A model name is looked up in ``models_dir`` (the hub's shipped models,
    ``[models] shipped_dir``), as is its eval report unless one is configured."""
    if not cfg.llm:
        return None
    if not llm.llama_cpp_available():
        log.warning(
            "decisions.llm is %s but llama-cpp-python is missing: %s", cfg.llm, llm.INSTALL_HINT
        )
        return None
    try:
        path = llm.resolve_model(cfg.llm, models_dir)
    except llm.ModelError as exc:
        log.warning("the LLM tier is off: %s", exc)
        return None
    report = cfg.llm_report or models_dir / "eval" / "results" / f"{llm.model_name(path)}.json"
    return LlmTier(path, cfg, report)
