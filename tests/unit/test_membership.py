"""Membership on one store: the NODE_DRAIN entry, the hubs.set system
command in the ledger, and the reconcile plan (hub/link/membership.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.decide import guard as g
from hub.link import membership as mb
from hub.link import rendezvous
from hub.state import entries as e
from hub.state.apply import Outcome
from hub.state.store import Store
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES

MAP = 64 * 1024 * 1024
DEVICES = [f"plug-{i}" for i in range(12)]


def node(i: int) -> e.NodeInfo:
    return e.NodeInfo(f"hub-{i}", f"10.0.0.{i}:4321", f"10.0.0.{i}:8883", f"10.0.0.{i}:8443", i)


class Log:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = 0

    def apply(self, *entries: object) -> list[Outcome]:
        numbered = []
        for entry in entries:
            self.index += 1
            numbered.append((self.index, e.encode(entry)))  # type: ignore[arg-type]
        return [r.outcome for r in self.store.apply(numbered)]

    def send_plan(self, term: int = 1) -> list[tuple[str, str]]:
        todo = mb.plan(self.store)
        for device_id, hubs in todo:
            (out,) = self.apply(mb.hubs_command(device_id, hubs, term, 5))
            assert out is Outcome.APPLIED
        return todo


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    s = Store(tmp_path / "store", map_size=MAP)
    lg = Log(s)
    lg.apply(node(1), node(2), node(3))
    for d in DEVICES:
        lg.apply(e.RegisterDevice(e.Device(d, b"k" * 32, PLUG_CAPABILITIES), 1))
    yield lg
    s.close()


def test_drain_entry_round_trips_and_refuses_bad_values() -> None:
    entry = e.DrainNode("hub-2", True, 7)
    assert e.decode(e.encode(entry)) == entry
    assert e.decode(e.encode(e.DrainNode("hub-2", False, 8))) == e.DrainNode("hub-2", False, 8)
    raw = bytearray(e.encode(entry))
    raw[8] = 2  # the drained flag
    with pytest.raises(e.EntryError) as err:
        e.decode(bytes(raw))
    assert err.value.reason == "bad_value"
    with pytest.raises(e.EntryError):
        e.encode(e.DrainNode("hub/2", True, 1))


def test_drain_is_idempotent_and_outside_the_content_hash(log: Log) -> None:
    before = log.store.content_hash()
    assert log.apply(e.DrainNode("hub-2", True, 1)) == [Outcome.APPLIED]
    assert log.apply(e.DrainNode("hub-2", True, 2)) == [Outcome.UNCHANGED]
    assert mb.drained(log.store) == {"hub-2"}
    assert [n.node_id for n in mb.serving(log.store)] == ["hub-1", "hub-3"]
    assert log.store.content_hash() == before  # topology, like the node table
    assert log.apply(e.DrainNode("hub-2", False, 3)) == [Outcome.APPLIED]
    assert log.apply(e.DrainNode("hub-2", False, 4)) == [Outcome.UNCHANGED]
    assert mb.drained(log.store) == set()


def test_hubs_text_lists_the_brokers_in_the_given_order() -> None:
    assert mb.hubs_text([node(2), node(1), node(3)]) == "10.0.0.2:8883,10.0.0.1:8883,10.0.0.3:8883"
    v6 = e.NodeInfo("hub-9", "[::1]:1", "[::1]:8883", "[::1]:2", 1)
    assert mb.hubs_text([v6]) == "[::1]:8883"


def firsts(sent: list[tuple[str, str]]) -> dict[str, str]:
    """Each device's first node id, from the hubs parameters sent."""
    return {d: "hub-" + h.split(",")[0].split(":")[0][-1] for d, h in sent}


def test_a_new_node_reconfigures_every_device_once(log: Log) -> None:
    assert mb.plan(log.store) != []  # never configured since registration
    log.send_plan()
    assert mb.plan(log.store) == []  # the ledger now holds every order
    log.apply(node(1))  # a restart re-proposes the same record: nothing to do
    assert mb.plan(log.store) == []
    log.apply(node(4))
    sent = log.send_plan()
    assert sorted(d for d, _ in sent) == sorted(DEVICES)  # every list gains the new node
    nodes = ["hub-1", "hub-2", "hub-3", "hub-4"]
    want = rendezvous.balanced(log.store.device_ids_registered(), nodes)
    assert firsts(sent) == {d: order[0] for d, order in want.items()}
    assert sorted(Counter(firsts(sent).values()).values()) == [3, 3, 3, 3]  # a quarter each
    for d, hubs in sent:  # after the first, the device's own rendezvous order
        rest = [n for n in rendezvous.order(d, nodes) if n != want[d][0]]
        assert hubs.split(",")[1:] == [f"10.0.0.{n[-1]}:8883" for n in rest]
    assert mb.plan(log.store) == []  # a second reconcile (a new leader) sends nothing
    ledger = [r for d in DEVICES for r in log.store.commands(d)]
    assert len(ledger) == 24 and all(r.command.deadline_ms == 0 for r in ledger)


