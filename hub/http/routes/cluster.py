"""The cluster's members.

GET    /v1/cluster                  the replicated node table (with each node's drain)
POST   /v1/cluster/nodes {raft}     add a node (dynamic membership; admin)
DELETE /v1/cluster/nodes/{raft}     remove a node (admin)
POST   /v1/cluster/drains/{node_id} drain a node: no new device sessions, its devices move (admin)
DELETE /v1/cluster/drains/{node_id} bring a drained node back (admin)

A drain is replicated (NODE_DRAIN); hub/link/membership.py sends every
device its new broker order and the drained node drops its device sessions.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from hub.core.clock import wall_ms
from hub.core.validate import address
from hub.http.bodies import NodeIn
from hub.http.principal import Admin, Raft, ThisNode, Viewer
from hub.http.replica import commit
from hub.link.membership import drained, serving
from hub.state import entries as e
from hub.state.raft import RaftError, RaftNode
from hub.state.store import Store

router = APIRouter()


def _members(r: RaftNode) -> set[str]:
    st = r.raft_status()
    prefix = "partner_node_status_server_"
    return {k[len(prefix) :] for k in st if k.startswith(prefix)} | {r.address}


def _valid_address(value: str) -> None:
    try:
        address(value)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _refused(exc: RaftError) -> HTTPException:
    code = 409 if exc.reason == "request_denied" else 503
    return HTTPException(code, f"membership change refused: {exc.reason}")


@router.get("/v1/cluster")
async def cluster(_: Viewer, r: Raft, node: ThisNode) -> dict[str, Any]:
    st = r.status()
    nodes, out = r.read(lambda s: (s.nodes(), drained(s)))
    return {
        "node_id": node.node_id,
        "leader": st.leader,
        "term": st.term,
        "nodes": [
            {
                "node_id": n.node_id,
                "raft": n.raft,
                "broker": n.broker,
                "http": n.http,
                "drained": n.node_id in out,
            }
            for n in nodes
        ],
    }


@router.post("/v1/cluster/nodes")
async def add_node(body: NodeIn, _: Admin, r: Raft) -> dict[str, Any]:
    _valid_address(body.raft)
    if body.raft in _members(r):
        raise HTTPException(409, f"{body.raft} is already a member")
    try:
        await r.add_node(body.raft)
    except RaftError as exc:
        raise _refused(exc) from None
    return {"added": body.raft}


@router.delete("/v1/cluster/nodes/{raft_address}")
async def remove_node(raft_address: str, _: Admin, r: Raft) -> dict[str, Any]:
    _valid_address(raft_address)
    if raft_address not in _members(r):
        raise HTTPException(404, f"{raft_address} is not a member")
    try:
        await r.remove_node(raft_address)
    except RaftError as exc:
        raise _refused(exc) from None
    for n in r.read(Store.nodes):
        if n.raft == raft_address:
            await commit(r, e.encode(e.RemoveNode(n.node_id, wall_ms())))
    return {"removed": raft_address}


@router.post("/v1/cluster/drains/{node_id}")
async def drain_node(node_id: str, _: Admin, r: Raft) -> dict[str, Any]:
    """Drain a node: 404 for a node not in the table, 409 for the last node
    that serves devices (they would have nowhere to go)."""
    nodes, active = r.read(lambda s: ({n.node_id for n in s.nodes()}, serving(s)))
    if node_id not in nodes:
        raise HTTPException(404, f"no node {node_id!r} in the node table")
    if [n.node_id for n in active] == [node_id]:
        raise HTTPException(409, f"{node_id} is the last node serving devices")
    await commit(r, e.encode(e.DrainNode(node_id, True, wall_ms())))
    return {"drained": node_id}


@router.delete("/v1/cluster/drains/{node_id}")
async def undrain_node(node_id: str, _: Admin, r: Raft) -> dict[str, Any]:
    if r.read(lambda s: s.node(node_id)) is None:
        raise HTTPException(404, f"no node {node_id!r} in the node table")
    await commit(r, e.encode(e.DrainNode(node_id, False, wall_ms())))
    return {"undrained": node_id}
