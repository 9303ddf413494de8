"""The hub's ingest path: uplink batches in, Raft proposals out, commit-acks back.

The daemon's MQTT consumer calls ``Ingest.handle(topic, payload)`` for every
message on ``aiot/v1/+/up`` and publishes what the returned ``Outcome`` says
(a CommitAck on ``aiot/v1/<id>/down``, or nothing)::

    ingest = Ingest(node_id, registry=store, proposer=raft_node, config=cfg.ingest)
    outcome = await ingest.handle(topic, payload)     # never raises for bad input
    if outcome.publish is not None:
        await client.publish(outcome.publish.topic, outcome.publish.payload, qos=1)

Call ``handle`` concurrently, one task per message (a TaskGroup, with a bound
on how many are open): awaiting each call before taking the next message
would leave the batcher one entry to group. ``handle`` validates and enqueues
synchronously, before its first ``await``, so tasks started in arrival order
are checked in arrival order (the sequence check relies on it).

Per message (hub/state/DESIGN.md "Ingest" has the reasons behind each step):

1. size against ``max_frame_bytes``, before anything else;
2. the topic: ``aiot/v1/<id>/up``;
3. the device and its key through ``Registry`` (the store satisfies it);
4. HMAC with that key, then the FlatBuffers structure (protocol/wire.py); the
   message must be a TelemetryBatch naming the topic's device;
5. sequence numbers against the device's watermark and the batches of that
   device still in flight on this node;
6. the store's room on this node (``full``): over [store] refuse_at the batch
   is refused (store_full), unproposed and unacked, so the device keeps it;
7. the batcher groups valid batches into one GROUP entry and proposes it;
8. after the proposer returns (committed, and applied on this node), each
   caller gets its part's ApplyResult and acks the device's watermark from it
   (docs/ARCHITECTURE.md invariant 1).

Errors (the hierarchy; every one carries a machine-readable ``reason``)::

    Rejected(reason, device_id, detail, watermark)
                        a refused message; reason is one of REASONS. Nothing is
                        proposed. ``watermark`` is set for replayed and gap:
                        the caller re-acks it so the device moves on or rewinds
    ResultMismatch      the proposer's results do not match the group's parts
                        (a bug in the proposer); every waiter of the group gets it
    hub.raft.RaftError  NotLeader, NotReady, DeadlineExceeded from the proposer,
                        once the batcher has stopped proposing again (an election
                        under way is retried for RETRY_S); every waiter of the
                        group gets the same error and nothing is acked (the
                        device resends after its ack timeout)

``handle`` turns Rejected and RaftError into an Outcome, counts it and logs
one line; anything else is a bug and propagates.

Deliberate bugs, for the fault-injection campaign's self-test only
(docs/chaos.md "Mutation check"): ``AIOT_HUB_MUTATION=ack_before_commit`` in
the daemon's environment makes ``handle`` ack a valid batch as soon as it is
enqueued, before its proposal commits, and propose it once (no retry during
an election). A proposal that then fails (an election, a killed or
partitioned leader) loses readings the device was told are stored, which the
campaign's check L must report. Any other value refuses to start.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from hub.core.clock import wall_ms
from hub.core.config import IngestConfig
from hub.link.limits import DeviceLimits
from hub.state import entries as e
from hub.state.apply import ApplyResult
from hub.state.apply import Outcome as Applied
from hub.state.raft import NotReady, RaftError
from protocol import messages as m
from protocol import topics, wire
from protocol.errors import CodecError
from protocol.generated import aiot_generated as g
from protocol.verify import verify

log = logging.getLogger("hub.ingest")

MUTATION_ENV: Final = "AIOT_HUB_MUTATION"
MUTATIONS: Final = frozenset({"ack_before_commit"})


def mutation_from_env() -> str:
    """The deliberate bug named by ``AIOT_HUB_MUTATION`` ("" when unset).
    Raises ValueError for a name that is not one of MUTATIONS."""
    name = os.environ.get(MUTATION_ENV, "").strip()
    if name and name not in MUTATIONS:
        known = ", ".join(sorted(MUTATIONS))
        raise ValueError(f"{MUTATION_ENV}={name!r} is not a known mutation (known: {known})")
    return name


REASONS: Final = (
    "bad_topic",  # not aiot/v1/<valid id>/up
    "oversized",  # payload longer than max_frame_bytes
    "unknown_device",  # the topic's device is not registered (or was removed before apply)
    "bad_hmac",  # the trailer does not match the topic device's key
    "topic_mismatch",  # an authentic batch naming another device than the topic's
    "malformed",  # not a well-formed TelemetryBatch: bad structure, wrong message
    #               type, no readings, seq 0 or out of range, unencodable entry
    "replayed",  # every reading is at or below the watermark; re-ack it
    "gap",  # first_seq beyond watermark + 1 without lost_before covering it; re-ack
    "apply_rejected",  # the store refused the committed entry (detail: its reason)
    "store_full",  # this node's store is over [store] refuse_at (or its disk nearly full):
    #                nothing proposed, no ack; the device keeps the batch and resends
)

# Proposal failures that mean the entry met no leader (or a leader that went
# away before it answered): an election is under way. Every entry is
# idempotent (docs/ARCHITECTURE.md invariant 2), so the batcher proposes the group
# again until RETRY_S after its first try, instead of leaving the hole to the
# devices' ack timeouts. DeadlineExceeded (no answer for the proposer's whole
# deadline) and the rest are not retried.
RETRY_REASONS: Final = frozenset(
    {"not_leader", "discarded", "leader_changed", "unknown_outcome", "no_leader"}
)
RETRY_S: Final = 3.0
_RETRY_PAUSE_S: Final = (0.05, 0.5)  # first pause between tries, and the longest

_U64_MAX: Final = 2**64 - 1
_GROUP_HEADER: Final = 4  # version, type, u16 part count
_PART_OVERHEAD: Final = 4  # u32 part length


# -- errors ---------------------------------------------------------------------------


class Rejected(Exception):
    """A refused uplink message. It changes no state."""

    def __init__(
        self, reason: str, device_id: str = "", detail: str = "", watermark: int | None = None
    ) -> None:
        if reason not in REASONS:
            raise AssertionError(f"unknown ingest rejection reason {reason!r}")
        self.reason = reason
        self.device_id = device_id
        self.detail = detail
        self.watermark = watermark  # re-ack this (replayed, gap); None: send nothing
        super().__init__(f"{reason} device={device_id!r}" + (f": {detail}" if detail else ""))


class ResultMismatch(Exception):
    """The proposer returned results that do not match the proposed group."""

    reason: Final = "result_mismatch"


# -- what ingest needs from the rest of the hub -------------------------------------------


class Registry(Protocol):
    """The device registry and watermarks, as this node has applied them.
    ``hub.state.store.Store`` satisfies it."""

    def device(self, device_id: str) -> e.Device | None: ...

    def progress(self, device_id: str) -> tuple[int, int]:
        """(watermark, lost_before) of the device; (0, 0) when none."""
        ...


class Proposer(Protocol):
    """Commits an entry (hub/state/entries.py). ``hub.raft.RaftNode`` satisfies it.

    Returns only after the entry is committed and applied on this node, with
    one ApplyResult (or one per part of a GROUP entry). Raises
    hub.raft.RaftError subclasses when it cannot say that it was."""

    async def propose(self, entry: bytes) -> tuple[ApplyResult, ...]: ...


# -- commit-acks -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """An MQTT message to publish (QoS 1, not retained)."""

    topic: str
    payload: bytes


def commit_ack(device_id: str, watermark: int, key: bytes, clock: Callable[[], int]) -> Publish:
    """The signed CommitAck frame for ``aiot/v1/<device_id>/down``.
    ``clock`` returns the hub's time in ms since the Unix epoch."""
    frame = wire.seal(wire.encode(m.CommitAck(device_id, watermark, clock())), key)
    return Publish(topics.topic(device_id, "down"), frame)


