"""Prometheus metrics, liveness and readiness for one hub node.

    metrics.for_hub(hub).render()       # hub/http/routes/probes.py: GET /metrics
    metrics.readiness(hub)              # hub/http/routes/probes.py: GET /readyz
    metrics.applied(hub, results)       # hub/daemon.py Hub._applied, on the event loop
    metrics.observe_decision("onnx", 0.004)     # the decision engine, per decision
    metrics.count_model_load("anomaly", ok=True)   # the model registry, per load

``hub`` is anything that has what ``Observed`` declares (hub/daemon.py's Hub
is one). Every node serves, without authentication (hub/http/routes/probes.py):

    GET /metrics    Prometheus text format (0.0.4)
    GET /healthz    200 while the process answers: liveness
    GET /readyz     200 when this node can take work: Raft is ready, has a
                    leader and a quorum, the store is not halted, and the
                    node's MQTT consumer is connected; 503 with the reasons

None of the three needs a token, so a Prometheus server or a load
balancer can use them as they are; bind the HTTP port to a trusted network
(or put the API behind a proxy that exposes only what it should). What
they show is operational: counts, indices, reasons; no device key, no
reading, no user.

Each hub has its own ``CollectorRegistry`` (never prometheus-client's global
one), so several hubs in one process, as in tests, do not mix. Most values
are read from the hub at scrape time by one custom collector: ingest and
delivery counters, Raft status, broker counters, file sizes. What needs the
store (commands by ledger state, devices online) is counted by a scan in a
worker thread, at most every ``STORE_SCAN_MIN_S`` seconds and never more
often than 20 times its own duration, so a large ledger cannot turn scrapes
into load; ``aiot_store_scan_age_seconds`` says how old those values are.

Decisions and model loads are counted per process (the decision engine is
one per daemon), and every hub registry in the process exports them; they
are zero until the engine calls the two hooks. The metric names are the
table in docs/observability.md; tools/grafana/aiot.json uses them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from hub.core.config import HubConfig
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.raft import DUMP_FILE, JOURNAL_FILE, STORE_DIR, RaftNode
from hub.state.store import DATA_FILE, Store
from protocol import messages as m

if TYPE_CHECKING:
    from hub.link.consumer import Consumer
    from hub.link.delivery import Delivery
    from hub.link.ingest import Ingest

log = logging.getLogger("hub.metrics")

STORE_SCAN_MIN_S: Final = 5.0
DECISION_TIERS: Final = ("rules", "onnx", "llm", "operator")
# Rules answer in microseconds, ONNX in milliseconds, the LLM in up to seconds.
DECISION_BUCKETS: Final = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


# -- what the metrics read from a hub node ------------------------------------------------


class BrokerCounters(Protocol):
    """The counters of this node's supervised broker."""

    restarts: int
    reloads: int


class Observed(Protocol):
    """What the metrics, liveness and readiness read from one hub node."""

    node_id: str
    cfg: HubConfig
    started_at: float
    raft: RaftNode
    ingest: Ingest
    delivery: Delivery
    consumer: Consumer

    @property
    def broker(self) -> BrokerCounters | None: ...  # None: an external broker
    @property
    def consumer_connected(self) -> bool: ...
    @property
    def status_rejects(self) -> Mapping[str, int]: ...


# -- decisions and model loads (per process) ---------------------------------------------


@dataclass(slots=True)
class _Latency:
    buckets: list[int] = field(default_factory=lambda: [0] * len(DECISION_BUCKETS))
    count: int = 0
    total_s: float = 0.0


