"""Invitations: an admin invites a user; the user sets their own password
through a one-time link that expires (hub/state/invites.py).

POST /v1/invites {name, role, devices, ttl_s}   a link (admin)
GET  /v1/invites                                every invitation, without links (admin)
GET  /v1/invites/{token}                        who the link is for (no login)
POST /v1/invites/{token}/accept {password}      set the password; a session token (no login)

The link is ``<scheme>://<http address>/#/invite/<token>``: the dashboard's
page that asks for the password. A link used before, or used at or after its
expiry, is refused (410) on every node: the first acceptance in the log wins.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from hub.core.clock import wall_ms
from hub.http.limits import Limits, TooMany, client_address
from hub.http.principal import Admin, Raft, ThisNode
from hub.http.replica import commit
from hub.http.serializers import user_json
from hub.state import entries as e
from hub.state import invites, users
from hub.state.raft import RaftNode
from protocol.topics import valid_device_id

router = APIRouter()

_GONE = {"invite_used": "this invitation was used already", "invite_expired": "it expired"}


class InviteIn(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")  # entries.USER_NAME
    role: str = Field(default="viewer", pattern="^(admin|operator|viewer)$")
    devices: list[str] = Field(default=[], max_length=10_000)
    ttl_s: int = Field(default=invites.DEFAULT_TTL_S, ge=60, le=invites.MAX_TTL_S)


class AcceptIn(BaseModel):
    password: str = Field(min_length=1, max_length=1024)


def invite_json(rec: invites.InviteRecord, now_ms: int) -> dict[str, Any]:
    state = "used" if rec.used_ms else ("expired" if now_ms >= rec.expires_ms else "open")
    return {
        "name": rec.name,
        "role": rec.role.name.lower(),
        "devices": list(rec.devices),
        "expires_ms": rec.expires_ms,
        "by": rec.by,
        "at_ms": rec.at_ms,
        "used_ms": rec.used_ms or None,
        "state": state,
    }


@router.post("/v1/invites")
async def create(body: InviteIn, who: Admin, r: Raft, node: ThisNode) -> dict[str, Any]:
    if not e.USER_NAME.fullmatch(body.name):
        raise HTTPException(422, f"bad user name {body.name!r}: 1-64 of A-Z a-z 0-9 . _ @ -")
    for d in body.devices:
        if not valid_device_id(d):
            raise HTTPException(422, f"bad device id {d!r}")
    if r.read(lambda s: s.user(body.name)) is not None:
        raise HTTPException(409, f"{body.name} is a user already")
    token, now = invites.new_token(), wall_ms()
    inv = e.Invite(
        invites.invite_id_of(token),
        body.name,
        e.Role[body.role.upper()],
        tuple(sorted(set(body.devices))),
        now + body.ttl_s * 1000,
        who.name,
        now,
    )
    res = await commit(r, e.encode(inv))
    if res.error is not None:
        raise HTTPException(409, f"{res.reason}: {res.detail}")
    link = f"{node.cfg.scheme}://{node.cfg.http.address}/#/invite/{token}"
    return {
        "token": token,
        "link": link,
        "name": inv.name,
        "role": body.role,
        "devices": list(inv.devices),
        "expires_ms": inv.expires_ms,
    }


@router.get("/v1/invites")
async def list_invites(_: Admin, r: Raft) -> list[dict[str, Any]]:
    now = wall_ms()
    recs = r.read(lambda s: s.read_tables(invites.all_invites))
    return [invite_json(x, now) for x in sorted(recs, key=lambda x: -x.at_ms)]


def _open(r: RaftNode, token: str) -> invites.InviteRecord:
    """The invitation of a link still usable; 404 or 410 otherwise."""
    iid = invites.invite_id_of(token) if invites.TOKEN.fullmatch(token) else ""
    rec = (
        r.read(lambda s: s.read_tables(lambda txn, dbs: invites.get(txn, dbs, iid)))
        if iid
        else None
    )
    if rec is None:
        raise HTTPException(404, "no such invitation")
    if rec.used_ms:
        raise HTTPException(410, _GONE["invite_used"])
    if wall_ms() >= rec.expires_ms:
        raise HTTPException(410, _GONE["invite_expired"])
    return rec


def _limit(request: Request) -> None:
    limits: Limits = request.app.state.limits
    if wait := limits.login_address.take(client_address(request.scope)):
        raise TooMany("invitation attempts from this address (http.login_address_per_minute)", wait)


@router.get("/v1/invites/{token}")
async def show(token: str, request: Request, r: Raft) -> dict[str, Any]:
    _limit(request)
    return invite_json(_open(r, token), wall_ms())


@router.post("/v1/invites/{token}/accept")
async def accept(
    token: str, body: AcceptIn, request: Request, r: Raft, node: ThisNode
) -> dict[str, Any]:
    """Set the password: the user exists from now on; a session token for them."""
    _limit(request)
    rec = _open(r, token)
    try:
        pw = await asyncio.to_thread(users.hash_password, body.password)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    res = await commit(r, e.encode(e.AcceptInvite(rec.invite_id, pw, wall_ms())))
    if res.error is not None:
        if res.reason in _GONE:
            raise HTTPException(410, _GONE[res.reason])
        code = 404 if res.reason == "unknown_invite" else 409
        raise HTTPException(code, f"{res.reason}: {res.detail}")
    user = r.read(lambda s: s.user(rec.name))
    if user is None:  # removed at once by an admin: nothing to log in as
        raise HTTPException(409, f"{rec.name} was removed")
    session, expires = users.issue(node.cfg.raft.secret, user)
    return {"token": session, "expires_ms": expires, **user_json(user)}
