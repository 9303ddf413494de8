"""The cluster's members.

GET    /v1/cluster                  the replicated node table
POST   /v1/cluster/nodes {raft}     add a node (dynamic membership; admin)
DELETE /v1/cluster/nodes/{raft}     remove a node (admin)
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from hub.core.clock import wall_ms
from hub.core.validate import address
from hub.http.bodies import NodeIn
from hub.http.principal import Admin, Raft, ThisNode, Viewer
from hub.http.replica import commit
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
    return {
        "node_id": node.node_id,
        "leader": st.leader,
        "term": st.term,
        "nodes": [
            {"node_id": n.node_id, "raft": n.raft, "broker": n.broker, "http": n.http}
            for n in r.read(Store.nodes)
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