def register(log: Log, device_id: str, at_ms: int) -> str:
    """Register a plug and return the first node id of the order its config gets."""
    assert log.apply(e.RegisterDevice(e.Device(device_id, b"k" * 32, PLUG_CAPABILITIES), at_ms))
    return mb.device_order(log.store, device_id)[0].node_id


def test_registrations_keep_the_shares_even(tmp_path: Path) -> None:
    s = Store(tmp_path / "store", map_size=MAP)
    try:
        lg = Log(s)
        lg.apply(node(1), node(2), node(3))
        got = Counter(register(lg, f"dev-{k}", 10 + k) for k in range(30))
        assert sorted(got.values()) == [10, 10, 10]
        # A device's order does not change when others register after it.
        before = {f"dev-{k}": mb.device_order(s, f"dev-{k}") for k in range(30)}
        register(lg, "late", 99)
        assert {d: mb.device_order(s, d) for d in before} == before
        # After a reconcile (a fourth node), registrations follow the orders sent.
        lg.apply(node(4))
        sent = lg.send_plan()
        assert sorted(Counter(firsts(sent).values()).values()) == [7, 8, 8, 8]
        more = Counter(register(lg, f"new-{k}", 200 + k) for k in range(9))
        loads = Counter(firsts(sent).values()) + more
        assert sorted(loads.values()) == [10, 10, 10, 10]
        # A config fetched again gives the order the reconcile sent.
        for d, hubs in sent:
            assert mb.hubs_text(mb.device_order(s, d)) == hubs
        # Without a serving node, no order.
        lg.apply(*(e.DrainNode(f"hub-{i}", True, 300) for i in (1, 2, 3, 4)))
        assert mb.device_order(s, "new-0") == []
    finally:
        s.close()


def test_a_drained_node_leaves_every_order_and_comes_back(log: Log) -> None:
    log.send_plan()
    log.apply(e.DrainNode("hub-2", True, 9))
    sent = dict(log.send_plan())
    assert len(sent) == 12 and all("10.0.0.2:" not in h for h in sent.values())
    log.apply(e.DrainNode("hub-2", False, 10))
    back = dict(log.send_plan())
    assert all(h.count(",") == 2 for h in back.values())
    log.apply(e.DrainNode("hub-1", True, 11), e.DrainNode("hub-2", True, 11))
    log.apply(e.DrainNode("hub-3", True, 11))
    assert mb.plan(log.store) == []  # no serving node: nothing to send


def test_hubs_set_enters_the_ledger_outside_the_capabilities(log: Log) -> None:
    relay_only = e.Device("meter-1", b"m" * 32, (PLUG_CAPABILITIES[0],))
    log.apply(e.RegisterDevice(relay_only, 1))
    assert log.apply(mb.hubs_command("meter-1", "10.0.0.1:8883", 1, 5)) == [Outcome.APPLIED]
    other = e.PutCommand("c1", "meter-1", 1, "limit.set", (m.Param("watts", 5.0),))
    (res,) = log.store.apply([(log.index + 1, e.encode(other))])
    assert res.outcome is Outcome.REJECTED and res.reason == "unknown_action"
    assert [r.command.action for r in log.store.commands("meter-1")] == ["hubs.set"]


def test_the_guard_keeps_hubs_set_from_every_origin() -> None:
    guard = g.Guard(g.GuardConfig())
    dev = e.Device("plug-1", b"k" * 32, (*PLUG_CAPABILITIES, m.Capability("hubs.set")))
    for origin in g.ORIGINS:
        v = guard.check(g.Proposal("plug-1", "hubs.set", {"hubs": "h:1"}, origin), dev, 1)
        assert not v.allowed and v.reason == "unknown_action"


def test_a_device_of_older_firmware_is_not_sent_the_same_order_again(log: Log) -> None:
    sent = dict(log.send_plan())
    rec = log.store.commands("plug-1")[-1]
    refusal = m.CommandResult(
        rec.command.command_id,
        "plug-1",
        rec.command.seq,
        m.CommandStatus.REJECTED,
        m.Reason.UNKNOWN_ACTION,
        "unknown action",
        0,
    )
    assert log.apply(e.RecordResult(refusal, "hub-1", 6)) == [Outcome.APPLIED]
    assert log.store.command(rec.command.command_id).state is e.LedgerState.REJECTED  # type: ignore[union-attr]
    assert "plug-1" in sent and mb.plan(log.store) == []  # final: not resent


def test_devices_registered_since_the_last_change_are_left_alone(log: Log) -> None:
    # Their config already has the current order: no hubs.set until a change.
    assert mb.plan(log.store, fresh=set(DEVICES)) == []
    assert [d for d, _ in mb.plan(log.store, fresh={"plug-1"})] == [
        d for d in sorted(DEVICES) if d != "plug-1"
    ]
    log.send_plan()
    log.apply(node(4))
    assert len(mb.plan(log.store, fresh=set(DEVICES))) == 12  # they have a hubs.set now
