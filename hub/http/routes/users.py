"""API users and their sessions (hub/state/users.py).

POST   /v1/login {username, password}      a session token
GET    /v1/me                              who the token is (an admin token: its id, times)
GET    /v1/users                           every user (admin)
PUT    /v1/users/{name} {role, password, devices}   add or change one (admin)
DELETE /v1/users/{name}                    remove one (admin)
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from hub.core.clock import wall_ms
from hub.http.bodies import LoginIn, UserIn, role
from hub.http.limits import Limits, TooMany, client_address
from hub.http.principal import Admin, Raft, ThisNode, Viewer
from hub.http.replica import check, commit, key_ok
from hub.http.serializers import user_json
from hub.state import entries as e
from hub.state import users
from hub.state.store import Store
from protocol.topics import valid_device_id

router = APIRouter()


@router.post("/v1/login")
async def login(body: LoginIn, request: Request, r: Raft, node: ThisNode) -> dict[str, Any]:
    """A session token. Limited per client address (every attempt) and per
    user name (failed attempts): 429 with Retry-After. Known and unknown
    names cost the same password hash and get the same 401."""
    limits: Limits = request.app.state.limits
    name = body.username
    if wait := limits.login_address.take(client_address(request.scope)):
        raise TooMany("logins from this address (http.login_address_per_minute)", wait)
    if wait := limits.login_user.wait(name):
        raise TooMany(f"failed logins for {name[:64]!r} (http.login_user_per_minute)", wait)
    user = r.read(lambda s: s.user(name)) if e.USER_NAME.fullmatch(name) else None
    found = await asyncio.to_thread(users.check_login, user, body.password)
    if found is None:
        limits.login_user.take(name)
        raise HTTPException(401, "wrong user name or password")
    token, expires = users.issue(node.cfg.raft.secret, found)
    return {"token": token, "expires_ms": expires, **user_json(found)}


@router.get("/v1/me")
async def me(who: Viewer) -> dict[str, Any]:
    """Who the token speaks for; with an admin token, its id and times too."""
    out: dict[str, Any] = {
        "name": who.name,
        "role": who.role.name.lower(),
        "devices": None if who.devices is None else sorted(who.devices),
    }
    if who.token is not None:
        out["token"] = {
            "id": who.token.token_id,
            "issued_ms": who.token.issued_ms,
            "expires_ms": who.token.expires_ms,
        }
    return out


@router.get("/v1/users")
async def list_users(_: Admin, r: Raft) -> list[dict[str, Any]]:
    return [user_json(u) for u in r.read(Store.users)]


@router.put("/v1/users/{name}")
async def put_user(name: str, body: UserIn, _: Admin, r: Raft) -> dict[str, Any]:
    if not e.USER_NAME.fullmatch(name):
        raise HTTPException(422, f"bad user name {name!r}: 1-64 of A-Z a-z 0-9 . _ @ -")
    old = r.read(lambda s: s.user(name))
    if body.password is None and old is None:
        raise HTTPException(422, "a new user needs a password")
    for d in body.devices:
        if not valid_device_id(d):
            raise HTTPException(422, f"bad device id {d!r}")
    try:
        pw = (
            await asyncio.to_thread(users.hash_password, body.password)
            if body.password is not None
            else old.password_hash  # type: ignore[union-attr]
        )
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    user = e.User(name, role(body.role), pw, tuple(sorted(set(body.devices))), wall_ms())
    check(await commit(r, e.encode(user)))
    return user_json(user)


@router.delete("/v1/users/{name}")
async def remove_user(name: str, _: Admin, r: Raft) -> dict[str, Any]:
    if not key_ok(name) or r.read(lambda s: s.user(name)) is None:
        raise HTTPException(404, f"no user {name[:80]!r}")
    check(await commit(r, e.encode(e.RemoveUser(name, wall_ms()))))
    return {"removed": name}