# -- validation -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Valid:
    """An authenticated, in-sequence batch and its BATCH entry."""

    device_id: str
    key: bytes
    batch: m.TelemetryBatch
    entry: bytes


def authenticate(
    topic: str,
    payload: bytes | bytearray | memoryview,
    registry: Registry,
    max_frame_bytes: int = wire.MAX_FRAME,
) -> tuple[e.Device, m.TelemetryBatch]:
    """Steps 1 to 4: the topic's device and its authentic TelemetryBatch.
    Raises Rejected, nothing else."""
    try:
        device_id, channel = topics.parse(topic)
    except topics.TopicError:
        device_id, channel = "", ""
    if len(payload) > max_frame_bytes:
        raise Rejected("oversized", device_id, f"{len(payload)} bytes, limit {max_frame_bytes}")
    if channel != "up":
        raise Rejected("bad_topic", device_id, f"topic {topic[:120]!r}, want aiot/v1/<id>/up")
    device = registry.device(device_id)
    if device is None:
        raise Rejected("unknown_device", device_id)
    try:
        msg = decode_batch(payload, device.key, max_frame_bytes)
    except CodecError as exc:
        if exc.reason == "bad_hmac":
            _check_foreign(device_id, payload, registry, max_frame_bytes)
            raise Rejected("bad_hmac", device_id) from None
        raise Rejected("malformed", device_id, f"{exc.reason}: {exc.detail}") from None
    assert isinstance(msg, m.TelemetryBatch)
    if msg.device_id != device_id:
        raise Rejected("topic_mismatch", device_id, f"payload names {msg.device_id[:80]!r}")
    return device, msg