class _DecisionStats:
    """What the decision engine reported; any thread may call in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latency: dict[str, _Latency] = {t: _Latency() for t in DECISION_TIERS}
        self._loads: dict[tuple[str, bool], int] = {}

    def observe(self, tier: str, latency_s: float) -> None:
        tier = tier.strip().lower() or "unknown"
        latency_s = max(0.0, float(latency_s))
        with self._lock:
            lat = self._latency.setdefault(tier, _Latency())
            i = bisect.bisect_left(DECISION_BUCKETS, latency_s)
            if i < len(DECISION_BUCKETS):
                lat.buckets[i] += 1
            lat.count += 1
            lat.total_s += latency_s

    def model_load(self, name: str, ok: bool) -> None:
        with self._lock:
            key = (name, bool(ok))
            self._loads[key] = self._loads.get(key, 0) + 1

    def families(self) -> Iterator[Metric]:
        with self._lock:
            latency = {t: (list(v.buckets), v.count, v.total_s) for t, v in self._latency.items()}
            loads = dict(self._loads)
        decisions = CounterMetricFamily(
            "aiot_decisions", "Decisions taken by this node, by tier.", labels=["tier"]
        )
        hist = HistogramMetricFamily(
            "aiot_decision_latency_seconds",
            "Time from the applied batch to the decision, by tier.",
            labels=["tier"],
        )
        for tier, (buckets, count, total) in sorted(latency.items()):
            decisions.add_metric([tier], count)
            cumulative, rows = 0, []
            for le, n in zip(DECISION_BUCKETS, buckets, strict=True):
                cumulative += n
                rows.append((repr(float(le)), float(cumulative)))
            rows.append(("+Inf", float(count)))
            hist.add_metric([tier], rows, total)
        model = CounterMetricFamily(
            "aiot_model_loads",
            "Model loads (and hot reloads) by model and result.",
            labels=["model", "result"],
        )
        for (name, ok), n in sorted(loads.items()):
            model.add_metric([name, "ok" if ok else "failed"], n)
        yield decisions
        yield hist
        yield model


_DECISIONS = _DecisionStats()


def observe_decision(tier: str, latency_s: float) -> None:
    """Count one decision of ``tier`` (rules, onnx, llm, operator) that took
    ``latency_s`` seconds. Thread-safe and cheap (a lock and a bisect)."""
    _DECISIONS.observe(tier, latency_s)


def count_model_load(name: str, ok: bool) -> None:
    """Count one load of model ``name``: ``ok`` False for a load that failed
    verification or raised (the old model kept serving)."""
    _DECISIONS.model_load(name, ok)


# -- what needs the store ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCounts:
    commands: dict[str, int]  # ledger state name -> commands of registered devices
    registered: int
    online: int  # presence ONLINE, any node
    here: int  # presence ONLINE on this node
    at: float  # time.monotonic() of the scan
    took_s: float


def scan_store(raft: RaftNode, node_id: str) -> StoreCounts:
    """Count commands by state and devices by presence, one device per read
    (the store lock is never held for the whole scan)."""
    t0 = time.monotonic()
    states = dict.fromkeys((s.name for s in e.LedgerState), 0)
    online = here = 0
    devices = raft.read(Store.devices)
    for d in devices:

        def one(s: Store, device_id: str = d.device_id) -> tuple[Any, list[e.LedgerState]]:
            return s.presence(device_id), [r.state for r in s.commands(device_id)]

        presence, ledger = raft.read(one)
        for st in ledger:
            states[st.name] = states.get(st.name, 0) + 1
        if presence is not None and presence.state is m.LinkState.ONLINE:
            online += 1
            here += presence.node_id == node_id
    now = time.monotonic()
    return StoreCounts(states, len(devices), online, here, now, now - t0)


def _file_size(path: Path) -> float:
    try:
        return float(os.stat(path).st_size)
    except OSError:
        return 0.0


# -- the per-hub metrics -----------------------------------------------------------------


class HubMetrics:
    """One node's registry: the custom collector, the HTTP and apply counters."""

    def __init__(self, hub: Observed) -> None:
        self._hub: weakref.ref[Observed] = weakref.ref(hub)
        self.node_id = hub.node_id
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = Counter(
            "aiot_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.apply_entries = Counter(
            "aiot_apply_entries",
            "Raft entries (and GROUP parts) applied to this node's store, by type and outcome.",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.apply_rejected = Counter(
            "aiot_apply_rejected",
            "Entries the store rejected at apply, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.readings_applied = Counter(
            "aiot_readings_applied",
            "New readings stored by apply on this node (every batch of the cluster).",
            registry=self.registry,
        )
        self.ingest_readings = Counter(
            "aiot_ingest_readings",
            "New readings stored from batches this node received (its own ingest).",
            registry=self.registry,
        )
        self.store: StoreCounts | None = None
        self._scan_lock = asyncio.Lock()
        ProcessCollector(registry=self.registry)
        self.registry.register(_HubCollector(self))

    @property
    def hub(self) -> Observed | None:
        return self._hub()

    def applied(self, results: Iterable[ApplyResult]) -> None:
        """Count applied results (on the event loop; see ``applied``)."""
        for r in results:
            kind = "unknown" if r.type is None else r.type.name.lower()
            self.apply_entries.labels(kind, r.outcome.value).inc()
            if r.outcome is Outcome.REJECTED:
                self.apply_rejected.labels(r.reason or "unknown").inc()
            if r.stored:
                self.readings_applied.inc(r.stored)
                if r.node_id == self.node_id:
                    self.ingest_readings.inc(r.stored)

    async def refresh_store(self) -> None:
        """Rescan the store when the last scan is old enough (one at a time)."""
        hub = self.hub
        if hub is None:
            return
        raft = hub.raft
        async with self._scan_lock:
            last = self.store
            if last is not None:
                wait = max(STORE_SCAN_MIN_S, 20 * last.took_s)
                if time.monotonic() - last.at < wait:
                    return
            try:
                self.store = await asyncio.to_thread(scan_store, raft, hub.node_id)
            except Exception:  # the store closing under us, a halted node: keep the old values
                log.warning("metrics: store scan failed", exc_info=True)

    async def render(self) -> bytes:
        await self.refresh_store()
        return generate_latest(self.registry)


# The hub's own counters, read at scrape time: (name, help, value).
_COUNTERS: Final[tuple[tuple[str, str, Callable[[Observed], int]], ...]] = (
    (
        "aiot_ingest_acked_batches",
        "Uplink batches committed, applied here and acknowledged to the device.",
        lambda h: h.ingest.acked,
    ),
    (
        "aiot_ingest_proposals",
        "Raft proposals of grouped batches made by ingest.",
        lambda h: h.ingest.batcher.proposals,
    ),
    (
        "aiot_command_publications",
        "Signed commands published to devices by this node (resends included).",
        lambda h: h.delivery.published,
    ),
    (
        "aiot_command_results",
        "Device command results received and proposed by this node.",
        lambda h: h.delivery.results,
    ),
    (
        "aiot_broker_restarts",
        "Restarts of this node's supervised broker.",
        lambda h: 0 if h.broker is None else h.broker.restarts,
    ),
    (
        "aiot_broker_reloads",
        "Credential and ACL reloads of this node's broker.",
        lambda h: 0 if h.broker is None else h.broker.reloads,
    ),
)
# Refusals counted by reason: (name, help, counts).
_BY_REASON: Final[tuple[tuple[str, str, Callable[[Observed], Mapping[str, int]]], ...]] = (
    (
        "aiot_ingest_rejected",
        "Uplink messages refused by ingest, by reason (hub/link/ingest.py REASONS).",
        lambda h: h.ingest.counters,
    ),
    (
        "aiot_ingest_proposal_failures",
        "Valid batches whose Raft proposal failed, by reason (per message).",
        lambda h: h.ingest.failures,
    ),
    (
        "aiot_device_rate_limited",
        "Device messages dropped by the per-device token buckets, by channel.",
        lambda h: h.ingest.limited,
    ),
    (
        "aiot_status_rejected",
        "Device status messages refused, by reason.",
        lambda h: h.status_rejects,
    ),
    (
        "aiot_command_results_rejected",
        "Device command results refused, by reason.",
        lambda h: h.delivery.rejected,
    ),
    (
        "aiot_command_resends",
        "Device refusals answered by resending the command (busy, stale_term), by reason.",
        lambda h: h.delivery.resends,
    ),
)


class _HubCollector(Collector):
    """Reads the hub's own counters and Raft state at scrape time."""

    def __init__(self, metrics: HubMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        hub = self._m.hub
        if hub is None:
            return []
        out: list[Metric] = []
        out.extend(self._node(hub))
        out.extend(CounterMetricFamily(name, doc, value(hub)) for name, doc, value in _COUNTERS)
        out.extend(_by_reason(name, doc, counts(hub)) for name, doc, counts in _BY_REASON)
        out.extend(self._raft(hub))
        out.extend(self._store(hub))
        out.append(
            GaugeMetricFamily(
                "aiot_broker_consumer_connected",
                "1 if the hub's MQTT consumer is connected to this node's broker.",
                float(hub.consumer_connected),
            )
        )
        out.append(
            GaugeMetricFamily(
                "aiot_broker_consumer_held",
                "Messages the hub's MQTT consumer holds (in hand and received, waiting); "
                "what the broker has not sent it waits in the broker (hub/link/consumer.py).",
                float(hub.consumer.held),
            )
        )
        out.append(
            GaugeMetricFamily(
                "aiot_broker_consumer_held_peak",
                "The most messages the hub's MQTT consumer has held at once since it started.",
                float(hub.consumer.held_peak),
            )
        )
        out.append(
            CounterMetricFamily(
                "aiot_broker_consumer_shed",
                "Messages the hub's MQTT consumer dropped on arrival, past what it holds "
                "(QoS 1 ones acknowledged unread; the device resends).",
                float(hub.consumer.shed),
            )
        )
        out.extend(_DECISIONS.families())
        return out

    def _node(self, hub: Observed) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "aiot_node_info", "This hub node (always 1).", labels=["node", "broker_mode"]
        )
        info.add_metric([hub.node_id, hub.cfg.broker.mode], 1)
        yield info
        yield GaugeMetricFamily(
            "aiot_uptime_seconds", "Seconds since the daemon started.", time.time() - hub.started_at
        )

    def _raft(self, hub: Observed) -> Iterator[Metric]:
        raft = hub.raft
        st = raft.status()
        quorum = has_quorum(raft)
        if quorum is None:  # pysyncobj busy: report what the status says
            quorum = st.leader is not None
        gauges: list[tuple[str, str, float]] = [
            ("aiot_raft_term", "Current Raft term.", st.term),
            ("aiot_raft_commit_index", "Raft commit index.", st.commit_index),
            ("aiot_raft_applied_index", "Raft last applied index (pysyncobj's).", st.applied_index),
            (
                "aiot_raft_store_applied_index",
                "Last Raft index the store recorded as applied.",
                st.store_applied_index,
            ),
            (
                "aiot_raft_lag",
                "Entries committed but not yet applied here (commit - applied).",
                max(0, st.commit_index - st.applied_index),
            ),
            ("aiot_raft_is_leader", "1 if this node leads.", float(st.is_leader)),
            (
                "aiot_raft_has_leader",
                "1 if this node knows a leader.",
                float(st.leader is not None),
            ),
            ("aiot_raft_has_quorum", "1 if this node reaches a majority.", float(quorum)),
            ("aiot_raft_ready", "1 once this node caught up with the leader.", float(st.ready)),
            ("aiot_raft_halted", "1 if apply failed and the node stopped.", float(bool(st.halted))),
            (
                "aiot_raft_journal_behind_store",
                "Entries the store applied that the journal lost (power-loss window).",
                st.journal_behind_store,
            ),
            (
                "aiot_raft_journal_room",
                "0 while a journal write waits for disk space (the disk is full).",
                float(st.journal_room),
            ),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value)
        yield CounterMetricFamily(
            "aiot_raft_snapshots_taken", "Snapshots written (compaction).", st.snapshots_taken
        )
        yield CounterMetricFamily(
            "aiot_raft_snapshots_installed",
            "Snapshots installed from a leader or at startup.",
            st.snapshots_installed,
        )
        yield CounterMetricFamily(
            "aiot_raft_journal_flushes_total",
            "Raft journal syncs (entry groups, deletes, term and vote) before acting on them.",
            st.journal_flushes,
        )
        yield CounterMetricFamily(
            "aiot_raft_journal_flush_seconds_total",
            "Seconds spent in those syncs.",
            st.journal_flush_seconds,
        )
        yield CounterMetricFamily(
            "aiot_raft_disk_full_step_downs",
            "Times this node stepped down as leader because its disk or store was full.",
            st.disk_full_step_downs,
        )
        files = GaugeMetricFamily(
            "aiot_data_file_bytes", "Size of this node's data files.", labels=["file"]
        )
        files.add_metric(["lmdb"], _file_size(raft.data_dir / STORE_DIR / DATA_FILE))
        files.add_metric(["journal"], _file_size(raft.data_dir / JOURNAL_FILE))
        files.add_metric(["dump"], _file_size(raft.data_dir / DUMP_FILE))
        yield files

    def _store(self, hub: Observed) -> Iterator[Metric]:
        counts = self._m.store
        states = dict.fromkeys((s.name for s in e.LedgerState), 0)
        if counts is not None:
            states.update(counts.commands)
        commands = GaugeMetricFamily(
            "aiot_commands",
            "Commands of registered devices in the replicated ledger, by state.",
            labels=["state"],
        )
        for state, n in sorted(states.items()):
            commands.add_metric([state], n)
        yield commands
        c = counts or StoreCounts({}, 0, 0, 0, 0.0, 0.0)
        yield GaugeMetricFamily("aiot_devices_registered", "Devices in the registry.", c.registered)
        yield GaugeMetricFamily(
            "aiot_devices_online",
            "Devices whose replicated presence is ONLINE, on any node (cluster-wide).",
            c.online,
        )
        yield GaugeMetricFamily(
            "aiot_devices_connected",
            "Devices whose replicated presence is ONLINE on this node's broker.",
            c.here,
        )
        yield GaugeMetricFamily(
            "aiot_store_scan_age_seconds",
            "Age of the store counts above (commands, devices); -1 before the first scan.",
            -1.0 if counts is None else time.monotonic() - counts.at,
        )
        yield GaugeMetricFamily(
            "aiot_store_scan_seconds", "Duration of the last store scan.", c.took_s
        )
        yield from _space(hub)
        yield from _cloud(hub)


def _cloud(hub: Observed) -> Iterator[Metric]:
    """The site's export to the cloud (hub/link/cloudlink.py), when [cloud] is set."""
    link = getattr(hub, "cloudlink", None)
    if link is None:
        return
    st = link.status()
    for name, doc, key in (
        (
            "aiot_cloud_export_lag_seconds",
            "Age of the oldest committed entry not yet exported (0: none waits).",
            "lag_s",
        ),
        (
            "aiot_cloud_exported_index",
            "The export cursor: the last Raft index exported.",
            "exported_index",
        ),
        (
            "aiot_cloud_export_first_unexported_index",
            "The Raft index of the oldest entry waiting for export (0: none).",
            "first_unexported_index",
        ),
    ):
        yield GaugeMetricFamily(name, doc, float(st[key] or 0))
    yield GaugeMetricFamily(
        "aiot_cloud_export_alert",
        "1 while the export lag is over [cloud] lag_alert_s.",
        float(bool(st["alert"])),
    )
    yield GaugeMetricFamily(
        "aiot_cloud_connected",
        "1 while this node is connected to the cloud.",
        float(st["connected"]),
    )
    yield GaugeMetricFamily(
        "aiot_cloud_exporting", "1 on the node that exports (the leader).", float(st["exporting"])
    )
    for name, doc, key in (
        ("aiot_cloud_export_messages", "Messages this node published to JetStream.", "messages"),
        ("aiot_cloud_export_bytes", "Payload bytes this node published to JetStream.", "bytes"),
        (
            "aiot_cloud_export_duplicates",
            "Publishes JetStream acknowledged as duplicates (a resend it already had).",
            "duplicates",
        ),
        ("aiot_cloud_export_alerts", "Times the export lag alert was raised.", "alerts"),
    ):
        yield CounterMetricFamily(name, doc, st[key])


def _space(hub: Observed) -> Iterator[Metric]:
    """This node's store usage, its alert and retention (hub/state/retention.py)."""
    keeper = getattr(hub, "keeper", None)
    if keeper is None:
        return
    st, store = keeper.status(), hub.raft.store
    for name, doc, key in (
        ("aiot_store_used_bytes", "Bytes in the store's live LMDB pages.", "used_bytes"),
        ("aiot_store_file_bytes", "How far the store's LMDB file reaches.", "file_bytes"),
        ("aiot_store_map_bytes", "The LMDB map size.", "map_bytes"),
        ("aiot_store_disk_free_bytes", "Free bytes on the store's filesystem.", "disk_free_bytes"),
        ("aiot_store_used_ratio", "Live bytes over the map ([store] thresholds).", "used_fraction"),
    ):
        if st[key] is not None:
            yield GaugeMetricFamily(name, doc, float(st[key]))
    yield GaugeMetricFamily(
        "aiot_store_alert",
        "1 while the store is over [store] alert_at (or refusing).",
        float(bool(st["alert"])),
    )
    yield GaugeMetricFamily(
        "aiot_store_refusing",
        "1 while ingest refuses batches (store_full).",
        float(bool(st["refusing"])),
    )
    yield CounterMetricFamily(
        "aiot_store_full_waits",
        "Times apply waited for space (map or disk full).",
        store.full_waits,
    )
    yield CounterMetricFamily(
        "aiot_store_map_grown", "Times apply grew the map into its reserve.", store.grown
    )
    yield CounterMetricFamily(
        "aiot_retention_steps",
        "Retention steps this node proposed (as leader).",
        st["retention_steps"],
    )
    yield CounterMetricFamily(
        "aiot_retention_removed",
        "Records the retention steps this node proposed deleted.",
        st["retention_removed"],
    )


def _by_reason(name: str, doc: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=["reason"])
    for reason, n in sorted(counts.items()):
        fam.add_metric([reason], n)
    return fam


# -- readiness ------------------------------------------------------------------------------


def has_quorum(raft: RaftNode) -> bool | None:
    """Whether pysyncobj says this node reaches a majority; None when it is
    too busy to say."""
    try:
        return bool(raft.raft_status().get("has_quorum", False))
    except Exception:
        return None


def readiness(hub: Observed) -> list[str]:
    """Why this node should not take work now; empty when it is ready."""
    reasons = []
    st = hub.raft.status()
    if st.halted:
        reasons.append(f"store_halted: {st.halted}")
    if not st.ready:
        reasons.append("raft_not_ready")
    if st.leader is None:
        reasons.append("no_leader")
    if not has_quorum(hub.raft):
        reasons.append("no_quorum")
    if not hub.consumer_connected:
        reasons.append("broker_consumer_disconnected")
    return reasons


# -- wiring -------------------------------------------------------------------------------

_BY_HUB: MutableMapping[Observed, HubMetrics] = weakref.WeakKeyDictionary()


def for_hub(hub: Observed) -> HubMetrics:
    """The hub's metrics, made on first use."""
    found = _BY_HUB.get(hub)
    if found is None:
        found = _BY_HUB[hub] = HubMetrics(hub)
    return found


def applied(hub: Observed, results: Iterable[ApplyResult]) -> None:
    """Hub._applied calls this with every batch of apply results."""
    found = _BY_HUB.get(hub)
    if found is not None:
        found.applied(results)
