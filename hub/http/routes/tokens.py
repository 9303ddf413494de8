"""Revoking cluster admin tokens (hub/core/auth.py), replicated as TOKEN_REVOKE
entries (hub/state/DESIGN.md, "Admin token revocations").

GET  /v1/tokens/revocations                     revoked ids and the cut-off (admin)
POST /v1/tokens/revocations {id} | {before_ms}  revoke one token by its id, or
                                                every token issued before a time (admin)

A revocation holds on every node once it commits: the answer comes after
this node has applied it. Tokens are minted only where the cluster secret is
(`aiot token create`), never through the API, so an admin user cannot make
a cluster admin token. A cut-off more than auth.CLOCK_SKEW_MS ahead of this
node's clock is refused (422): it would revoke tokens not minted yet, this
node's own among them. The cut-off only moves forward: an earlier one than
the cluster's changes nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from hub.core import auth
from hub.core.clock import wall_ms
from hub.http.principal import Admin, Raft
from hub.http.replica import check, commit
from hub.state import entries as e
from hub.state.store import Store

router = APIRouter()


class RevocationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")
    before_ms: int | None = Field(default=None, ge=1, le=2**63 - 1)


def _revocations(r: Raft) -> dict[str, Any]:
    ids, before = r.read(Store.revoked_tokens)
    return {
        "revoked": [{"id": token_id, "revoked_at_ms": at} for token_id, at in ids],
        "before_ms": before,
    }


@router.get("/v1/tokens/revocations")
async def list_revocations(_: Admin, r: Raft) -> dict[str, Any]:
    """Revoked admin token ids (each kept until no token with it can still
    be valid) and the cut-off (0: none)."""
    return _revocations(r)


@router.post("/v1/tokens/revocations")
async def revoke(body: RevocationIn, _: Admin, r: Raft) -> dict[str, Any]:
    """Revoke an admin token by its id, or every one issued before ``before_ms``."""
    if body.id is None and body.before_ms is None:
        raise HTTPException(422, "give the id of a token, or before_ms (or both)")
    now = wall_ms()
    if body.before_ms is not None and body.before_ms > now + auth.CLOCK_SKEW_MS:
        raise HTTPException(
            422, f"before_ms {body.before_ms} is ahead of this node's clock ({now} ms)"
        )
    entry = e.RevokeTokens(body.id or "", body.before_ms or 0, now)
    check(await commit(r, e.encode(entry)))
    return _revocations(r)