_READINGS_SLOT: Final = 12  # TelemetryBatch.readings' vtable offset (slot 4)
_READING_LE: Final = struct.Struct("<HHf")  # a Reading struct as FlatBuffers lays it out


def decode_batch(
    frame: bytes | bytearray | memoryview, key: bytes, max_size: int = wire.MAX_FRAME
) -> m.TelemetryBatch:
    """``wire.decode_frame(frame, key, m.TelemetryBatch, max_size)``, read in place.

    The same checks in the same order (size and trailer, then the verifier
    over the whole envelope), the same CodecErrors, and an equal message; but
    the fields are read with the generated accessors and the readings vector
    with one struct pass, instead of the object API, which builds two objects
    per reading and dominated the ingest path's CPU time."""
    envelope = wire.open_frame(frame, key, max_size)
    tag = verify(envelope)
    if tag != m.PayloadType.TelemetryBatch:
        raise CodecError("unexpected_type", f"got {m.PayloadType(tag).name}")
    payload = g.Envelope.GetRootAs(envelope, 0).Payload()
    assert payload is not None  # verify() insists on it
    b = g.TelemetryBatch()
    b.Init(payload.Bytes, payload.Pos)
    at = payload.Offset(_READINGS_SLOT)  # payload: the same table, untyped
    start, count = payload.Vector(at), payload.VectorLen(at)
    reading = m.Reading
    readings = tuple(
        [
            reading(*r)
            for r in _READING_LE.iter_unpack(envelope[start : start + _READING_LE.size * count])
        ]
    )
    device_id = b.DeviceId()
    return m.TelemetryBatch(
        device_id.decode() if isinstance(device_id, bytes) else str(device_id),
        b.BootEpoch(),
        b.FirstSeq(),
        b.BaseTsMs(),
        readings,
        b.LostBefore(),
    )


def _check_foreign(
    device_id: str, payload: bytes | bytearray | memoryview, registry: Registry, max_size: int
) -> None:
    """On a bad HMAC: is this another registered device's authentic frame
    (a device publishing on someone else's topic)? Then say so. The inner id
    is only trusted once its own key verifies the trailer."""
    try:
        inner = wire.peek_device_id(payload, max_size)
        other = registry.device(inner) if inner != device_id else None
        if other is not None:
            wire.open_frame(payload, other.key, max_size)
        else:
            return
    except CodecError:
        return
    raise Rejected("topic_mismatch", device_id, f"authentic batch of {inner!r}")


def check_sequence(batch: m.TelemetryBatch, watermark: int, frontier: int) -> None:
    """Step 5. ``watermark``: the device's committed watermark on this node;
    ``frontier``: the highest seq this node will have once the device's
    batches in flight commit (>= watermark). Raises Rejected."""
    dev = batch.device_id
    if not batch.readings:
        raise Rejected("malformed", dev, "empty batch")
    if batch.first_seq < 1 or batch.last_seq > _U64_MAX:
        raise Rejected("malformed", dev, f"seq range {batch.first_seq}+{len(batch.readings)}")
    if batch.last_seq <= watermark:
        raise Rejected(
            "replayed", dev, f"seq {batch.first_seq}..{batch.last_seq}", watermark=watermark
        )
    if batch.first_seq > frontier + 1 and batch.lost_before < batch.first_seq:
        raise Rejected(
            "gap",
            dev,
            f"first_seq {batch.first_seq}, expected <= {frontier + 1}, "
            f"lost_before {batch.lost_before}",
            watermark=watermark,
        )


