"""Rendezvous ordering of hub nodes per device (hub/link/rendezvous.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.link.rendezvous import balanced, order, weight

pytestmark = pytest.mark.unit

NODES = ["hub-1", "hub-2", "hub-3"]
node_ids = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True), max_size=8)
device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)


def test_weight_is_the_first_8_bytes_of_the_sha256() -> None:
    digest = hashlib.sha256(b"hub-1\x00plug-2").digest()
    assert weight("plug-2", "hub-1") == int.from_bytes(digest[:8], "big")
    # Fixed values: the order must never change between versions or machines
    # (devices hold their list in flash).
    assert [weight("plug-2", n) for n in NODES] == [
        0x8622D187FD37FFA1,
        0xBBC714FF4D5A5198,
        0x8BF3C121E6BA283F,
    ]
    assert order("plug-2", NODES) == ["hub-2", "hub-3", "hub-1"]
    assert order("plug-3", NODES) == ["hub-3", "hub-1", "hub-2"]
    assert order("meter-1", NODES) == ["hub-1", "hub-3", "hub-2"]


def test_the_order_is_the_same_in_another_process() -> None:
    devices = [f"plug-{i}" for i in range(50)]
    here = [order(d, NODES) for d in devices]
    code = (
        "from hub.link.rendezvous import order\n"
        f"print(repr([order(d, {NODES!r}) for d in {devices!r}]))\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root
    ).stdout
    assert out.strip() == repr(here)


@settings(max_examples=300)
@given(device_ids, node_ids)
def test_an_order_is_a_permutation_whatever_the_input_order(device: str, nodes: list[str]) -> None:
    got = order(device, nodes)
    assert sorted(got) == sorted(set(nodes))
    assert order(device, reversed(nodes)) == got
    assert order(device, iter(nodes)) == got  # any iterable, consumed once
    weights = [weight(device, n) for n in got]
    assert weights == sorted(weights, reverse=True)


def test_a_node_given_twice_appears_once() -> None:
    assert order("plug-1", ["hub-2", "hub-1", "hub-2"]) == order("plug-1", ["hub-1", "hub-2"])
    assert order("plug-1", []) == []


@settings(max_examples=300)
@given(device_ids, node_ids.filter(lambda ns: len(set(ns)) >= 2), st.data())
def test_removing_a_node_keeps_the_order_of_the_others(
    device: str, nodes: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(set(nodes))), label="removed")
    before = order(device, nodes)
    after = order(device, [n for n in nodes if n != gone])
    assert after == [n for n in before if n != gone]


def test_adding_a_node_moves_only_the_devices_it_wins() -> None:
    devices = [f"plug-{i}" for i in range(2000)]
    moved = [d for d in devices if order(d, NODES)[0] != order(d, [*NODES, "hub-4"])[0]]
    assert all(order(d, [*NODES, "hub-4"])[0] == "hub-4" for d in moved)
    assert 0.20 <= len(moved) / len(devices) <= 0.30  # about 1/4


def test_ties_are_broken_by_node_id(monkeypatch: pytest.MonkeyPatch) -> None:
    import hub.link.rendezvous as rv

    monkeypatch.setattr(rv, "weight", lambda device_id, node_id: 7)
    assert rv.order("plug-1", ["hub-3", "hub-1", "hub-2"]) == ["hub-1", "hub-2", "hub-3"]


def test_load_spreads_evenly() -> None:
    # A property of the hash over these ids, not a timing: each of 3 nodes is
    # first for about a third of 3000 devices, and second for about a third.
    devices = [f"plug-{i}" for i in range(3000)]
    orders = [order(d, NODES) for d in devices]
    for position in (0, 1):
        counts = Counter(o[position] for o in orders)
        assert set(counts) == set(NODES)
        for n in NODES:
            assert 0.28 <= counts[n] / len(devices) <= 0.39, (position, counts)
    # When a device's first node fails, its devices spread over the others.
    for failed in NODES:
        after = Counter(o[1] for o in orders if o[0] == failed)
        share = min(after.values()) / sum(after.values())
        assert 0.40 <= share <= 0.50, (failed, after)


@settings(max_examples=200)
@given(st.lists(device_ids, max_size=60), node_ids.filter(lambda ns: len(ns) > 0))
def test_balanced_firsts_are_shared_evenly(devices: list[str], nodes: list[str]) -> None:
    got = balanced(devices, nodes)
    assert list(got) == list(dict.fromkeys(devices))
    share, extra = divmod(len(got), len(set(nodes)))
    loads = Counter(order[0] for order in got.values())
    counts = [loads.get(n, 0) for n in set(nodes)]
    assert all(c in (share, share + 1) for c in counts)
    assert sum(1 for c in counts if c == share + 1) == extra
    for d, order_ in got.items():  # a permutation: the first, then its rendezvous order
        assert order_[1:] == [n for n in order(d, nodes) if n != order_[0]]
    assert balanced(devices, reversed(nodes)) == got  # the nodes' order does not matter


def test_balanced_gives_a_fourth_node_its_quarter() -> None:
    devices = [f"plug-{k}" for k in range(12)]
    four = [*NODES, "hub-4"]
    plain = Counter(order(d, four)[0] for d in devices)
    assert plain["hub-4"] == 2  # what independent draws give these ids
    got = balanced(devices, four)
    assert sorted(Counter(o[0] for o in got.values()).values()) == [3, 3, 3, 3]
    # Most devices keep their rendezvous first: only the overflow moves.
    assert sum(1 for d in devices if got[d][0] != order(d, four)[0]) <= 3
    assert balanced([], NODES) == {} and balanced(["a"], []) == {"a": []}
