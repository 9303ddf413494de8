"""protocol/cloud.py: subjects, message ids and payloads of the export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import cloud

pytestmark = pytest.mark.unit


def test_subjects_escape_dots_and_refuse_wildcards() -> None:
    assert cloud.subject("north-1", "readings", "ann.plug") == "aiot.north-1.readings.ann%2Eplug"
    assert cloud.untoken("ann%2Eplug") == "ann.plug"
    assert cloud.subject("north-1", "status") == "aiot.north-1.status"
    for bad in ("a*", "a>", "a b", "", "a%b"):
        with pytest.raises(cloud.CloudFormatError):
            cloud.token(bad)
    for site in ("North", "-a", "a.b", "a" * 33, ""):
        with pytest.raises(cloud.CloudFormatError):
            cloud.subject(site, "readings", "p")
    with pytest.raises(cloud.CloudFormatError):
        cloud.subject("s", "secrets", "p")
    assert cloud.stream_name("north-1") == "AIOT_SITE_NORTH_1"


def test_message_ids_round_trip_and_order() -> None:
    mid = cloud.msg_id("north-1", 812, 1, 3)
    assert str(mid) == "north-1:812:1/3" and not mid.last
    assert cloud.parse_msg_id(str(mid)) == mid
    assert cloud.msg_id("s", 9, 2, 3).last
    assert cloud.msg_id("s", 9, 2, 3) < cloud.msg_id("s", 10, 0, 1)
    for bad in ("s:0:0/1", "s:1:1/1", "s:1:0/0", "S:1:0/1", "s:1:0", "s:x:0/1", "s:1:0/1 "):
        with pytest.raises(cloud.CloudFormatError):
            cloud.parse_msg_id(bad)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2000),
            st.integers(0, 10**6),
            st.integers(0, 65535),
            st.floats(width=32, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=50,
    ),
    st.integers(1, 7),
)
def test_readings_round_trip_exactly(raw: list[tuple[int, int, int, float]], per: int) -> None:
    seq = 1000
    rows = []
    for ds, ts, sensor, value in raw:
        seq += ds + 1
        rows.append((seq, 1_764_806_400_000 + ts, sensor, value))
    payloads = cloud.readings_payloads("north-1", 5, "ann.plug", rows, max_rows=per)
    assert len(payloads) == -(-len(rows) // per)
    back = [cloud.decode_readings(p) for p in payloads]
    assert {(b.site, b.index, b.device_id) for b in back} == {("north-1", 5, "ann.plug")}
    got = cloud.rows_of(back)
    assert [r[:3] for r in got] == [r[:3] for r in rows]
    assert [np.float32(r[3]) for r in got] == [np.float32(r[3]) for r in rows]


def test_a_reading_costs_about_fifteen_bytes() -> None:
    rows = [
        (1000 + i, 1_764_806_400_000 + 1000 * (i // 3), 1 + i % 3, 230.1 + i / 7)
        for i in range(999)
    ]
    (payload,) = cloud.readings_payloads("north-1", 5, "plug-1", rows)
    assert len(payload) / len(rows) < 25
    assert json.loads(payload)["rows"][4] == [4, 1000, 2, cloud.f32(230.1 + 4 / 7)]


def test_bad_payloads_are_refused() -> None:
    good = cloud.readings_payloads("s", 1, "p", [(1, 2, 3, 4.0)])[0]
    assert cloud.decode_readings(good).rows == ((1, 2, 3, 4.0),)
    for bad in (
        b"\xff",
        b"[]",
        b'{"v":2,"kind":"readings","site":"s","index":1}',
        b'{"v":1,"kind":"nope","site":"s","index":1}',
        b'{"v":1,"kind":"readings","site":"S","index":1}',
        b'{"v":1,"kind":"readings","site":"s","index":1,"device":"p","seq0":1,"ts0":1,"rows":[[1]]}',
    ):
        with pytest.raises(cloud.CloudFormatError):
            cloud.decode_readings(bad)
    event = cloud.event_payload("s", 3, "alerts", {"device": "p", "text": "over"})
    assert cloud.decode(event)["kind"] == "alerts"
    with pytest.raises(cloud.CloudFormatError):
        cloud.decode_readings(event)
