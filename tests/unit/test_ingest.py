"""Hub ingest (hub/link/ingest.py): validation, rejects, the batcher, commit-acks.

State is a real hub.state.store.Store in a temporary directory; proposals go
through ``StoreProposer``, a small in-process Proposer that applies each
entry at the next index, as a one-node Raft would after commit.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.core.config import IngestConfig
from hub.link.ingest import (
    REASONS,
    Batcher,
    Ingest,
    Outcome,
    Rejected,
    ResultMismatch,
    Status,
    commit_ack,
    decode_batch,
)
from hub.state import entries as e
from hub.state.apply import ApplyResult
from hub.state.raft import DeadlineExceeded, NotLeader, NotReady, RaftError
from hub.state.store import Store
from protocol import messages as m
from protocol import wire
from protocol.errors import CodecError
from tests import strategies as wire_st

pytestmark = pytest.mark.unit

T = TypeVar("T")
KEY1 = bytes(range(32))
KEY2 = bytes(range(32, 64))
NOW_MS = 1_763_700_000_000
MAX_FRAME = 1024
CONFIG = IngestConfig(
    batch_window_ms=1, batch_max_entries=64, batch_max_bytes=256 * 1024, max_frame_bytes=MAX_FRAME
)
UP1 = "aiot/v1/plug-1/up"


def clock() -> int:
    return NOW_MS


class StoreProposer:
    """A real fake of RaftNode.propose: commit is immediate, apply is Store.apply.
    With ``fail``, the first ``fail_times`` proposals (all: None) raise it."""

    def __init__(
        self, store: Store, fail: RaftError | None = None, fail_times: int | None = None
    ) -> None:
        self.store = store
        self.fail = fail
        self.fail_times = fail_times
        self.proposals: list[bytes] = []

    async def propose(self, entry: bytes) -> tuple[ApplyResult, ...]:
        self.proposals.append(entry)
        fail = self.fail
        await asyncio.sleep(0)  # a proposal always yields, as a real one does
        if fail is not None and (self.fail_times is None or len(self.proposals) <= self.fail_times):
            raise fail
        index = self.store.applied_index() + 1
        return tuple(self.store.apply([(index, entry)]))

    def groups(self) -> list[int]:
        """Number of parts of each proposal."""
        sizes = []
        for p in self.proposals:
            grp = e.decode(p)
            assert isinstance(grp, e.Group)
            sizes.append(len(grp.parts))
        return sizes


class DictRegistry:
    """A registry that may disagree with the store (a device removed meanwhile)."""

    def __init__(self, devices: dict[str, bytes]) -> None:
        self.devices = devices

    def device(self, device_id: str) -> e.Device | None:
        key = self.devices.get(device_id)
        return None if key is None else e.Device(device_id, key)

    def progress(self, device_id: str) -> tuple[int, int]:
        return (0, 0)


def run(aw: Awaitable[T]) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(30):  # a hang guard, not a timing bar
            return await aw

    return asyncio.run(guarded())


def batch_msg(
    device_id: str = "plug-1", first: int = 11, n: int = 10, lost_before: int = 0
) -> m.TelemetryBatch:
    readings = tuple(m.Reading(1, i * 100, float(first + i)) for i in range(n))
    return m.TelemetryBatch(device_id, 1, first, NOW_MS, readings, lost_before)


def frame(
    device_id: str = "plug-1",
    first: int = 11,
    n: int = 10,
    key: bytes = KEY1,
    lost_before: int = 0,
) -> bytes:
    return wire.seal(wire.encode(batch_msg(device_id, first, n, lost_before)), key)


def new_store(path: Path) -> Store:
    """plug-1 (KEY1) with readings 1..10 stored, plug-2 (KEY2) with none."""
    store = Store(path, map_size=64 << 20)
    entries = [
        e.encode(e.RegisterDevice(e.Device("plug-1", KEY1), 1)),
        e.encode(e.RegisterDevice(e.Device("plug-2", KEY2), 1)),
        e.encode(e.Batch.from_message(batch_msg("plug-1", 1, 10), "hub-0")),
    ]
    store.apply(list(enumerate(entries, 1)))
    assert store.watermark("plug-1") == 10
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with new_store(tmp_path / "store") as s:
        yield s


def make(
    store: Store,
    config: IngestConfig = CONFIG,
    fail: RaftError | None = None,
    retry_s: float = 0.0,
) -> tuple[Ingest, StoreProposer]:
    proposer = StoreProposer(store, fail)
    return Ingest("hub-1", store, proposer, config, clock, retry_s), proposer


def acked_watermark(out: Outcome, key: bytes = KEY1) -> int:
    assert out.publish is not None
    assert out.publish.topic == f"aiot/v1/{out.device_id}/down"
    ack = wire.decode_frame(out.publish.payload, key, m.CommitAck)
    assert isinstance(ack, m.CommitAck)
    assert (ack.device_id, ack.hub_time_ms) == (out.device_id, NOW_MS)
    assert out.watermark == ack.watermark
    return ack.watermark


# -- the accepted path ---------------------------------------------------------------


def test_valid_batch_is_committed_then_acked_with_the_new_watermark(store: Store) -> None:
    ingest, proposer = make(store)
    out = run(ingest.handle(UP1, frame(first=11, n=10)))
    assert out.status is Status.ACKED
    assert acked_watermark(out) == 20 == store.watermark("plug-1")
    assert [r.seq for r in store.readings("plug-1")] == list(range(1, 21))
    assert proposer.groups() == [1]
    assert ingest.acked == 1
    assert sum(ingest.counters.values()) == 0


def test_commit_ack_builder_signs_the_down_frame() -> None:
    pub = commit_ack("plug-1", 42, KEY1, clock)
    assert pub.topic == "aiot/v1/plug-1/down"
    assert wire.decode_frame(pub.payload, KEY1) == m.CommitAck("plug-1", 42, NOW_MS)
    with pytest.raises(CodecError, match="bad_hmac"):
        wire.decode_frame(pub.payload, KEY2)


def test_partial_overlap_is_accepted_and_stores_only_the_new_readings(store: Store) -> None:
    ingest, _ = make(store)
    out = run(ingest.handle(UP1, frame(first=6, n=10)))
    assert out.status is Status.ACKED
    assert out.result is not None and (out.result.stored, out.result.duplicates) == (5, 5)
    assert acked_watermark(out) == 15


# -- rejects: each reason, nothing proposed, no state change ----------------------------


def _signed_envelope(key: bytes, data: bytes) -> bytes:
    return wire.seal(data, key)


REJECT_CASES: list[tuple[str, str, bytes, str]] = [
    ("status channel", "aiot/v1/plug-1/status", frame(), "bad_topic"),
    ("other prefix", "aiot/v2/plug-1/up", frame(), "bad_topic"),
    ("bad device id", "aiot/v1/bad id/up", frame(), "bad_topic"),
    ("extra level", "aiot/v1/plug-1/up/x", frame(), "bad_topic"),
    ("not a topic", "", frame(), "bad_topic"),
    ("garbage too long", UP1, b"\x00" * (MAX_FRAME + 1), "oversized"),
    ("authentic but too long", UP1, frame(n=200), "oversized"),
    ("oversized on a bad topic", "nope", b"\x00" * (MAX_FRAME + 1), "oversized"),
    ("unregistered", "aiot/v1/plug-9/up", frame("plug-9", key=KEY1), "unknown_device"),
    ("wrong key", UP1, frame(key=KEY2), "bad_hmac"),
    ("flipped trailer", UP1, frame()[:-1] + bytes([frame()[-1] ^ 1]), "bad_hmac"),
    ("garbage", UP1, b"\x01" * 100, "bad_hmac"),
    ("plug-2 on plug-1's topic", UP1, frame("plug-2", first=1, key=KEY2), "topic_mismatch"),
    ("plug-1's key naming plug-2", UP1, frame("plug-2", key=KEY1), "topic_mismatch"),
    ("too short", UP1, b"abc", "malformed"),
    ("signed garbage", UP1, _signed_envelope(KEY1, b"\x07" * 60), "malformed"),
    (
        "signed CommitAck",
        UP1,
        _signed_envelope(KEY1, wire.encode(m.CommitAck("plug-1", 5, 0))),
        "malformed",
    ),
    ("empty batch", UP1, frame(n=0), "malformed"),
    ("seq 0", UP1, frame(first=0, n=3), "malformed"),
    ("seq past u64", UP1, frame(first=2**64 - 2, n=5, lost_before=2**64 - 2), "malformed"),
    ("exact replay", UP1, frame(first=1, n=10), "replayed"),
    ("replay inside", UP1, frame(first=3, n=4), "replayed"),
    ("gap", UP1, frame(first=12, n=5), "gap"),
    ("lost_before short of the gap", UP1, frame(first=15, n=5, lost_before=13), "gap"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [c[1:] for c in REJECT_CASES],
    ids=[c[0] for c in REJECT_CASES],
)
def test_reject_reasons_change_nothing(
    store: Store, caplog: pytest.LogCaptureFixture, topic: str, payload: bytes, reason: str
) -> None:
    ingest, proposer = make(store)
    before = (store.content_hash(), store.applied_index(), store.progress("plug-1"))
    with caplog.at_level(logging.INFO, logger="hub.ingest"):
        out = run(ingest.handle(topic, payload))
    assert (out.status, out.reason) == (Status.REJECTED, reason)
    with pytest.raises(Rejected) as info:
        ingest.validate(topic, payload)
    assert info.value.reason == reason
    assert proposer.proposals == []
    assert (store.content_hash(), store.applied_index(), store.progress("plug-1")) == before
    assert ingest.counters[reason] == 1
    assert sum(ingest.counters.values()) == 1
    assert set(ingest.counters) == set(REASONS)
    [record] = caplog.records
    assert record.exc_info is None
    assert f"reason={reason}" in record.getMessage()
    assert f"device={out.device_id or '-'}" in record.getMessage()
    if reason in ("replayed", "gap"):
        assert acked_watermark(out) == 10  # re-ack: the device moves on, or rewinds
    else:
        assert out.publish is None


def test_replay_after_an_ack_re_acks_the_current_watermark(store: Store) -> None:
    ingest, proposer = make(store)
    assert acked_watermark(run(ingest.handle(UP1, frame(first=11, n=10)))) == 20
    h = store.content_hash()
    out = run(ingest.handle(UP1, frame(first=11, n=10)))  # QoS 1 redelivery
    assert (out.status, out.reason) == (Status.REJECTED, "replayed")
    assert acked_watermark(out) == 20
    assert store.content_hash() == h
    assert len(proposer.proposals) == 1


def test_gap_is_refused_then_accepted_with_lost_before(store: Store) -> None:
    ingest, _ = make(store)
    h = store.content_hash()
    refused = run(ingest.handle(UP1, frame(first=21, n=10)))
    assert (refused.reason, acked_watermark(refused)) == ("gap", 10)
    assert store.content_hash() == h
    out = run(ingest.handle(UP1, frame(first=21, n=10, lost_before=21)))
    assert out.status is Status.ACKED
    assert acked_watermark(out) == 30 == store.watermark("plug-1")
    assert store.progress("plug-1") == (30, 21)


def test_a_device_removed_before_apply_is_rejected_by_the_store(store: Store) -> None:
    proposer = StoreProposer(store)
    registry = DictRegistry({"plug-1": KEY1, "plug-7": KEY1})
    ingest = Ingest("hub-1", registry, proposer, CONFIG, clock)
    h = store.content_hash()
    out = run(ingest.handle("aiot/v1/plug-7/up", frame("plug-7", first=1)))
    assert (out.status, out.reason, out.publish) == (Status.REJECTED, "unknown_device", None)
    assert len(proposer.proposals) == 1  # it was committed, and refused at apply
    assert store.content_hash() == h
    assert ingest.counters["unknown_device"] == 1


# -- pipelined batches: the in-flight frontier -------------------------------------------


def test_pipelined_batches_of_one_device_are_not_a_gap(store: Store) -> None:
    config = IngestConfig(1000, 4, 256 * 1024, MAX_FRAME)
    ingest, proposer = make(store, config)

    async def go() -> list[Outcome]:
        return await asyncio.gather(
            *(ingest.handle(UP1, frame(first=f, n=8)) for f in (11, 19, 27, 35))
        )

    outs = run(go())
    assert [o.status for o in outs] == [Status.ACKED] * 4
    assert [acked_watermark(o) for o in outs] == [18, 26, 34, 42]
    assert proposer.groups() == [4]


def test_a_batch_behind_a_failed_one_is_stored_but_not_acked_past_the_hole(
    store: Store,
) -> None:
    # 11..18 and 19..26 are in flight together; the first proposal fails, so
    # 19..26 lands above a hole.
    class FailFirst(StoreProposer):
        async def propose(self, entry: bytes) -> tuple[ApplyResult, ...]:
            self.fail = NotLeader("not_leader", None, False) if not self.proposals else None
            return await super().propose(entry)

    proposer = FailFirst(store)
    config = IngestConfig(1000, 1, 256 * 1024, MAX_FRAME)
    # Without retries (as once they ran out): the failure stands.
    ingest = Ingest("hub-1", store, proposer, config, clock, retry_s=0)

    async def go() -> list[Outcome]:
        return list(
            await asyncio.gather(
                ingest.handle(UP1, frame(first=11, n=8)), ingest.handle(UP1, frame(first=19, n=8))
            )
        )

    first, second = run(go())
    assert (first.status, first.reason) == (Status.FAILED, "not_leader")
    assert second.status is Status.ACKED
    assert acked_watermark(second) == 10  # invariant 1: nothing past the hole
    assert [r.seq for r in store.readings("plug-1")][-1] == 26
    # nothing in flight any more: a batch past the hole is a gap, and the
    # re-ack makes the device rewind to 11
    out = run(ingest.handle(UP1, frame(first=27, n=8)))
    assert (out.reason, acked_watermark(out)) == ("gap", 10)
    assert acked_watermark(run(ingest.handle(UP1, frame(first=11, n=8)))) == 26


# -- the batcher ----------------------------------------------------------------------------


def _entries(store: Store, n: int) -> list[bytes]:
    return [
        e.encode(e.Batch.from_message(batch_msg("plug-2", 1 + 4 * i, 4), "hub-1")) for i in range(n)
    ]


def test_batcher_size_threshold_entries_proposes_without_waiting_for_the_window(
    store: Store,
) -> None:
    proposer = StoreProposer(store)
    batcher = Batcher(proposer, window_s=3600, max_entries=4, max_bytes=1 << 20)

    async def go() -> tuple[list[ApplyResult], int]:
        futs = [batcher.submit(x) for x in _entries(store, 5)]
        results = await asyncio.gather(*futs[:4])  # would hang for an hour on the window
        waiting = batcher.waiting
        await batcher.aclose()
        await futs[4]
        return results, waiting

    results, waiting = run(go())
    assert waiting == 1
    assert proposer.groups() == [4, 1]
    assert [r.part for r in results] == [1, 2, 3, 4]
    assert [r.watermark for r in results] == [4, 8, 12, 16]


def test_batcher_size_threshold_bytes(store: Store) -> None:
    entries = _entries(store, 7)
    size = len(entries[0])
    assert all(len(x) == size for x in entries)
    proposer = StoreProposer(store)
    # the GROUP header (4 bytes) and 3 parts (4-byte length each) fill it exactly
    batcher = Batcher(proposer, window_s=3600, max_entries=100, max_bytes=4 + 3 * (size + 4))

    async def go() -> int:
        futs = [batcher.submit(x) for x in entries]
        await asyncio.gather(*futs[:6])
        waiting = batcher.waiting
        await batcher.aclose()
        await futs[6]
        return waiting

    assert run(go()) == 1
    assert proposer.groups() == [3, 3, 1]
    assert all(len(p) <= 4 + 3 * (size + 4) for p in proposer.proposals)


def test_batcher_bytes_threshold_flushes_before_an_entry_that_would_overflow(
    store: Store,
) -> None:
    small, big = (
        _entries(store, 2)[0],
        e.encode(e.Batch.from_message(batch_msg("plug-2", 100, 40), "hub-1")),
    )
    proposer = StoreProposer(store)
    # big alone, framed as a GROUP (4 + 4 + len), fills max_bytes exactly
    batcher = Batcher(proposer, window_s=3600, max_entries=100, max_bytes=len(big) + 8)

    async def go() -> None:
        a = batcher.submit(small)
        b = batcher.submit(big)  # small + big > max_bytes: small goes first, alone
        await asyncio.gather(a, b)

    run(go())
    assert proposer.groups() == [1, 1]


def test_time_window_proposes_a_single_entry(store: Store) -> None:
    ingest, proposer = make(store, IngestConfig(20, 64, 256 * 1024, MAX_FRAME))
    out = run(ingest.handle(UP1, frame(first=11, n=5)))
    assert out.status is Status.ACKED
    assert proposer.groups() == [1]


def test_time_window_groups_what_arrives_within_it(store: Store) -> None:
    ingest, proposer = make(store, IngestConfig(50, 64, 256 * 1024, MAX_FRAME))

    async def go() -> list[Outcome]:
        msgs = [
            (UP1, frame(first=11, n=5)),
            (UP1, frame(first=16, n=5)),
            ("aiot/v1/plug-2/up", frame("plug-2", first=1, n=5, key=KEY2)),
        ]
        return await asyncio.gather(*(ingest.handle(t, p) for t, p in msgs))

    outs = run(go())
    assert proposer.groups() == [3]  # none went alone: they waited for the window
    assert [o.status for o in outs] == [Status.ACKED] * 3
    assert [acked_watermark(o) for o in outs[:2]] == [15, 20]
    assert acked_watermark(outs[2], KEY2) == 5


@pytest.mark.parametrize(
    "error",
    [
        NotLeader("not_leader", "10.0.0.2:4321", maybe_applied=False),
        NotReady("no_leader"),
        DeadlineExceeded(5.0),
    ],
    ids=lambda x: type(x).__name__,
)
def test_proposal_errors_reach_every_waiter_and_nothing_is_acked(
    store: Store, error: RaftError
) -> None:
    ingest, proposer = make(store, IngestConfig(1000, 3, 256 * 1024, MAX_FRAME), fail=error)
    h = store.content_hash()

    async def go() -> list[Outcome]:
        msgs = [
            (UP1, frame(first=11, n=5)),
            (UP1, frame(first=16, n=5)),
            ("aiot/v1/plug-2/up", frame("plug-2", first=1, n=5, key=KEY2)),
        ]
        return await asyncio.gather(*(ingest.handle(t, p) for t, p in msgs))

    outs = run(go())
    assert len(proposer.proposals) == 1
    assert [(o.status, o.reason, o.publish) for o in outs] == [
        (Status.FAILED, error.reason, None)
    ] * 3
    assert ingest.failures[error.reason] == 3
    assert ingest.acked == 0
    assert store.content_hash() == h


def test_an_election_is_ridden_out_by_proposing_again(store: Store) -> None:
    # The leader died with the proposal (leader_changed), then no leader yet:
    # the same group is proposed again and every waiter is acked once it commits.
    proposer = StoreProposer(store, NotLeader("leader_changed", None, True), fail_times=2)
    ingest = Ingest("hub-1", store, proposer, IngestConfig(1000, 2, 1 << 20, MAX_FRAME), clock)

    async def go() -> list[Outcome]:
        msgs = [(UP1, frame(first=11, n=5)), (UP1, frame(first=16, n=5))]
        return await asyncio.gather(*(ingest.handle(t, p) for t, p in msgs))

    outs = run(go())
    assert [o.status for o in outs] == [Status.ACKED, Status.ACKED]
    assert [acked_watermark(o) for o in outs] == [15, 20]
    assert len(proposer.proposals) == 3 and len(set(proposer.proposals)) == 1
    assert ingest.batcher.retries == 2 and dict(ingest.failures) == {}
    assert store.watermark("plug-1") == 20


@pytest.mark.parametrize(
    ("error", "tries"),
    [(NotReady("no_leader"), 3), (DeadlineExceeded(5.0), 1), (NotReady("halted"), 1)],
    ids=["no_leader", "deadline", "halted"],
)
def test_retries_stop_at_their_deadline_and_only_for_elections(
    store: Store, error: RaftError, tries: int
) -> None:
    # Pauses of 0.05 s then 0.1 s fit in 0.2 s; the next (0.2 s) does not.
    ingest, proposer = make(store, IngestConfig(1, 64, 1 << 20, MAX_FRAME), error, retry_s=0.2)
    out = run(ingest.handle(UP1, frame(first=11, n=5)))
    assert (out.status, out.reason, out.publish) == (Status.FAILED, error.reason, None)
    assert len(proposer.proposals) == tries
    assert ingest.batcher.retries == tries - 1


def test_results_that_do_not_match_the_group_fail_every_waiter(store: Store) -> None:
    class Short(StoreProposer):
        async def propose(self, entry: bytes) -> tuple[ApplyResult, ...]:
            return (await super().propose(entry))[:1]

    batcher = Batcher(Short(store), window_s=3600, max_entries=2, max_bytes=1 << 20)

    async def go() -> list[BaseException | ApplyResult]:
        futs = [batcher.submit(x) for x in _entries(store, 2)]
        return await asyncio.gather(*futs, return_exceptions=True)

    assert [type(r) for r in run(go())] == [ResultMismatch, ResultMismatch]


def test_after_close_messages_fail_as_not_ready(store: Store) -> None:
    ingest, proposer = make(store, IngestConfig(1000, 64, 256 * 1024, MAX_FRAME))

    async def go() -> tuple[Outcome, Outcome]:
        pending = asyncio.ensure_future(ingest.handle(UP1, frame(first=11, n=5)))
        await asyncio.sleep(0)
        await ingest.aclose()  # proposes what waits, without the window
        return await pending, await ingest.handle(UP1, frame(first=16, n=5))

    flushed, late = run(go())
    assert flushed.status is Status.ACKED
    assert (late.status, late.reason) == (Status.FAILED, "closed")
    assert proposer.groups() == [1]


# -- hostile input never raises and never changes state -------------------------------------


def _mutate(data: st.DataObject, buf: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]), label="how")
    pos = data.draw(st.integers(0, max(len(buf) - 1, 0)), label="at")
    if kind == "flip":
        return buf[:pos] + bytes([buf[pos] ^ data.draw(st.integers(1, 255))]) + buf[pos + 1 :]
    if kind == "truncate":
        return buf[:pos]
    chunk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
    if kind == "insert":
        return buf[:pos] + chunk + buf[pos:]
    if chunk == buf[pos : pos + len(chunk)]:  # overwriting a byte with itself is no mutation
        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
    return buf[:pos] + chunk + buf[pos + len(chunk) :]


_TOPICS = st.sampled_from([UP1, "aiot/v1/plug-2/up", "aiot/v1/plug-9/up", "aiot/v1/plug-1/ack"])
_HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_HYPO
@given(data=st.data())
def test_random_bytes_and_mutated_frames_are_only_ever_rejected(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp, new_store(Path(tmp) / "s") as store:
        ingest, proposer = make(store)
        h = store.content_hash()
        for _ in range(3):
            topic = data.draw(_TOPICS, label="topic")
            if data.draw(st.booleans(), label="random"):
                payload = data.draw(st.binary(max_size=MAX_FRAME + 8), label="payload")
            else:
                first = data.draw(st.integers(1, 40), label="first")
                payload = _mutate(data, frame(first=first, n=data.draw(st.integers(0, 12))))
            with pytest.raises(Rejected):
                ingest.validate(topic, payload)
            out = run(ingest.handle(topic, payload))
            assert out.status is Status.REJECTED
            assert out.reason in REASONS
        assert proposer.proposals == []
        assert store.content_hash() == h


@_HYPO
@given(data=st.data())
def test_re_signed_mutations_change_state_only_when_acked(data: st.DataObject) -> None:
    # Mutate the envelope, then sign it with the right key: this reaches the
    # FlatBuffers verifier and the sequence checks behind the HMAC.
    with tempfile.TemporaryDirectory() as tmp, new_store(Path(tmp) / "s") as store:
        ingest, _ = make(store)
        first = data.draw(st.integers(1, 12), label="first")
        envelope = wire.encode(batch_msg("plug-1", first, data.draw(st.integers(0, 12))))
        payload = wire.seal(_mutate(data, envelope), KEY1)
        h = store.content_hash()
        try:
            ingest.validate(UP1, payload)
        except Rejected as rej:
            assert rej.reason in REASONS
        out = run(ingest.handle(UP1, payload))
        assert out.status in (Status.ACKED, Status.REJECTED)
        if out.status is Status.REJECTED:
            assert store.content_hash() == h
        else:
            assert acked_watermark(out) == store.watermark("plug-1")


# -- the in-place batch decoder ----------------------------------------------------------


def _outcome(decode: object, frame: bytes, key: bytes) -> object:
    try:
        return repr(decode(frame, key))  # type: ignore[operator]  # repr: NaN == NaN
    except CodecError as exc:
        return ("error", exc.reason, str(exc))


def _reference(frame: bytes, key: bytes) -> m.Message:
    return wire.decode_frame(frame, key, m.TelemetryBatch, MAX_FRAME)


def _fast(frame: bytes, key: bytes) -> m.Message:
    return decode_batch(frame, key, MAX_FRAME)


@_HYPO
@given(msg=wire_st.messages)
def test_decode_batch_agrees_with_the_object_api(msg: m.Message) -> None:
    frame = wire.seal(wire.encode(msg), KEY1)
    assert _outcome(_fast, frame, KEY1) == _outcome(_reference, frame, KEY1)
    assert _outcome(_fast, frame, KEY2) == _outcome(_reference, frame, KEY2)


@_HYPO
@given(data=st.data())
def test_decode_batch_agrees_on_mutated_frames(data: st.DataObject) -> None:
    msg = data.draw(wire_st.batches, label="batch")
    envelope = _mutate(data, wire.encode(msg))
    for frame in (wire.seal(envelope, KEY1), envelope + b"\0" * 32):
        assert _outcome(_fast, frame, KEY1) == _outcome(_reference, frame, KEY1)
