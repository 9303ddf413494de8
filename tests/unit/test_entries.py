"""Replicated log entries (hub/entries.py): exact bytes, round trips, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub import entries as e
from protocol import messages as m
from protocol.golden import CASES

pytestmark = pytest.mark.unit


def _golden() -> m.TelemetryBatch:
    batch = CASES["telemetry_batch"]
    assert isinstance(batch, m.TelemetryBatch)
    return batch


GOLDEN = _golden()
RELAY = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
DEVICE = e.Device("plug-1", bytes(range(32)), (RELAY,), 2000.0, "ann")

EXAMPLES: list[e.Entry] = [
    e.Batch.from_message(GOLDEN, "hub-1"),
    e.Batch("meter-1", "hub-2", 1, 1, 5, b"", 0),
    e.RegisterDevice(DEVICE, 1_763_700_000_000),
    e.RegisterDevice(e.Device("meter-1", b"k"), 1),
    e.RemoveDevice("plug-1", 7),
    e.Presence("plug-1", "hub-3", m.LinkState.ONLINE, 9),
    e.Presence("plug-1", "hub-3", m.LinkState.OFFLINE, 10),
    e.PutCommand(
        "c-1",
        "plug-1",
        4,
        "relay.set",
        (m.Param("on", False), m.Param("n", -3), m.Param("w", 1.25), m.Param("why", "é")),
        100,
        200,
    ),
    e.RecordResult(
        m.CommandResult("c-1", "plug-1", 3, m.CommandStatus.REJECTED, m.Reason.STALE_TERM, "x"),
        "hub-1",
        300,
    ),
    e.MarkCommand("c-1", e.LedgerState.SENT, "hub-1", 400),
    e.MarkCommand("c-1", e.LedgerState.EXPIRED, "hub-1", 500),
    e.PutModel("anomaly", "3", bytes(32), 1234, "models/anomaly.onnx", 600),
]


def test_batch_bytes_are_exact() -> None:
    batch = m.TelemetryBatch(
        "plug-1", 3, 1025, 1_763_700_000_000, (m.Reading(0, 0, 1.5), m.Reading(1, 250, 2.0)), 1000
    )
    expected = bytes.fromhex(
        "01 01"  # version, type BATCH
        "06 706c75672d31"  # device id "plug-1"
        "05 6875622d31"  # node id "hub-1"
        "00000003"  # boot epoch
        "0000000000000401"  # first seq 1025
        "0000019aa4b64500"  # base ts
        "00000000000003e8"  # lost_before 1000
        "0002"  # count
        "0000 0000 3fc00000"  # sensor 0, offset 0, 1.5
        "0001 00fa 40000000"  # sensor 1, offset 250, 2.0
    )
    assert e.encode(e.Batch.from_message(batch, "hub-1")) == expected
    decoded = e.decode(expected)
    assert isinstance(decoded, e.Batch)
    assert decoded.count == 2 and decoded.last_seq == 1026 and decoded.lost_before == 1000
    assert tuple(decoded.readings()) == batch.readings


def test_golden_batch_readings_survive_exactly() -> None:
    batch = e.decode(e.encode(e.Batch.from_message(GOLDEN, "hub-1")))
    assert isinstance(batch, e.Batch)
    assert tuple(batch.readings()) == GOLDEN.readings
    assert (batch.first_seq, batch.base_ts_ms, batch.boot_epoch) == (1025, 1_763_700_000_000, 3)


@pytest.mark.parametrize("entry", EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_entry_type_round_trips(entry: e.Entry) -> None:
    data = e.encode(entry)
    assert data[0] == e.ENTRY_VERSION and data[1] == e.ENTRY_TYPES[type(entry)]
    assert e.peek_type(data) is e.ENTRY_TYPES[type(entry)]
    assert e.decode(data) == entry


def test_group_keeps_parts_as_bytes() -> None:
    parts = tuple(e.encode(x) for x in EXAMPLES)
    grp = e.decode(e.group(parts))
    assert grp == e.Group(parts)


@pytest.mark.parametrize("entry", EXAMPLES, ids=lambda x: type(x).__name__)
def test_every_truncation_is_refused(entry: e.Entry) -> None:
    data = e.encode(entry)
    for n in range(len(data)):
        with pytest.raises(e.EntryError) as err:
            e.decode(data[:n])
        assert err.value.reason in ("truncated", "trailing_bytes", "bad_value")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x02\x01", "bad_version"),
        (b"\x01\x09", "unknown_type"),  # reserved for GAP
        (b"\x01\xff", "unknown_type"),
        (e.encode(e.RemoveDevice("plug-1", 1)) + b"\x00", "trailing_bytes"),
        (b"\x01\x03\x03a/b" + bytes(8), "bad_device_id"),
        (b"\x01\x03\x02\xff\xfe" + bytes(8), "bad_utf8"),
        (b"\x01\x04\x01p\x01h\x07" + bytes(8), "bad_value"),  # LinkState 7
        (b"\x01\x07\x01c\x00\x01h" + bytes(8), "bad_value"),  # mark PENDING
        (b"\x01\x10\x00\x01\x00\x00\x00\x02\x01\x10", "nested_group"),
    ],
)
def test_malformed_entries_name_their_fault(data: bytes, reason: str) -> None:
    with pytest.raises(e.EntryError) as err:
        e.decode(data)
    assert err.value.reason == reason


def _batch_bytes(first_seq: int, count: int, base_ts: int = 0) -> bytes:
    return (
        b"\x01\x01\x01p\x01h"
        + bytes(4)
        + first_seq.to_bytes(8, "big")
        + base_ts.to_bytes(8, "big")
        + bytes(8)
        + count.to_bytes(2, "big")
        + bytes(8 * count)
    )


def test_batch_sequence_and_time_ranges_are_checked() -> None:
    assert isinstance(e.decode(_batch_bytes(1, 1)), e.Batch)
    assert isinstance(e.decode(_batch_bytes(0, 0)), e.Batch)  # an empty batch needs no seq
    for bad in (_batch_bytes(0, 1), _batch_bytes(2**64 - 1, 2), _batch_bytes(1, 1, 2**64 - 1)):
        with pytest.raises(e.EntryError) as err:
            e.decode(bad)
        assert err.value.reason == "bad_value"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (e.RemoveDevice("no such/id", 1), "bad_device_id"),
        (e.RegisterDevice(e.Device("plug-1", b""), 1), "bad_value"),
        (e.RegisterDevice(e.Device("plug-1", b"k", limit_w=float("nan")), 1), "bad_value"),
        (e.RegisterDevice(e.Device("plug-1", b"k", limit_w=-1.0), 1), "bad_value"),
        (e.RegisterDevice(e.Device("plug-1", b"k", owner="x" * 70000), 1), "bad_value"),
        (e.Presence("plug-1", "h" * 256, m.LinkState.ONLINE, 1), "bad_value"),
        (e.Presence("plug-1", "", m.LinkState.ONLINE, 1), "bad_value"),
        (e.PutCommand("", "plug-1", 1, "relay.set"), "bad_value"),
        (e.PutCommand("c", "plug-1", -1, "relay.set"), "bad_value"),
        (e.MarkCommand("c", e.LedgerState.DONE, "hub-1", 1), "bad_value"),
        (e.PutModel("m", "1", b"short", 1, "", 1), "bad_value"),
        (e.Batch("plug-1", "hub-1", 1, 1, 0, b"\x00" * 7), "bad_value"),
        (e.Group((e.group([]),)), "nested_group"),
    ],
)
def test_unencodable_entries_are_refused(entry: e.Entry, reason: str) -> None:
    with pytest.raises(e.EntryError) as err:
        e.encode(entry)
    assert err.value.reason == reason


def test_a_reading_value_beyond_f32_is_refused() -> None:
    batch = m.TelemetryBatch("plug-1", 1, 1, 0, (m.Reading(0, 0, 1e39),))
    with pytest.raises(e.EntryError) as err:
        e.Batch.from_message(batch, "hub-1")
    assert err.value.reason == "bad_value"


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
readings = st.builds(
    m.Reading,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.floats(allow_nan=False, width=32),
)
batches = st.builds(
    m.TelemetryBatch,
    ids,
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**40),
    st.integers(0, 2**50),
    st.lists(readings, max_size=40).map(tuple),
    st.integers(0, 2**40),
)


@settings(max_examples=300)
@given(batches, st.text(min_size=1, max_size=30).filter(lambda s: len(s.encode()) < 256))
def test_batches_round_trip(batch: m.TelemetryBatch, node: str) -> None:
    entry = e.decode(e.encode(e.Batch.from_message(batch, node)))
    assert isinstance(entry, e.Batch)
    assert (entry.device_id, entry.node_id, entry.first_seq, entry.lost_before) == (
        batch.device_id,
        node,
        batch.first_seq,
        batch.lost_before,
    )
    assert tuple(entry.readings()) == batch.readings


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_entry_error(data: bytes) -> None:
    for candidate in (data, b"\x01" + data, b"\x01\x01" + data, b"\x01\x10" + data):
        try:
            entry = e.decode(candidate)
        except e.EntryError as err:
            assert err.reason in e.REASONS
        else:
            assert isinstance(entry, tuple(e.ENTRY_TYPES))
