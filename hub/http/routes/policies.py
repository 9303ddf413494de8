"""Operators' policies in words for the LLM tier, per device class (docs/llm.md
"Operator policies").

GET    /v1/policies                 the default and each class's effective policy (operator)
PUT    /v1/policies/{class} {policy}   set a class's policy, on every node (operator)
DELETE /v1/policies/{class}         the class back to the config's policy (operator)

A change is replicated (POLICY_SET, hub/state/policies.py): every node's
LLM tier reads it from its next consultation. A class is a device id up to
its first "-" (``plug`` for ``plug-7``). A bad class name or policy is
answered 400 with the reason, and nothing is proposed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from hub.core.clock import wall_ms
from hub.core.config import DEVICE_CLASS, policy_problem
from hub.core.validate import shown
from hub.decide.policies import Policies
from hub.http.principal import Operator, Raft, ThisNode
from hub.http.replica import check, commit
from hub.http.serializers import policy_json
from hub.state import entries as e
from hub.state.apply import Outcome

router = APIRouter()


class PolicyIn(BaseModel):
    policy: str  # checked by the route: 400 with the reason


def _class(device_class: str) -> str:
    if not DEVICE_CLASS.fullmatch(device_class):
        raise HTTPException(
            400,
            f"device class {shown(device_class[:80])!r}: 1-64 letters, digits, _ and . "
            "(a device id up to its first -)",
        )
    return device_class


@router.get("/v1/policies")
async def list_policies(_: Operator, r: Raft, node: ThisNode) -> dict[str, Any]:
    """The default (``[decisions] policy``) and every class with a policy of
    its own, each with the text the LLM tier reads and where it comes from."""
    p = Policies(node.cfg.decisions)
    classes = r.read(p.classes)
    return {
        "default": policy_json(p.default),
        "classes": {c: policy_json(x) for c, x in classes.items()},
    }


async def _set(r: Raft, node: ThisNode, device_class: str, text: str, by: str) -> dict[str, Any]:
    res = await commit(r, e.encode(e.SetPolicy(device_class, text, wall_ms(), by)))
    check(res)
    p = Policies(node.cfg.decisions)
    now = r.read(lambda s: p.of_class(s, device_class))
    return {"class": device_class, **policy_json(now), "changed": res.outcome is Outcome.APPLIED}


@router.put("/v1/policies/{device_class}")
async def set_policy(
    device_class: str, body: PolicyIn, who: Operator, r: Raft, node: ThisNode
) -> dict[str, Any]:
    _class(device_class)
    problem = policy_problem(body.policy)
    if problem is not None:
        hint = " (DELETE removes a class's policy)" if not body.policy.strip() else ""
        raise HTTPException(400, problem + hint)
    return await _set(r, node, device_class, body.policy, who.name)


@router.delete("/v1/policies/{device_class}")
async def unset_policy(device_class: str, who: Operator, r: Raft, node: ThisNode) -> dict[str, Any]:
    """The class back to the config's policy (``changed`` is false when it
    had none set through the API)."""
    _class(device_class)
    return await _set(r, node, device_class, "", who.name)
