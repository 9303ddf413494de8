"""The export outbox in apply (hub/state/outbox.py): off until switched on,
the readings each batch stored and nothing else, dropped up to the cursor,
the same on every replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state import outbox
from hub.state.store import Store
from protocol import messages as m

pytestmark = pytest.mark.unit

DEVICE = "plug-1"
T0 = 1_764_806_400_000


def _register() -> bytes:
    return e.encode(e.RegisterDevice(e.Device(DEVICE, b"k" * 32, (), None, ""), 1))


def _batch(first: int, n: int) -> bytes:
    rs = tuple(m.Reading(k % 3, 1000 * k, 10.0 + k) for k in range(n))
    msg = m.TelemetryBatch(DEVICE, 1, first, T0 + 1000 * first, rs)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def _export(on: bool, cursor: int = 0) -> bytes:
    return e.encode(e.Export(on, cursor, 1))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    with Store(tmp_path / "a", map_size=1 << 26) as a, Store(tmp_path / "b", map_size=1 << 26) as b:
        yield a, b


def _apply(stores: tuple[Store, ...], entries: list[tuple[int, bytes]]) -> None:
    for s in stores:
        s.apply(entries)


def test_nothing_is_kept_until_the_export_is_on(pair: tuple[Store, Store]) -> None:
    _apply(pair, [(1, _register()), (2, _batch(1, 6))])
    a, b = pair
    assert a.export_cursor() is None and a.outbox(0, 10) == []
    _apply(pair, [(3, _export(True)), (4, _batch(7, 6)), (5, _batch(10, 6))])
    assert a.export_cursor() == 3  # on from the entry after the switch
    records = a.outbox(0, 10)
    assert [(i, p) for i, p, _ in records] == [(4, 0), (5, 0)]
    kind, device, rows = outbox.decode(records[0][2])
    assert (kind, device, [r[0] for r in rows]) == (outbox.READINGS, DEVICE, list(range(7, 13)))
    assert rows[0][1:] == (T0 + 7000, 0, 10.0)
    # Batch 5 overlaps what was stored: only seq 13..15 are new, and only they go out.
    assert [r[0] for r in outbox.decode(records[1][2])[2]] == [13, 14, 15]
    _apply(pair, [(6, _batch(1, 12))])  # all of it stored already: nothing to export
    assert [i for i, _, _ in a.outbox(0, 10)] == [4, 5]
    assert a.content_hash() == b.content_hash()


def test_the_cursor_drops_what_was_exported_and_never_goes_back(pair: tuple[Store, Store]) -> None:
    entries = [(1, _register()), (2, _export(True))]
    entries += [(3 + k, _batch(1 + 5 * k, 5)) for k in range(6)]  # indexes 3..8
    _apply(pair, entries)
    a, b = pair
    assert [i for i, _, _ in a.outbox(2, 3)] == [3, 4, 5]  # three indexes at most
    _apply(pair, [(9, _export(True, 5))])
    assert a.export_cursor() == 5 and [i for i, _, _ in a.outbox(0, 10)] == [6, 7, 8]
    _apply(pair, [(10, _export(True, 4))])  # a stale commit: nothing moves
    assert a.export_cursor() == 5 and a.outbox_size() == 3
    _apply(pair, [(11, _export(False))])
    assert a.export_cursor() is None and a.outbox_size() == 0
    _apply(pair, [(12, _batch(40, 5))])
    assert a.outbox_size() == 0  # off again: nothing kept
    assert a.content_hash() == b.content_hash()


def test_a_group_keeps_one_record_per_part(pair: tuple[Store, Store]) -> None:
    group = e.group([_batch(1, 3), _batch(4, 3)])
    _apply(pair, [(1, _register()), (2, _export(True)), (3, group)])
    a, _ = pair
    assert [(i, p) for i, p, _ in a.outbox(0, 10)] == [(3, 1), (3, 2)]


def test_a_bad_export_entry_is_refused() -> None:
    data = bytearray(_export(True, 3))
    data[-17] = 2  # the on/off flag
    with pytest.raises(e.EntryError):
        e.decode(bytes(data))


def test_events_are_kept_once_with_the_ledger_after_each_change(
    pair: tuple[Store, Store],
) -> None:
    from hub.link.cloudlink import _messages
    from protocol import cloud
    from protocol.profiles import PLUG_CAPABILITIES

    plug = e.Device("ann.plug", b"k" * 32, PLUG_CAPABILITIES, 2000.0, "ann")
    on = (m.Param("on", False),)
    decision = b'{"alert":true,"description":"over 2000 W for 30 s","facts":["2400 W"]}'
    result = m.CommandResult("c-1", "ann.plug", 1, m.CommandStatus.DONE, executed_at_ms=40)
    entries = [
        e.RegisterDevice(plug, 10),  # before the switch: not kept
        e.Export(True, 0, 1),
        e.RemoveDevice("ann.plug", 20),
        e.RegisterDevice(plug, 30),
        e.PutCommand("c-1", "ann.plug", 1, "relay.set", on, 31, 0),
        e.PutCommand("c-1", "ann.plug", 1, "relay.set", on, 31, 0),  # again: UNCHANGED
        e.Decision("d-1", "ann.plug", e.Tier.RULES, 32, "c-1", decision),
        e.RecordResult(result, "hub-2", 41),
        e.AckAlert("d-1", "ann", 50),
        e.AckAlert("d-1", "bob", 60),  # the first stands: nothing new
    ]
    _apply(pair, [(i, e.encode(x)) for i, x in enumerate(entries, 1)])
    a, b = pair
    assert a.outbox(0, 100) == b.outbox(0, 100)  # the same bytes on every replica
    got = [(i, outbox.decode_events(v)) for i, _, v in a.outbox(0, 100)]
    assert [(i, [k for k, _ in evs]) for i, (_, evs) in got] == [
        (3, ["devices"]),
        (4, ["devices"]),
        (5, ["commands"]),
        (7, ["decisions", "alerts"]),
        (8, ["commands"]),
        (9, ["alerts"]),
    ]
    bodies = {i: evs for i, (_, evs) in got}
    assert bodies[3][0][1] == {"op": "remove", "at_ms": 20}
    assert bodies[4][0][1]["actions"] == [c.action for c in PLUG_CAPABILITIES]
    put = bodies[5][0][1]
    assert (put["op"], put["seq"], put["state"], put["params"]) == (
        "put",
        1,
        "PENDING",
        {"on": False},
    )
    done = bodies[8][0][1]
    assert (done["op"], done["state"], done["node"], done["at_ms"]) == (
        "result",
        "DONE",
        "hub-2",
        41,
    )
    assert done["result"]["status"] == "DONE" and done["result"]["executed_at_ms"] == 40
    assert bodies[7][0][1]["record"]["facts"] == ["2400 W"]
    assert bodies[7][1][1] == {
        "op": "raised", "decision_id": "d-1", "at_ms": 32, "description": "over 2000 W for 30 s",
    }  # fmt: skip
    assert bodies[9][0][1] == {"op": "ack", "decision_id": "d-1", "user": "ann", "at_ms": 50}

    # As the exporter sends them: one message per event, on its kind's subject.
    msgs, newest = _messages("north", 7, a.outbox(0, 100)[3][2])
    assert [x.subject for x in msgs] == [
        "aiot.north.decisions.ann%2Eplug",
        "aiot.north.alerts.ann%2Eplug",
    ]
    assert newest == 32
    body = cloud.decode(msgs[1].payload)
    assert (body["kind"], body["index"], body["device"], body["op"]) == (
        "alerts",
        7,
        "ann.plug",
        "raised",
    )
