"""Fuzzing the hub's ingest path: ``Ingest.validate`` and ``Ingest.handle`` on a
real Store (LMDB in a temporary directory, proposals applied in-process as a
one-node Raft would after commit, by ``tests/proposers.py FlakyProposer``,
which fails now and then as the real one does: NotLeader, NotReady or
DeadlineExceeded, some after the entry committed).

Each example is a sequence of uplink messages drawn from: the device's next
valid batch, replays of accepted ones, valid frames with bit flips,
truncations, extensions and overwrites, wrong and generated topics, other
devices' keys and frames, unregistered devices, oversized and random bytes,
mutated envelopes signed again with the right key (they reach the FlatBuffers
verifier and the sequence checks), generated TelemetryBatch messages, and
resends of batches whose proposal failed.

Per message (docs/ARCHITECTURE.md invariant 5):

- nothing but ``Rejected`` leaves ``validate``, nothing leaves ``handle``,
  and no log record carries a traceback;
- the outcome is ACKED or REJECTED, or FAILED exactly when the proposal
  failed (with its reason), and ``validate`` and ``handle`` agree on the
  reason;
- a message not signed with the topic device's key is rejected;
- a rejected message changes nothing: content hash, applied index, the
  device's progress, no proposal; only ``replayed`` and ``gap`` answer, with
  the current watermark signed with the device's key;
- an acked message is committed: its result is the entry the store applied
  last, the ack's watermark is the store's, and each of its readings was
  stored once (new ones added, the rest counted as duplicates); the device's
  next valid batch is acked unless its proposal failed;
- a failed proposal acks nothing and changes nothing unless its entry
  committed; no ack, re-acks included, ever names a watermark above the
  store's;
- a batch whose proposal failed, sent again once the proposer works, is
  acked (or re-acked as a replay when its entry had committed after all),
  and every one of its readings is then stored (or was declared lost).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.link.ingest import REASONS, Ingest, Outcome, Rejected, Status
from hub.state.store import Store
from protocol import messages as m
from protocol import topics, wire
from tests import strategies as wire_st
from tests.fuzz.budget import Tally, fuzz_settings
from tests.proposers import FAILURES, Failure, FlakyProposer
from tests.unit.test_ingest import (
    CONFIG,
    KEY1,
    KEY2,
    MAX_FRAME,
    NOW_MS,
    batch_msg,
    clock,
    new_store,
    run,
)

pytestmark = pytest.mark.unit

KEYS = {"plug-1": KEY1, "plug-2": KEY2}
KEY9 = bytes(range(100, 132))
KINDS = (
    "next",
    "replay",
    "flip",
    "truncate",
    "extend",
    "overwrite",
    "wrong_topic",
    "other_key",
    "foreign_frame",
    "names_other",
    "unregistered",
    "oversized",
    "random",
    "resigned",
    "generated",
    "resend_failed",
)


@dataclass(frozen=True)
class Message:
    kind: str
    topic: str
    payload: bytes
    authentic: bool  # sealed with the topic device's key, naming that device


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _sealed(device: str, first: int, n: int, key: bytes, lost_before: int = 0) -> bytes:
    return wire.seal(wire.encode(batch_msg(device, first, n, lost_before)), key)


def _edit(data: st.DataObject, buf: bytes, kind: str) -> bytes:
    if not buf:
        return b"\x00"
    if kind == "flip":
        out = bytearray(buf)
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            pos = data.draw(st.integers(0, len(out) - 1), label="bit at")
            out[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        return bytes(out)
    if kind == "truncate":
        return buf[: data.draw(st.integers(0, len(buf) - 1), label="cut")]
    if kind == "extend":
        return buf + data.draw(st.binary(min_size=1, max_size=64), label="tail")
    # overwrite: a run of bytes somewhere
    pos = data.draw(st.integers(0, len(buf) - 1), label="at")
    chunk = data.draw(st.binary(min_size=1, max_size=16), label="chunk")
    return buf[:pos] + chunk + buf[pos + len(chunk) :]


_OTHER_TOPICS = st.one_of(
    st.sampled_from(
        [
            "",
            "aiot/v1/plug-1",
            "aiot/v1/plug-1/status",
            "aiot/v1/plug-1/ack",
            "aiot/v1/plug-1/down",
            "aiot/v1/plug-1/up/x",
            "aiot/v2/plug-1/up",
            "aiot/v1/+/up",
            "aiot/v1/#",
            "aiot/v1//up",
            "/aiot/v1/plug-1/up",
            "aiot/v1/plug 1/up",
            "aiot/v1/plug-1\x00/up",
        ]
    ),
    st.text(max_size=80),
    st.builds(
        "aiot/v1/{}/{}".format,
        st.text(max_size=70),
        st.sampled_from(["up", "status", "ack", "down", ""]),
    ),
)


class Model:
    """The fuzzed ingest, its store, and what each device has committed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.proposer = FlakyProposer(store)
        self.ingest = Ingest("hub-1", store, self.proposer, CONFIG, clock, retry_s=0.0)
        self.accepted: list[Message] = []
        self.failed: list[Message] = []  # valid batches whose proposal failed
        self.rejected = 0

    def next_first(self, device: str) -> int:
        return self.store.watermark(device) + 1

    def draw(self, data: st.DataObject) -> Message:
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        dev = data.draw(st.sampled_from(sorted(KEYS)), label="device")
        key, up = KEYS[dev], topics.topic(dev, "up")
        other = "plug-2" if dev == "plug-1" else "plug-1"
        n = data.draw(st.integers(1, 40), label="readings")
        valid = _sealed(dev, self.next_first(dev), n, key)
        if kind == "next" or (kind == "resend_failed" and not self.failed):
            return Message("next", up, valid, True)
        if kind == "resend_failed":
            return data.draw(st.sampled_from(self.failed), label="resent")
        if kind == "replay":
            if not self.accepted:
                return Message("next", up, valid, True)
            old = data.draw(st.sampled_from(self.accepted), label="replayed")
            return Message(kind, old.topic, old.payload, old.authentic)
        if kind in ("flip", "truncate", "extend", "overwrite"):
            payload = _edit(data, valid, kind)
            return Message(kind, up, payload, payload == valid)
        if kind == "wrong_topic":
            topic = data.draw(_OTHER_TOPICS, label="topic")
            return Message(kind, topic, valid, topic == up)
        if kind == "other_key":
            return Message(kind, up, _sealed(dev, self.next_first(dev), n, KEYS[other]), False)
        if kind == "foreign_frame":  # another device's authentic batch on this topic
            return Message(kind, up, _sealed(other, self.next_first(other), n, KEYS[other]), False)
        if kind == "names_other":  # signed with this key, but naming the other device
            return Message(kind, up, _sealed(other, self.next_first(other), n, key), False)
        if kind == "unregistered":
            return Message(kind, "aiot/v1/plug-9/up", _sealed("plug-9", 1, n, KEY9), False)
        if kind == "oversized":
            pad = data.draw(st.integers(1, 4096), label="pad")
            return Message(kind, up, valid + bytes(MAX_FRAME - len(valid) + pad), False)
        if kind == "random":
            payload = data.draw(st.binary(max_size=MAX_FRAME + 8), label="bytes")
            return Message(kind, up, payload, False)
        if kind == "resigned":
            env = wire.encode(batch_msg(dev, self.next_first(dev), n))
            how = data.draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
            return Message(kind, up, wire.seal(_edit(data, env, how), key), True)
        # generated: any TelemetryBatch, signed with the topic device's key
        batch = data.draw(wire_st.batches, label="batch")
        if data.draw(st.booleans(), label="own id"):
            batch = m.TelemetryBatch(
                dev,
                batch.boot_epoch,
                batch.first_seq,
                batch.base_ts_ms,
                batch.readings,
                batch.lost_before,
            )
        return Message(kind, up, wire.seal(wire.encode(batch), key), batch.device_id == dev)

    def state(self) -> tuple[object, ...]:
        s = self.store
        return (
            s.content_hash(),
            s.applied_index(),
            s.progress("plug-1"),
            s.progress("plug-2"),
            len(self.proposer.proposals),
        )

    def feed(self, msg: Message, fail: Failure | None = None, again: bool = False) -> Outcome:
        """Handle one message (``again``: sent before), its proposal (if it
        makes one) failing with ``fail``, and check the outcome."""
        before = self.state()
        valid = None
        try:
            valid = self.ingest.validate(msg.topic, msg.payload)
            check_reason = None
        except Rejected as rej:
            check_reason = rej.reason
        assert self.state() == before, "validate changed state"
        readings_before = {d: len(self.store.readings(d)) for d in KEYS}
        self.proposer.plan = [fail]
        out = run(self.ingest.handle(msg.topic, msg.payload))
        proposed = len(self.proposer.proposals) > before[-1]
        self.proposer.plan = []
        assert out.status in (Status.ACKED, Status.REJECTED, Status.FAILED), out
        if out.publish is not None:  # an ack or a re-ack: never past what is stored
            ack = wire.decode_frame(out.publish.payload, KEYS[out.device_id], m.CommitAck)
            assert isinstance(ack, m.CommitAck)
            assert ack.watermark <= self.store.watermark(out.device_id), (ack, out)
        if out.status is Status.FAILED:
            assert fail is not None and proposed, f"failed without a failing proposal: {out}"
            assert check_reason is None and msg.authentic
            assert (out.reason, out.publish, out.watermark) == (fail.reason, None, None), out
            self.failed.append(msg)
            after = self.state()
            if fail.committed:  # committed, then the error: stored, not acked
                assert after[1] == before[1] + 1, "the entry did not commit"
            else:
                assert after[:-1] == before[:-1], f"{out.reason}: not committed, but stored"
        elif out.status is Status.REJECTED:
            self.rejected += 1
            assert out.reason in REASONS
            assert check_reason == out.reason, (check_reason, out)
            assert self.state() == before, f"rejected ({out.reason}) but the store changed"
            if out.reason in ("replayed", "gap"):
                assert out.publish is not None
                ack = wire.decode_frame(out.publish.payload, KEYS[out.device_id], m.CommitAck)
                assert ack == m.CommitAck(
                    out.device_id, self.store.watermark(out.device_id), NOW_MS
                )
            else:
                assert out.publish is None
        else:
            assert msg.authentic, f"{msg.kind}: an unauthentic message was acked"
            assert check_reason is None
            assert fail is None, f"acked although its proposal failed ({fail.reason})"
            assert out.publish is not None and out.watermark is not None
            ack = wire.decode_frame(out.publish.payload, KEYS[out.device_id], m.CommitAck)
            assert isinstance(ack, m.CommitAck)
            assert ack.watermark == out.watermark == self.store.watermark(out.device_id)
            assert self.store.applied_index() == before[1] + 1
            r = out.result
            assert valid is not None and r is not None, out
            assert r.index == self.store.applied_index(), r
            # Each reading stored once: new ones added, the others duplicates.
            n = len(valid.batch.readings)
            assert (r.stored + r.duplicates, r.device_id) == (n, out.device_id), r
            now = len(self.store.readings(out.device_id))
            assert now == readings_before[out.device_id] + r.stored
            self.accepted.append(msg)
        if msg.kind == "next" and not again:
            assert out.status is (Status.ACKED if fail is None else Status.FAILED), out
        assert sum(self.ingest.counters.values()) == self.rejected
        return out

    def resend_failed(self) -> None:
        """Every batch whose proposal failed, sent again with the proposer
        working: acked, or re-acked as a replay, and all of it stored."""
        for msg in self.failed:
            out = self.feed(msg, again=True)
            assert out.status is Status.ACKED or out.reason == "replayed", out
            batch = wire.decode_frame(msg.payload, KEYS[out.device_id], m.TelemetryBatch)
            assert isinstance(batch, m.TelemetryBatch)
            stored = {r.seq for r in self.store.readings(batch.device_id)}
            _, lost_before = self.store.progress(batch.device_id)
            want = range(max(batch.first_seq, lost_before), batch.last_seq + 1)
            assert set(want) <= stored, f"resent {batch.first_seq}..{batch.last_seq}: not stored"


