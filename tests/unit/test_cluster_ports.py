"""tools/lab/cluster.py gives every node of a local cluster its own raft, broker
and HTTP ports: one port handed out twice stops a hub at start ("http.bind
... is already used by broker.bind")."""

from __future__ import annotations

import pytest

from tools.base.ports import EPHEMERAL, free_ports, port_range
from tools.lab.cluster import _node_ports

pytestmark = pytest.mark.unit


def test_free_ports_are_distinct() -> None:
    for _ in range(20):
        ports = free_ports(30)
        assert len(set(ports)) == 30 and all(0 < p < 65536 for p in ports)


def test_a_clusters_ports_are_all_distinct() -> None:
    nodes = _node_ports(5)
    ports = [p for n in nodes for p in (n.raft, n.broker, n.http)]
    assert len(nodes) == 5 and len(set(ports)) == 15


def test_ports_are_chosen_below_the_kernels_ephemeral_range() -> None:
    # Outgoing connections take ports from that range at any moment.
    ephemeral_lo = int(EPHEMERAL.read_text().split()[0])
    span = port_range({})
    assert span is not None and span.start >= 1024 and span.stop <= ephemeral_lo
    assert all(p in span for p in free_ports(40))


def test_xdist_workers_choose_from_slices_of_their_own() -> None:
    whole = port_range({})
    slices = [
        port_range({"PYTEST_XDIST_WORKER": f"gw{k}", "PYTEST_XDIST_WORKER_COUNT": "3"})
        for k in range(3)
    ]
    assert whole is not None and all(s is not None for s in slices)
    sets = [set(s) for s in slices if s is not None]
    assert not (sets[0] & sets[1]) and not (sets[1] & sets[2]) and not (sets[0] & sets[2])
    assert set().union(*sets) <= set(whole)


def test_a_process_does_not_hand_out_a_port_twice_in_a_row() -> None:
    first, second = free_ports(50), free_ports(50)
    assert not set(first) & set(second)