# -- the batcher ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    parts: list[bytes]
    futures: list[asyncio.Future[ApplyResult]]
    size: int


class Batcher:
    """Groups entries into one GROUP entry per proposal.

    A group is proposed when ``max_entries`` entries wait, when adding one
    more would pass ``max_bytes`` (GROUP framing included), or ``window_s``
    after its first entry arrived, whichever comes first. An entry larger
    than ``max_bytes`` on its own goes alone. Several groups may be in flight
    at once. Each submitter gets its own part's ApplyResult, or the
    proposer's error (every submitter of the group gets the same one). A
    proposal that failed for a reason in RETRY_REASONS is made again, with
    pauses, until ``retry_s`` after the first try (0: never).
    """

    def __init__(
        self,
        proposer: Proposer,
        *,
        window_s: float,
        max_entries: int,
        max_bytes: int,
        retry_s: float = 0.0,
    ) -> None:
        if not 1 <= max_entries <= 0xFFFF:
            raise ValueError(f"max_entries={max_entries}, want 1..65535")
        if window_s < 0 or max_bytes < 1 or retry_s < 0:
            raise ValueError(f"window_s={window_s}, max_bytes={max_bytes}, retry_s={retry_s}")
        self._retry_s = retry_s
        self._proposer = proposer
        self._window_s = window_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._waiting = _Waiting([], [], _GROUP_HEADER)
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._seq = 0
        self.proposals = 0  # groups proposed (for metrics)
        self.retries = 0  # proposals made again after a failure in RETRY_REASONS

    @property
    def waiting(self) -> int:
        return len(self._waiting.parts)

    def submit(self, entry: bytes) -> asyncio.Future[ApplyResult]:
        """Queue ``entry`` (not a GROUP); the future resolves after commit.
        Synchronous, so submissions keep the caller's order."""
        if self._closed:
            raise NotReady("closed", "ingest is shutting down")
        if e.peek_type(entry) is e.EntryType.GROUP:
            raise ValueError("groups do not nest")
        loop = asyncio.get_running_loop()
        size = len(entry) + _PART_OVERHEAD
        w = self._waiting
        if w.parts and w.size + size > self._max_bytes:
            self._flush()
            w = self._waiting
        fut: asyncio.Future[ApplyResult] = loop.create_future()
        w.parts.append(bytes(entry))
        w.futures.append(fut)
        w.size += size
        if len(w.parts) >= self._max_entries or w.size >= self._max_bytes:
            self._flush()
        elif len(w.parts) == 1:
            self._timer = loop.call_later(self._window_s, self._flush)
        return fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        w = self._waiting
        if not w.parts:
            return
        self._waiting = _Waiting([], [], _GROUP_HEADER)
        self._seq += 1
        self.proposals += 1
        task = asyncio.get_running_loop().create_task(
            self._propose(w.parts, w.futures), name=f"ingest-propose-{self._seq}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _propose(
        self, parts: list[bytes], futures: list[asyncio.Future[ApplyResult]]
    ) -> None:
        entry = e.group(parts)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry_s
        pause, longest = _RETRY_PAUSE_S
        while True:
            try:
                results = await self._proposer.propose(entry)
            except asyncio.CancelledError:
                for f in futures:
                    f.cancel()
                raise
            except RaftError as exc:
                if (
                    exc.reason in RETRY_REASONS
                    and not self._closed
                    and loop.time() + pause < give_up
                    and not all(f.done() for f in futures)
                ):
                    self.retries += 1
                    log.info("ingest proposal retried after %s", exc.reason)
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, longest)
                    continue
                _fail(futures, exc)
                return
            except Exception as exc:  # whatever else the proposer raised
                _fail(futures, exc)
                return
            break
        if len(results) == len(parts) and all(r.part == i for i, r in enumerate(results, 1)):
            per_part = results
        elif len(results) == 1 and results[0].part == 0:
            per_part = results * len(parts)  # the GROUP as a whole was refused or skipped
        else:
            _fail(futures, ResultMismatch(f"{len(results)} results for {len(parts)} parts"))
            return
        for f, r in zip(futures, per_part, strict=True):
            if not f.done():  # the submitter may have been cancelled
                f.set_result(r)

    async def aclose(self) -> None:
        """Take no more entries, propose what waits, wait for every proposal."""
        self._closed = True
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _fail(futures: list[asyncio.Future[ApplyResult]], exc: Exception) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(exc)


