"""Replicated log entries (hub/state/entries.py): exact bytes, round trips, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.core import config
from hub.state import entries as e
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
    e.NodeInfo("hub-1", "10.0.0.5:4321", "hub-1.local:1883", "[fe80::1%eth0]:8080", 700),
    e.NodeInfo("H" * 64, "[::1]:1", "a:65535", "x" * 250 + ":8080", 2**64 - 1),
    e.RemoveNode("hub.2_b", 800),
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


def test_node_entry_bytes_are_exact() -> None:
    expected = bytes.fromhex(
        "01 0a"  # version, type NODE_PUT
        "05 6875622d31"  # node id "hub-1"
        "06 683a34333231"  # raft "h:4321"
        "06 683a31383833"  # broker "h:1883"
        "06 683a38303830"  # http "h:8080"
        "0000019aa4b64500"  # at_ms
    )
    node = e.NodeInfo("hub-1", "h:4321", "h:1883", "h:8080", 1_763_700_000_000)
    assert e.encode(node) == expected and e.decode(expected) == node
    remove = bytes.fromhex("01 0b 05 6875622d31 0000000000000007")
    assert e.encode(e.RemoveNode("hub-1", 7)) == remove
    assert e.decode(remove) == e.RemoveNode("hub-1", 7)


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


def _str8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def _node_put(
    node_id: bytes = b"hub-1",
    raft: bytes = b"h:4321",
    broker: bytes = b"h:1883",
    http: bytes = b"h:8080",
) -> bytes:
    return b"\x01\x0a" + b"".join(map(_str8, (node_id, raft, broker, http))) + bytes(8)


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
        (b"\x01\x13", "unknown_type"),  # 19: free
        # NODE_PUT and NODE_REMOVE
        (_node_put() + b"\x00", "trailing_bytes"),
        (_node_put()[:-1], "truncated"),
        (_node_put(node_id=b"\xff\xfe"), "bad_utf8"),
        (_node_put(http=b"h:\xff"), "bad_utf8"),
        (_node_put(node_id=b""), "bad_value"),
        (_node_put(node_id=b"-hub"), "bad_value"),  # must start with a letter or digit
        (_node_put(node_id=b"hub/1"), "bad_value"),
        (_node_put(node_id=b"h" * 65), "bad_value"),
        (_node_put(raft=b""), "bad_value"),
        (_node_put(raft=b"h"), "bad_value"),  # no port
        (_node_put(broker=b"h:0"), "bad_value"),
        (_node_put(broker=b"h:65536"), "bad_value"),
        (_node_put(broker=b":1883"), "bad_value"),  # no host
        (_node_put(http=b"::1:8080"), "bad_value"),  # IPv6 without brackets
        (_node_put(http=b"h:80a"), "bad_value"),
        (_node_put(http=b"h :80"), "bad_value"),
        (b"\x01\x0b\x05hub-1" + bytes(8) + b"\x00", "trailing_bytes"),
        (b"\x01\x0b\x05hub-1" + bytes(7), "truncated"),
        (b"\x01\x0b\x03a b" + bytes(8), "bad_value"),
        (b"\x01\x0b\x00" + bytes(8), "bad_value"),
        (b"\x01\x0b\x02\xc3\x28" + bytes(8), "bad_utf8"),
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
        (e.NodeInfo("", "h:1", "h:2", "h:3", 1), "bad_value"),
        (e.NodeInfo("hub 1", "h:1", "h:2", "h:3", 1), "bad_value"),
        (e.NodeInfo("hub-1", "h:1", "h:2", "h:3", -1), "bad_value"),
        (e.NodeInfo("hub-1", "h:1", "h:2", "h:3", 2**64), "bad_value"),
        (e.NodeInfo("hub-1", "x" * 251 + ":8080", "h:2", "h:3", 1), "bad_value"),  # 256 bytes
        (
            e.NodeInfo("hub-1", "h:1", "é" * 127 + ":80", "h:3", 1),
            "bad_value",
        ),  # 130 chars, 257 bytes
        (e.NodeInfo("hub-1", "h:1", "h:2", "h:\udc80", 1), "bad_value"),
        (e.NodeInfo("hub-1", "h:1", "h:2", "[::1:8080", 1), "bad_value"),
        (e.RemoveNode("hub/1", 1), "bad_value"),
        (e.RemoveNode("hub-1", -1), "bad_value"),
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


def test_node_ids_are_the_configs() -> None:
    # The replicated format keeps its own copy; the two must agree.
    assert e.NODE_ID.pattern == config.NODE_ID.pattern


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("127.0.0.1:4321", True),
        ("hub-1.local:1", True),
        ("h:65535", True),
        ("[::1]:1883", True),
        ("[fe80::1%eth0]:8080", True),
        ("x" * 250 + ":8080", True),  # 255 bytes
        ("", False),
        ("h", False),
        ("h:", False),
        (":80", False),
        ("h:0", False),
        ("h:65536", False),
        ("h:123456", False),
        ("h:+80", False),
        ("h:٨٠", False),  # non-ASCII digits
        ("::1:80", False),
        ("[::1]80", False),
        ("[]:80", False),
        ("[[::1]]:80", False),
        ("h]:80", False),
        ("h :80", False),
        ("h\n:80", False),
        ("x" * 251 + ":8080", False),  # 256 bytes
    ],
)
def test_node_addresses(address: str, ok: bool) -> None:
    assert e.valid_address(address) is ok


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


hosts = st.one_of(
    st.from_regex(r"[A-Za-z0-9.-]{1,40}", fullmatch=True),
    st.from_regex(r"\[[0-9a-f:]{2,39}\]", fullmatch=True),
)
addresses = st.builds("{}:{}".format, hosts, st.integers(1, 65535))
nodes = st.builds(
    e.NodeInfo,
    st.from_regex(e.NODE_ID, fullmatch=True),
    addresses,
    addresses,
    addresses,
    st.integers(0, 2**64 - 1),
)


@settings(max_examples=300)
@given(nodes)
def test_nodes_round_trip(node: e.NodeInfo) -> None:
    assert e.decode(e.encode(node)) == node
    remove = e.RemoveNode(node.node_id, node.at_ms)
    assert e.decode(e.encode(remove)) == remove


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_entry_error(data: bytes) -> None:
    headers = (b"", b"\x01", b"\x01\x01", b"\x01\x0a", b"\x01\x0b", b"\x01\x10")
    for candidate in (h + data for h in headers):
        try:
            entry = e.decode(candidate)
        except e.EntryError as err:
            assert err.reason in e.REASONS
        else:
            assert isinstance(entry, tuple(e.ENTRY_TYPES))
