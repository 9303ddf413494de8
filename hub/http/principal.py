"""Who is asking: the bearer token of a request, and what it may do.

``Authorization: Bearer <token>`` carries either a cluster admin token
(``a1.``: minted and signed with a key from the cluster secret, expiring,
revocable; hub/core/auth.py) or an API user's session token
(``v1.``: hub/state/users.py, from ``POST /v1/login``). The route
dependencies below turn it into a ``Principal``, or answer 401 (no token, or
one that does not verify) or 403 (a role below the one the route needs)::

    Admin, Operator, Viewer     a principal of at least that role
    ClusterAdmin                the cluster admin token only (firmware uploads)
    Raft                        this node's replica of the store
    ThisNode                    the node itself (hub/http/node.py)

A token that is not one (garbage, another version, a forged, expired or
revoked one) is 401 with ``WWW-Authenticate: Bearer error="invalid_token"``,
never a server error. An admin token is checked in this order: its shape
(bounded, before any HMAC), its signature (constant time), its lifetime
against ``http.admin_token_max_ttl_s``, its times against this node's clock,
then the replicated revocations (``AdminTokens``).

Each API user's requests go through a token bucket (``http.user_burst``,
``http.user_per_s``: 429 with ``Retry-After``); cluster admin tokens (the
cluster's own credential: nodes and `aiot` tools) are not limited.

A viewer sees only their devices: ``known`` answers a device that is not
theirs exactly as one that does not exist (404, the same body).

The app keeps the node in ``app.state.node``, how it checks admin tokens in
``app.state.admin_tokens`` (an ``AdminTokens``) and its limits in
``app.state.limits`` (hub/http/api.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from hub.core import auth
from hub.core.clock import wall_ms
from hub.http.limits import TokenBuckets, TooMany
from hub.http.node import Node
from hub.state import entries as e
from hub.state import users
from hub.state.raft import RaftNode
from protocol.topics import valid_device_id


@dataclass(frozen=True, slots=True)
class AdminTokens:
    """How an app checks cluster admin tokens: the cluster secret, the
    longest lifetime it accepts, and ``revoked``: why a verified token is
    revoked (the replicated revocations, ``Store.token_revocation``), or None."""

    secret: str
    max_ttl_s: int
    revoked: Callable[[auth.AdminToken], str | None]

    @classmethod
    def of(cls, node: Node) -> AdminTokens:
        def revoked(claim: auth.AdminToken) -> str | None:
            return node.raft.read(lambda s: s.token_revocation(claim.token_id, claim.issued_ms))

        return cls(node.cfg.raft.secret, node.cfg.http.admin_token_max_ttl_s, revoked)

    def check(self, token: str) -> auth.AdminToken:
        """The claim of a valid, unrevoked admin token; auth.TokenError otherwise."""
        claim = auth.verify_admin_token(self.secret, token, wall_ms(), self.max_ttl_s)
        if (why := self.revoked(claim)) is not None:
            raise auth.TokenError(why)
        return claim


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the cluster admin (an admin token) or an API user."""

    name: str
    role: e.Role
    devices: frozenset[str] | None  # a viewer's devices; None: every device
    cluster: bool = False  # a cluster admin token, not a user
    token: auth.AdminToken | None = None  # that token's claim

    @property
    def key(self) -> str:
        """What limits count this principal by (a user may be called admin)."""
        return "\0cluster" if self.cluster else self.name

    def sees(self, device: e.Device) -> bool:
        return self.devices is None or device.device_id in self.devices or device.owner == self.name


def _bearer(request: Request) -> str:
    """The request's bearer token; empty when there is none."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return HTTPException(401, detail, headers={"WWW-Authenticate": challenge})


def _principal(request: Request) -> Principal:
    token = _bearer(request)
    if not token:
        raise _unauthorized("log in first: Authorization: Bearer <token>")
    if auth.is_admin_token(token):
        return Principal("admin", e.Role.ADMIN, None, cluster=True, token=_admin(request, token))
    node = _node(request)
    try:
        claim = users.parse(token)
        user = users.verify(
            node.cfg.raft.secret, claim, node.raft.read(lambda s: s.user(claim.name))
        )
    except users.AuthError as exc:
        raise _unauthorized(f"invalid token: {exc}", "invalid_token") from None
    devices = frozenset(user.devices) if user.role is e.Role.VIEWER else None
    who = Principal(user.name, user.role, devices)
    buckets: TokenBuckets | None = request.app.state.limits.users
    if buckets is not None and (wait := buckets.take(who.key)):
        raise TooMany(f"requests from {who.name} (http.user_per_s)", wait)
    return who


def require(role: e.Role) -> Callable[[Request], Principal]:
    """A dependency: the principal, when its role is ``role`` or above."""

    def check(request: Request) -> Principal:
        who = _principal(request)
        if who.role > role:
            raise HTTPException(
                403, f"{who.name} is {who.role.name.lower()}; this needs {role.name.lower()}"
            )
        return who

    return check


def _admin(request: Request, token: str) -> auth.AdminToken:
    """The claim of a valid admin token; 401 invalid_token otherwise."""
    tokens: AdminTokens = request.app.state.admin_tokens
    try:
        return tokens.check(token)
    except auth.TokenError as exc:
        raise _unauthorized(f"invalid token: {exc}", "invalid_token") from None


def _cluster_admin(request: Request) -> None:
    token = _bearer(request)
    if not auth.is_admin_token(token):
        raise _unauthorized(
            "invalid token: a valid admin token is required (Authorization: Bearer)",
            "invalid_token",
        )
    _admin(request, token)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _raft(request: Request) -> RaftNode:
    return _node(request).raft


Admin = Annotated[Principal, Depends(require(e.Role.ADMIN))]
Operator = Annotated[Principal, Depends(require(e.Role.OPERATOR))]
Viewer = Annotated[Principal, Depends(require(e.Role.VIEWER))]
ClusterAdmin = Annotated[None, Depends(_cluster_admin)]
Raft = Annotated[RaftNode, Depends(_raft)]
ThisNode = Annotated[Node, Depends(_node)]


def no_device(device_id: str) -> HTTPException:
    """The one answer for a device that does not exist or is not the asker's."""
    return HTTPException(404, f"no device {device_id[:80]!r}")


def known(r: RaftNode, device_id: str, who: Principal | None = None) -> e.Device:
    """The registered device ``device_id``: 404 when there is none, and the
    same 404 when ``who`` (if given) may not see it, so a viewer cannot tell
    another's device from a missing one."""
    d = r.read(lambda s: s.device(device_id)) if valid_device_id(device_id) else None
    if d is None or (who is not None and not who.sees(d)):
        raise no_device(device_id)
    return d
