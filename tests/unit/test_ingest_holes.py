"""Ingest never acks past a hole (docs/ARCHITECTURE.md invariant 1), judged against
what the proposer itself committed.

A device pipelines its batches: each round it sends every batch above the
watermark it was last acked, all at once, as the uplink does after a
reconnect. Proposals fail at random with the errors the real Raft raises,
some after committing, so holes open below batches that did commit. Every
commit-ack (the ack of an accepted batch, or the re-ack of a replay or a
gap) is checked the moment ``handle`` returns it: every seq up to its
watermark is one the proposer committed. The proposer's account comes from
the entries it committed, not from the store's watermark.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core.config import IngestConfig
from hub.link.ingest import Ingest, Outcome, Status
from hub.state import entries as e
from hub.state.store import Store
from protocol import messages as m
from protocol import wire
from tests.proposers import FAILURES, FlakyProposer
from tests.unit.test_ingest import KEY1, MAX_FRAME, NOW_MS, UP1, clock

pytestmark = pytest.mark.unit


def sealed(first: int, n: int) -> bytes:
    readings = tuple(m.Reading(0, i * 10, float(first + i)) for i in range(n))
    msg = m.TelemetryBatch("plug-1", 1, first, NOW_MS + first * 10, readings, 0)
    return wire.seal(wire.encode(msg), KEY1)


def ack_of(out: Outcome) -> int | None:
    if out.publish is None:
        return None
    ack = wire.decode_frame(out.publish.payload, KEY1, m.CommitAck)
    assert isinstance(ack, m.CommitAck)
    return ack.watermark


class Device:
    """The device's side: its batches, and the watermark its acks gave it."""

    def __init__(self, sizes: list[int]) -> None:
        self.batches: list[tuple[int, int]] = []
        first = 1
        for n in sizes:
            self.batches.append((first, n))
            first += n
        self.last = first - 1
        self.watermark = 0

    def unacked(self) -> list[tuple[int, int]]:
        return [(f, n) for f, n in self.batches if f + n - 1 > self.watermark]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    group=st.integers(1, 4),
    plan=st.lists(st.one_of(st.none(), st.sampled_from(FAILURES)), max_size=12),
    rounds=st.integers(1, 4),
)
def test_no_ack_reaches_past_a_seq_that_did_not_commit(
    sizes: list[int], group: int, plan: list[object], rounds: int
) -> None:
    device = Device(sizes)
    config = IngestConfig(1, group, 256 * 1024, MAX_FRAME)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "s", map_size=64 << 20) as store:
        store.apply([(1, e.encode(e.RegisterDevice(e.Device("plug-1", KEY1), 1)))])
        proposer = FlakyProposer(store, list(plan))  # type: ignore[arg-type]
        ingest = Ingest("hub-1", store, proposer, config, clock, retry_s=0)

        async def send(first: int, n: int) -> Outcome:
            out = await ingest.handle(UP1, sealed(first, n))
            # Nothing has run since the ack was made: judge it now.
            w = ack_of(out)
            if out.status is Status.FAILED:
                assert w is None, f"a failed proposal answered with an ack: {out}"
            if w is not None:
                hole = proposer.first_hole("plug-1")
                assert w < hole, (
                    f"acked {w} for {first}..{first + n - 1} ({out.status.value} "
                    f"{out.reason}), but seq {hole} never committed"
                )
            return out

        async def one_round() -> None:
            outs = await asyncio.gather(*(send(f, n) for f, n in device.unacked()))
            for out in outs:
                assert out.status is not Status.REJECTED or out.reason in ("replayed", "gap")
            # The device keeps the highest watermark it was acked.
            device.watermark = max([device.watermark, *(w for o in outs if (w := ack_of(o)))])

        for _ in range(rounds):
            asyncio.run(one_round())
        # With the proposer healthy again, the device's resends fill every hole.
        proposer.plan.clear()
        while device.unacked():
            before = device.watermark
            asyncio.run(one_round())
            assert device.watermark > before, "a round without failures made no progress"
        assert store.watermark("plug-1") == device.last == proposer.first_hole("plug-1") - 1
