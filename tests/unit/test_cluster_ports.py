"""tools/lab/cluster.py gives every node of a local cluster its own raft, broker
and HTTP ports: one port handed out twice stops a hub at start ("http.bind
... is already used by broker.bind")."""

from __future__ import annotations

import pytest

from tools.base.ports import free_ports
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