# -- ingest ---------------------------------------------------------------------------------


class Status(enum.Enum):
    ACKED = "acked"  # committed and applied here; publish carries the CommitAck
    REJECTED = "rejected"  # refused (reason in REASONS); publish is a re-ack or None
    FAILED = "failed"  # valid, but the proposal failed (reason: the RaftError's); no ack


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``Ingest.handle`` did with one message, and what to publish."""

    status: Status
    device_id: str
    reason: str = ""
    detail: str = ""
    watermark: int | None = None  # the watermark in ``publish``
    publish: Publish | None = None
    result: ApplyResult | None = None


@dataclass(frozen=True, slots=True)
class _InFlight:
    first: int
    last: int
    lost_before: int


class Ingest:
    """Validation, the batcher and commit-acks for one hub node."""

    def __init__(
        self,
        node_id: str,
        registry: Registry,
        proposer: Proposer,
        config: IngestConfig,
        clock: Callable[[], int] = wall_ms,
        retry_s: float = RETRY_S,
        mutation: str | None = None,
        limits: DeviceLimits | None = None,
        full: Callable[[], str] | None = None,
    ) -> None:
        self.node_id = node_id
        # Why this node's store refuses new readings now ("" when it takes
        # them): hub/state/retention.py Housekeeper.refusal.
        self._full = full
        # Per-device token buckets (hub/link/limits.py); the consumer asks
        # ``admit`` for every message of every channel, before anything else.
        self.limits = DeviceLimits({}) if limits is None else limits
        self.mutation = mutation_from_env() if mutation is None else mutation
        if self.mutation:
            log.critical(
                "%s=%s: a deliberate bug for the fault-injection self-test is on; "
                "acknowledged readings can be lost",
                MUTATION_ENV,
                self.mutation,
            )
        self._registry = registry
        self._config = config
        self._clock = clock
        self._batcher = Batcher(
            proposer,
            window_s=config.batch_window_ms / 1000,
            max_entries=config.batch_max_entries,
            max_bytes=config.batch_max_bytes,
            retry_s=0.0 if self.mutation == "ack_before_commit" else retry_s,
        )
        self._inflight: dict[str, dict[int, _InFlight]] = {}
        self._token = 0
        self._rejects: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._failures: Counter[str] = Counter()
        self.acked = 0

    @property
    def counters(self) -> Mapping[str, int]:
        """Rejected messages by reason (every reason present, from 0)."""
        return self._rejects

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed proposals by reason (RaftError.reason), per message."""
        return self._failures

    @property
    def limited(self) -> Mapping[str, int]:
        """Messages dropped by the per-device token buckets, by channel."""
        return self.limits.dropped

    def admit(self, channel: str, device_id: str) -> bool:
        """Whether the device's next message on ``channel`` is within its rate."""
        return self.limits.admit(channel, device_id)

    @property
    def batcher(self) -> Batcher:
        return self._batcher

    def validate(self, topic: str, payload: bytes | bytearray | memoryview) -> Valid:
        """Steps 1 to 5 and the BATCH entry. Raises Rejected, nothing else."""
        device, batch = authenticate(topic, payload, self._registry, self._config.max_frame_bytes)
        watermark = self._registry.progress(device.device_id)[0]
        check_sequence(batch, watermark, self._frontier(device.device_id, watermark))
        try:
            entry = e.encode(e.Batch.from_message(batch, self.node_id))
        except e.EntryError as exc:
            raise Rejected("malformed", device.device_id, f"{exc.reason}: {exc.detail}") from None
        return Valid(device.device_id, device.key, batch, entry)

    def _frontier(self, device_id: str, watermark: int) -> int:
        frontier = watermark
        for f in sorted(self._inflight.get(device_id, {}).values(), key=lambda f: f.first):
            if f.first > frontier + 1 and f.lost_before < f.first:
                break
            frontier = max(frontier, f.last)
        return frontier

    async def handle(self, topic: str, payload: bytes | bytearray | memoryview) -> Outcome:
        """One message from ``aiot/v1/+/up``: what was done and what to publish."""
        try:
            valid = self.validate(topic, payload)
        except Rejected as rej:
            return self._refused(rej)
        full = self._full() if self._full is not None else ""
        if full:
            # Admission, before proposing: entries already committed (commands,
            # deletes, retention, other nodes' batches) keep the reserve.
            return self._refused(Rejected("store_full", valid.device_id, full))
        try:
            fut = self._batcher.submit(valid.entry)
        except NotReady as exc:
            return self._failed(valid.device_id, exc)
        if self.mutation == "ack_before_commit":
            return self._acked_early(valid, fut)
        token = self._track(valid.batch)
        try:
            result = await fut
        except (RaftError, ResultMismatch) as exc:
            return self._failed(valid.device_id, exc)
        finally:
            self._untrack(valid.device_id, token)
        return self._applied(valid, result)

    async def aclose(self) -> None:
        """Stop taking messages; finish the proposals in flight."""
        await self._batcher.aclose()

    # -- internals --

    def _key_of(self, device_id: str) -> bytes | None:
        device = self._registry.device(device_id) if device_id else None
        return None if device is None else device.key

    def _track(self, batch: m.TelemetryBatch) -> int:
        self._token += 1
        self._inflight.setdefault(batch.device_id, {})[self._token] = _InFlight(
            batch.first_seq, batch.last_seq, batch.lost_before
        )
        return self._token

    def _untrack(self, device_id: str, token: int) -> None:
        mine = self._inflight.get(device_id)
        if mine is not None:
            mine.pop(token, None)
            if not mine:
                del self._inflight[device_id]

    def _acked_early(self, valid: Valid, fut: asyncio.Future[ApplyResult]) -> Outcome:
        """The ack_before_commit mutation: the batch's last sequence number is
        acked now; the proposal's outcome is only logged when it comes."""

        token = self._track(valid.batch)

        def done(f: asyncio.Future[ApplyResult]) -> None:
            self._untrack(valid.device_id, token)
            if not f.cancelled() and f.exception() is not None:
                log.warning(
                    "ack_before_commit: a batch acked early was not committed: %s",
                    f.exception(),
                    extra={"device": valid.device_id},
                )

        fut.add_done_callback(done)
        self.acked += 1
        last = valid.batch.last_seq
        ack = commit_ack(valid.device_id, last, valid.key, self._clock)
        return Outcome(Status.ACKED, valid.device_id, "", "", last, ack)

    def _applied(self, valid: Valid, result: ApplyResult) -> Outcome:
        dev = valid.device_id
        if result.outcome in (Applied.APPLIED, Applied.UNCHANGED) and result.device_id == dev:
            self.acked += 1
            ack = commit_ack(dev, result.watermark, valid.key, self._clock)
            return Outcome(Status.ACKED, dev, "", "", result.watermark, ack, result)
        if result.outcome is Applied.REJECTED:
            reason = "unknown_device" if result.reason == "unknown_device" else "apply_rejected"
            detail = f"{result.reason}: {result.detail}" if result.detail else result.reason
            return self._refused(Rejected(reason, dev, detail), result)
        # SKIPPED (the index was applied before) or a result for another device:
        # nothing says this batch is stored, so nothing is acked.
        return self._failed(
            dev, ResultMismatch(f"{result.outcome.value} for {result.device_id!r}"), result
        )

    def _refused(self, rej: Rejected, result: ApplyResult | None = None) -> Outcome:
        self._rejects[rej.reason] += 1
        # A full store refuses every batch: the housekeeper says so once, loudly.
        level = logging.INFO if rej.reason in ("replayed", "store_full") else logging.WARNING
        log.log(
            level,
            "ingest rejected device=%s reason=%s detail=%s",
            rej.device_id or "-",
            rej.reason,
            rej.detail or "-",
            extra={"device": rej.device_id, "reason": rej.reason},
        )
        publish = None
        key = self._key_of(rej.device_id) if rej.watermark is not None else None
        if rej.watermark is not None and key is not None:
            publish = commit_ack(rej.device_id, rej.watermark, key, self._clock)
        return Outcome(
            Status.REJECTED,
            rej.device_id,
            rej.reason,
            rej.detail,
            rej.watermark if publish else None,
            publish,
            result,
        )

    def _failed(
        self,
        device_id: str,
        exc: RaftError | ResultMismatch,
        result: ApplyResult | None = None,
    ) -> Outcome:
        reason = exc.reason
        self._failures[reason] += 1
        log.warning(
            "ingest proposal failed device=%s reason=%s detail=%s",
            device_id,
            reason,
            exc,
            extra={"device": device_id, "reason": reason},
        )
        return Outcome(Status.FAILED, device_id, reason, str(exc), None, None, result)
