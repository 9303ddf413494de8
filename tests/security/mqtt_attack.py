"""What the MQTT attack tests share: signed frames of a device (its real key,
from the registry's answer), and raw MQTT connections to a hub node's broker
as an attacker outside the hub would make them (tools/lab/rawdevice.py), and
a node's metrics."""

from __future__ import annotations

from tools.lab.cluster import LocalCluster
from tools.lab.rawdevice import BASE_TS, batch, can_login, client, result, status

__all__ = ["BASE_TS", "batch", "can_login", "client", "gauge", "metric", "result", "status"]


def metric(cluster: LocalCluster, i: int, name: str, label: str) -> float:
    """One sample of node i's GET /metrics (0 when absent)."""
    return cluster.metric(i, name, label) or 0.0


def gauge(cluster: LocalCluster, i: int, name: str) -> float:
    """One unlabelled sample of node i's GET /metrics."""
    found = cluster.metric(i, name)
    assert found is not None, f"{name} not in /metrics"
    return found
