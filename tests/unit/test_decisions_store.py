"""DECISION entries: encoding, validation and the provenance tables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.state import entries as e
from hub.state.apply import Outcome
from hub.state.store import Store

pytestmark = pytest.mark.unit


def decision(did: str, device: str = "plug-1", at_ms: int = 1000, **record: object) -> e.Decision:
    body = json.dumps({"facts": ["power over the limit"], **record}, sort_keys=True).encode()
    return e.Decision(did, device, e.Tier.RULES, at_ms, "cmd-1", body)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "s") as s:
        s.apply([(1, e.encode(e.RegisterDevice(e.Device("plug-1", b"k" * 32), 1)))])
        s.apply([(2, e.encode(e.RegisterDevice(e.Device("plug-2", b"k" * 32), 1)))])
        yield s


def test_round_trip() -> None:
    d = decision("d-1", verdict="allowed")
    assert e.decode(e.encode(d)) == d


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (e.Decision("", "plug-1", e.Tier.LLM, 1, "", b"{}"), "bad_value"),
        (e.Decision("d 1", "plug-1", e.Tier.LLM, 1, "", b"{}"), "bad_value"),
        (e.Decision("d-1", "no/slash", e.Tier.LLM, 1, "", b"{}"), "bad_device_id"),
        (e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "bad id!", b"{}"), "bad_value"),
        (e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "", b"[1, 2]"), "bad_value"),
        (e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "", b"not json"), "bad_value"),
        (e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "", b'"\xff"'), "bad_utf8"),
        (
            e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "", b'{"x": "' + b"a" * 40_000 + b'"}'),
            "bad_value",
        ),
    ],
)
def test_invalid_decisions_are_refused_both_ways(bad: e.Decision, reason: str) -> None:
    with pytest.raises(e.EntryError) as err:
        e.encode(bad)
    assert err.value.reason == reason
    # The same bytes crafted by hand are refused by decode.
    good = e.encode(e.Decision("d-1", "plug-1", e.Tier.LLM, 1, "", b"{}"))
    assert e.decode(good).record == b"{}"  # type: ignore[union-attr]
    with pytest.raises(e.EntryError):
        e.decode(good[:-1])
    tier_at = 2 + 1 + len("d-1") + 1 + len("plug-1")
    assert good[tier_at] == e.Tier.LLM
    with pytest.raises(e.EntryError) as err:
        e.decode(good[:tier_at] + b"\x09" + good[tier_at + 1 :])
    assert err.value.reason == "bad_value"


def test_apply_records_indexes_and_is_idempotent(store: Store) -> None:
    d1 = decision("d-1", at_ms=1000)
    d2 = decision("d-2", at_ms=3000)
    d3 = decision("d-3", device="plug-2", at_ms=2000)
    results = store.apply([(3, e.encode(d1)), (4, e.encode(d2)), (5, e.encode(d3))])
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 3
    assert store.decision("d-1") == d1
    assert [d.decision_id for d in store.decisions("plug-1")] == ["d-2", "d-1"]
    assert [d.decision_id for d in store.decisions("plug-2")] == ["d-3"]
    assert [d.decision_id for d in store.decisions()] == ["d-2", "d-3", "d-1"]
    assert [d.decision_id for d in store.decisions("plug-1", limit=1)] == ["d-2"]
    assert store.decisions("plug-9") == []
    before = store.content_hash()
    (again,) = store.apply([(6, e.encode(d1))])
    assert again.outcome is Outcome.UNCHANGED and store.content_hash() == before
    (clash,) = store.apply([(7, e.encode(decision("d-1", verdict="other")))])
    assert clash.outcome is Outcome.REJECTED and clash.reason == "decision_exists"
    (ghost,) = store.apply([(8, e.encode(decision("d-9", device="ghost")))])
    assert ghost.reason == "unknown_device"
    assert store.content_hash() == before


def test_decisions_outlive_the_device(store: Store) -> None:
    store.apply([(3, e.encode(decision("d-1")))])
    store.apply([(4, e.encode(e.RemoveDevice("plug-1", 5)))])
    assert store.decision("d-1") is not None


def test_an_alert_is_acknowledged_once(store: Store) -> None:
    store.apply([(3, e.encode(decision("d-1")))])
    (first,) = store.apply([(4, e.encode(e.AckAlert("d-1", "ann", 50)))])
    (second,) = store.apply([(5, e.encode(e.AckAlert("d-1", "bob", 60)))])
    assert (first.outcome, second.outcome) == (Outcome.APPLIED, Outcome.UNCHANGED)
    assert store.alert_ack("d-1") == ("ann", 50)
    (ghost,) = store.apply([(6, e.encode(e.AckAlert("d-9", "ann", 70)))])
    assert ghost.reason == "unknown_decision"
    assert e.decode(e.encode(e.AckAlert("d-1", "ann", 50))) == e.AckAlert("d-1", "ann", 50)


def test_users_round_trip_and_replace(store: Store) -> None:
    u = e.User("ann", e.Role.VIEWER, b"h" * 48, ("plug-1",), 10)
    assert e.decode(e.encode(u)) == u
    (r1,) = store.apply([(3, e.encode(u))])
    (r2,) = store.apply([(4, e.encode(e.User("ann", e.Role.VIEWER, b"h" * 48, ("plug-1",), 99)))])
    assert (r1.outcome, r2.outcome) == (Outcome.APPLIED, Outcome.UNCHANGED)
    store.apply([(5, e.encode(e.User("ann", e.Role.OPERATOR, b"h" * 48, (), 100)))])
    got = store.user("ann")
    assert got is not None and got.role is e.Role.OPERATOR
    store.apply([(6, e.encode(e.RemoveUser("ann", 101)))])
    assert store.user("ann") is None and store.users() == []
    with pytest.raises(e.EntryError):
        e.encode(e.User("bad name", e.Role.ADMIN, b"h"))