def test_fuzz_ingest_never_raises_and_rejects_change_nothing() -> None:
    tally = Tally("ingest")
    records = Records()
    log = logging.getLogger("hub.ingest")
    log.addHandler(records)
    old_level = log.level
    log.setLevel(logging.DEBUG)

    @fuzz_settings(300)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        tally.example()
        with tempfile.TemporaryDirectory() as tmp, new_store(Path(tmp) / "s") as store:
            model = Model(store)
            for _ in range(data.draw(st.integers(1, 12), label="messages")):
                msg = model.draw(data)
                tally.hit(msg.kind)
                fail = None
                if data.draw(st.integers(0, 3), label="proposal fails") == 3:
                    fail = data.draw(st.sampled_from(FAILURES), label="failure")
                out = model.feed(msg, fail, again=msg in model.failed)
                tally.note(out.status.value if out.status is not Status.FAILED else out.reason)
            tally.hit("resend_failed", len(model.failed))
            model.resend_failed()

    try:
        one()
    finally:
        log.removeHandler(records)
        log.setLevel(old_level)
    tally.done()
    tracebacks = [r.getMessage() for r in records.records if r.exc_info]
    assert not tracebacks, tracebacks[:3]
    assert tally.inputs >= tally.examples > 0
    assert {"next", "random", "flip", "resigned", "resend_failed"} <= set(tally.kinds)
    assert sum(tally.outcomes.get(f.reason, 0) for f in FAILURES) > 0, tally.outcomes
