"""The JSON the API answers for the store's records.

The same shapes go out in the live stream (hub/http/stream.py) and come back
in `aiot` commands and the dashboard, so a field renamed here is renamed for
all of them.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hub.core import auth
from hub.core.validate import address
from hub.decide.policies import Policy
from hub.link import membership
from hub.state import entries as e
from hub.state.raft import RaftNode
from hub.state.records import LedgerRecord
from protocol import messages as m


def capability_json(c: m.Capability) -> dict[str, Any]:
    return {
        "action": c.action,
        "params": [
            {"name": p.name, "kind": p.kind.name.lower(), "min": p.min, "max": p.max}
            for p in c.params
        ],
    }


def device_json(d: e.Device) -> dict[str, Any]:
    return {
        "device_id": d.device_id,
        "capabilities": [capability_json(c) for c in d.capabilities],
        "limit_w": d.limit_w,
        "owner": d.owner,
    }


def device_config(raft: RaftNode, d: e.Device, ca: bytes | None = None) -> dict[str, Any]:
    """What the device needs: id, key, its broker list in its own order, and
    the cluster CA it pins (``ca``: DER; base64 in ``"ca"``, absent for a
    plain-TCP lab)."""
    # The serving nodes only (a drained node is left out), in the device's
    # balanced order among the registered devices (hub/link/membership.py).
    hubs = []
    for node in raft.read(lambda s: membership.device_order(s, d.device_id)):
        a = address(node.broker)
        hubs.append([a.host, a.port])
    return {
        "device_id": d.device_id,
        "key": d.key.hex(),
        "hubs": hubs,
        "user": d.device_id,
        "password": auth.device_password(d.key),
        **({"ca": base64.b64encode(ca).decode()} if ca is not None else {}),
    }


def ledger_json(rec: LedgerRecord) -> dict[str, Any]:
    """A command's ledger record. ``issued_at_ms``, ``deadline_ms`` and each
    ``history[].at_ms`` are hub clocks (the node named with the step; PENDING
    is the issue); ``result.payload.executed_at_ms`` is the device's clock,
    synced to the hubs' through commit-acks and off by up to tens of ms, so
    it may read before ``issued_at_ms``: the history is the timeline."""
    c = rec.command
    return {
        "command_id": c.command_id,
        "device_id": c.device_id,
        "seq": c.seq,
        "term": c.term,
        "action": c.action,
        "params": {p.name: p.value for p in c.params},
        "issued_at_ms": c.issued_at_ms,
        "deadline_ms": c.deadline_ms,
        "state": rec.state.name,
        "history": [
            {"state": h.state.name, "at_ms": h.at_ms, "node": h.node_id, "detail": h.detail}
            for h in rec.history
        ],
        "result": None if rec.result is None else m.to_dict(rec.result),
    }


def decision_json(d: e.Decision, ack: tuple[str, int] | None) -> dict[str, Any]:
    """A decision with its provenance record merged in."""
    try:
        record = json.loads(d.record)
    except ValueError:
        record = {}
    return {
        **record,
        "decision_id": d.decision_id,
        "device_id": d.device_id,
        "tier": d.tier.name.lower(),
        "at_ms": d.at_ms,
        "command_id": d.command_id or None,
        "alert": bool(record.get("alert")),
        "acknowledged": None if ack is None else {"by": ack[0], "at_ms": ack[1]},
    }


def user_json(u: e.User) -> dict[str, Any]:
    return {"name": u.name, "role": u.role.name.lower(), "devices": list(u.devices)}


def policy_json(p: Policy) -> dict[str, Any]:
    """A policy in words and where it comes from: ``"api"`` (with when and by
    whom it was set), ``"config"`` (the class's in ``[decisions.policies]``)
    or ``"default"`` (``[decisions] policy``)."""
    out: dict[str, Any] = {"policy": p.text, "source": p.source}
    if p.source == "api":
        out |= {"at_ms": p.at_ms, "by": p.by}
    return out
