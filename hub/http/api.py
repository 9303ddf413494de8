"""The hub's HTTP API (FastAPI under uvicorn, inside the daemon's event loop).

Every node serves it. Writes become Raft proposals, which pysyncobj forwards
to the leader, so a write sent to a follower reaches the leader. Reads come
from this node's LMDB; ``?linearizable=true`` first commits an empty entry
through the leader (a barrier), so the read sees everything committed before
the request.

Authentication: ``Authorization: Bearer <admin token>`` (hub/core/auth.py derives
the token from the cluster secret; `aiot` commands given the hub config find
it themselves). ``/v1/health`` is open.

    GET    /v1/health                         liveness and readiness
    GET    /v1/status                         this node: raft, broker, ingest
    GET    /v1/cluster                        the replicated node table
    POST   /v1/cluster/nodes {raft}           add a node (dynamic membership)
    DELETE /v1/cluster/nodes/{raft}           remove a node
    POST   /v1/devices {...}                  register; answers the device's secrets
    GET    /v1/devices                        the registry
    GET    /v1/devices/{id}                   one device: progress, presence
    GET    /v1/devices/{id}/config            the device's secrets config again
    DELETE /v1/devices/{id}                   remove it and its data
    GET    /v1/devices/{id}/readings          from_ms, to_ms, limit, linearizable
    GET    /v1/devices/{id}/energy            day=YYYY-MM-DD: hourly Wh
    POST   /v1/commands {device, action, params, deadline_s}
    GET    /v1/commands?device=ID             the device's ledger
    GET    /v1/commands/{id}                  one command with its history

Errors are JSON ``{"detail": ...}`` with a 4xx status; a cluster that cannot
commit right now answers 503 with the Raft reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from hub.core import auth
from hub.core.clock import wall_ms
from hub.core.config import address
from hub.decide import explain
from hub.decide import registry as models_mod
from hub.decide.guard import ParamError, Proposal, normalize_params
from hub.decide.registry import ModelRefused, ModelRegistry
from hub.link import rendezvous
from hub.state import entries as e
from hub.state import users
from hub.state.raft import RaftError, RaftNode
from hub.state.store import ApplyResult, LedgerRecord, Store
from protocol import messages as m
from protocol.profiles import PLUG_CAPABILITIES
from protocol.topics import valid_device_id

if TYPE_CHECKING:
    from hub.daemon import Hub

log = logging.getLogger("aiot.api")


# -- request bodies ---------------------------------------------------------------------


class ParamSpecIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str | int
    min: float = 0.0
    max: float = 0.0


class CapabilityIn(BaseModel):
    action: str = Field(min_length=1, max_length=64)
    params: list[ParamSpecIn] = []


class DeviceIn(BaseModel):
    device_id: str
    capabilities: list[CapabilityIn] | None = None  # None: a smart plug's
    limit_w: float | None = Field(default=None, ge=0)
    owner: str = Field(default="", max_length=64)


class CommandIn(BaseModel):
    device: str
    action: str = Field(min_length=1, max_length=64)
    params: dict[str, bool | int | float | str] = {}
    deadline_s: float | None = Field(default=None, gt=0, le=7 * 86_400)
    approved: bool = False  # an operator's explicit approval (critical devices)
    # A client's own id makes retries safe: the same id is one command.
    command_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class NodeIn(BaseModel):
    raft: str


class ModelIn(BaseModel):
    manifest: str = Field(min_length=2, max_length=e.MAX_MODEL_MANIFEST)
    signature: str = Field(min_length=1, max_length=200)
    key_id: str = Field(min_length=1, max_length=64)


class ActivateIn(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class AskIn(BaseModel):
    question: str = Field(min_length=1, max_length=500)


class _StoreView:
    """What a principal may see, for hub/decide/explain.py."""

    def __init__(self, raft: RaftNode, who: Principal) -> None:
        self._raft = raft
        self._who = who

    def device_ids(self) -> list[str]:
        return [d.device_id for d in self._raft.read(Store.devices) if self._who.sees(d)]

    def decisions(self, device_id: str, limit: int) -> list[e.Decision]:
        return self._raft.read(lambda s: s.decisions(device_id, limit))

    def commands(self, device_id: str) -> list[LedgerRecord]:
        return self._raft.read(lambda s: s.commands(device_id))

    def progress(self, device_id: str) -> dict[str, Any]:
        def read(s: Store) -> dict[str, Any]:
            p = s.presence(device_id)
            return {
                "watermark": s.progress(device_id)[0],
                "node": None if p is None else p.node_id,
                "online": p is not None and p.state is m.LinkState.ONLINE,
            }

        return self._raft.read(read)

    def energy(self, device_id: str, day: date) -> list[tuple[int, float]]:
        hours = self._raft.read(lambda s: s.hourly_energy(device_id, day))
        return [(h.start_ms, h.wh) for h in hours]


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class UserIn(BaseModel):
    role: str = Field(pattern="^(admin|operator|viewer)$")
    password: str | None = Field(default=None, max_length=1024)
    devices: list[str] = Field(default=[], max_length=10_000)


def _role(name: str) -> e.Role:
    return e.Role[name.upper()]


def user_json(u: e.User) -> dict[str, Any]:
    return {"name": u.name, "role": u.role.name.lower(), "devices": list(u.devices)}


# -- conversions --------------------------------------------------------------------------


def _kind(value: str | int) -> m.ParamKind:
    try:
        if isinstance(value, int):
            return m.ParamKind(value)
        return {k.name.lower(): k for k in m.ParamKind}[value.lower()]
    except (ValueError, KeyError):
        names = ", ".join(k.name.lower() for k in m.ParamKind)
        raise HTTPException(422, f"param kind {value!r}: expected one of {names}") from None


def capabilities_of(caps: list[CapabilityIn] | None) -> tuple[m.Capability, ...]:
    if caps is None:
        return PLUG_CAPABILITIES
    return tuple(
        m.Capability(
            c.action, tuple(m.ParamSpec(p.name, _kind(p.kind), p.min, p.max) for p in c.params)
        )
        for c in caps
    )


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


def ledger_json(rec: LedgerRecord) -> dict[str, Any]:
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


def device_config(hub: Hub, d: e.Device) -> dict[str, Any]:
    """What the device needs: id, key, its broker list in its own order."""
    assert hub.raft is not None
    nodes = {n.node_id: n for n in hub.raft.read(Store.nodes)}
    hubs = []
    for node_id in rendezvous.order(d.device_id, nodes):
        a = address(nodes[node_id].broker)
        hubs.append([a.host, a.port])
    return {
        "device_id": d.device_id,
        "key": d.key.hex(),
        "hubs": hubs,
        "user": d.device_id,
        "password": auth.device_password(d.key),
    }


# -- the app -------------------------------------------------------------------------------


def _results_error(res: ApplyResult) -> None:
    if res.error is not None:
        code = 404 if res.reason in ("unknown_device", "unknown_command") else 409
        raise HTTPException(code, f"{res.reason}: {res.detail}" if res.detail else res.reason)


async def _commit_group(raft: RaftNode, parts: list[bytes]) -> None:
    """Commit entries together (one GROUP); 4xx for the first refused part."""
    if not parts:
        return
    try:
        results = await raft.propose(e.group(parts), timeout=10.0)
    except RaftError as exc:
        raise HTTPException(503, f"the cluster did not commit: {exc.reason} {exc}") from None
    for res in results:
        _results_error(res)


async def _commit(raft: RaftNode, entry: bytes) -> ApplyResult:
    try:
        (res,) = await raft.propose(entry, timeout=10.0)
    except RaftError as exc:
        raise HTTPException(503, f"the cluster did not commit: {exc.reason} {exc}") from None
    return res


def _raft(request: Request) -> RaftNode:
    raft: RaftNode | None = request.app.state.hub.raft
    if raft is None:
        raise HTTPException(503, "starting")
    return raft


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the cluster admin (the derived token) or an API user."""

    name: str
    role: e.Role
    devices: frozenset[str] | None  # a viewer's devices; None: every device

    def sees(self, device: e.Device) -> bool:
        return self.devices is None or device.device_id in self.devices or device.owner == self.name


def _principal(request: Request) -> Principal:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise HTTPException(401, "log in first: Authorization: Bearer <token>")
    if auth.token_matches(value, request.app.state.token):
        return Principal("admin", e.Role.ADMIN, None)
    hub = request.app.state.hub
    try:
        claim = users.parse(value)
        user = users.verify(hub.cfg.raft.secret, claim, hub.raft.read(lambda s: s.user(claim.name)))
    except users.AuthError as exc:
        raise HTTPException(401, f"invalid token: {exc}") from None
    devices = frozenset(user.devices) if user.role is e.Role.VIEWER else None
    return Principal(user.name, user.role, devices)


def _require(role: e.Role) -> Callable[[Request], Principal]:
    def check(request: Request) -> Principal:
        who = _principal(request)
        if who.role > role:
            raise HTTPException(
                403, f"{who.name} is {who.role.name.lower()}; this needs {role.name.lower()}"
            )
        return who

    return check


Admin = Annotated[Principal, Depends(_require(e.Role.ADMIN))]
Operator = Annotated[Principal, Depends(_require(e.Role.OPERATOR))]
Viewer = Annotated[Principal, Depends(_require(e.Role.VIEWER))]
Raft = Annotated[RaftNode, Depends(_raft)]


def make_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="aiot hub",
        version="1",
        description="One node of an aiot hub cluster: devices, commands, readings, cluster.",
    )
    app.state.hub = hub
    app.state.token = auth.admin_token(hub.cfg.raft.secret)

    async def barrier(r: RaftNode) -> None:
        try:
            await r.propose(e.group([]), timeout=10.0)
        except RaftError as exc:
            raise HTTPException(503, f"no linearizable read now: {exc.reason}") from None

    def known(r: RaftNode, device_id: str, who: Principal | None = None) -> e.Device:
        if not valid_device_id(device_id):
            raise HTTPException(404, f"no device {device_id[:80]!r}")
        d = r.read(lambda s: s.device(device_id))
        if d is None:
            raise HTTPException(404, f"no device {device_id!r}")
        if who is not None and not who.sees(d):
            raise HTTPException(403, f"device {device_id!r} is not assigned to {who.name}")
        return d

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        r = hub.raft
        ready = r is not None and r.is_ready
        return {"node_id": hub.node_id, "ready": ready, "leader": None if r is None else r.leader}

    @app.get("/v1/status")
    async def status(_: Viewer, hash: bool = False) -> dict[str, Any]:
        out = hub.status()
        if hash and hub.raft is not None:
            out["content_hash"] = await asyncio.to_thread(hub.raft.read, Store.content_hash)
        return out

    @app.get("/v1/cluster")
    async def cluster(_: Viewer, r: Raft) -> dict[str, Any]:
        st = r.status()
        return {
            "node_id": hub.node_id,
            "leader": st.leader,
            "term": st.term,
            "nodes": [
                {"node_id": n.node_id, "raft": n.raft, "broker": n.broker, "http": n.http}
                for n in r.read(Store.nodes)
            ],
        }

    def members(r: RaftNode) -> set[str]:
        st = r.raft_status()
        prefix = "partner_node_status_server_"
        return {k[len(prefix) :] for k in st if k.startswith(prefix)} | {r.address}

    @app.post("/v1/cluster/nodes")
    async def add_node(body: NodeIn, _: Admin, r: Raft) -> dict[str, Any]:
        _valid_address(body.raft)
        if body.raft in members(r):
            raise HTTPException(409, f"{body.raft} is already a member")
        try:
            await r.add_node(body.raft)
        except RaftError as exc:
            code = 409 if exc.reason == "request_denied" else 503
            raise HTTPException(code, f"membership change refused: {exc.reason}") from None
        return {"added": body.raft}

    @app.delete("/v1/cluster/nodes/{raft_address}")
    async def remove_node(raft_address: str, _: Admin, r: Raft) -> dict[str, Any]:
        _valid_address(raft_address)
        if raft_address not in members(r):
            raise HTTPException(404, f"{raft_address} is not a member")
        try:
            await r.remove_node(raft_address)
        except RaftError as exc:
            code = 409 if exc.reason == "request_denied" else 503
            raise HTTPException(code, f"membership change refused: {exc.reason}") from None
        for n in r.read(Store.nodes):
            if n.raft == raft_address:
                await _commit(r, e.encode(e.RemoveNode(n.node_id, wall_ms())))
        return {"removed": raft_address}

    @app.post("/v1/devices", status_code=201)
    async def add_device(body: DeviceIn, _: Admin, r: Raft) -> dict[str, Any]:
        if not valid_device_id(body.device_id):
            raise HTTPException(422, f"bad device id {body.device_id!r}: 1-64 of A-Z a-z 0-9 . _ -")
        if auth.reserved_name(body.device_id):
            raise HTTPException(422, f"device id {body.device_id!r} is reserved for the hub")
        if r.read(lambda s: s.device(body.device_id)) is not None:
            raise HTTPException(409, f"device {body.device_id!r} is already registered")
        device = e.Device(
            body.device_id,
            secrets.token_bytes(32),
            capabilities_of(body.capabilities),
            body.limit_w,
            body.owner,
        )
        res = await _commit(r, e.encode(e.RegisterDevice(device, wall_ms())))
        _results_error(res)
        return device_config(hub, device)

    @app.get("/v1/devices")
    async def list_devices(who: Viewer, r: Raft) -> list[dict[str, Any]]:
        def rows(s: Store) -> list[dict[str, Any]]:
            out = []
            for d in s.devices():
                if not who.sees(d):
                    continue
                p = s.presence(d.device_id)
                wm, lost = s.progress(d.device_id)
                out.append(
                    {
                        **device_json(d),
                        "watermark": wm,
                        "lost_before": lost,
                        "node": None if p is None else p.node_id,
                        "online": p is not None and p.state is m.LinkState.ONLINE,
                    }
                )
            return out

        return r.read(rows)

    @app.get("/v1/devices/{device_id}")
    async def show_device(device_id: str, who: Viewer, r: Raft) -> dict[str, Any]:
        d = known(r, device_id, who)
        p = r.read(lambda s: s.presence(device_id))
        wm, lost = r.read(lambda s: s.progress(device_id))
        last = hub.statuses.get(device_id)
        return {
            **device_json(d),
            "watermark": wm,
            "lost_before": lost,
            "presence": None
            if p is None
            else {"node": p.node_id, "state": p.state.name, "at_ms": p.at_ms},
            "last_status": None
            if last is None
            else {**m.to_dict(last[0]), "received_at": round(last[1], 3)},
        }

    @app.get("/v1/devices/{device_id}/config")
    async def config_of(device_id: str, _: Admin, r: Raft) -> dict[str, Any]:
        return device_config(hub, known(r, device_id))

    @app.delete("/v1/devices/{device_id}")
    async def remove_device(device_id: str, _: Admin, r: Raft) -> dict[str, Any]:
        known(r, device_id)
        res = await _commit(r, e.encode(e.RemoveDevice(device_id, wall_ms())))
        _results_error(res)
        return {"removed": device_id}

    @app.get("/v1/devices/{device_id}/readings")
    async def readings(
        device_id: str,
        who: Viewer,
        r: Raft,
        from_ms: Annotated[int, Query(ge=0)] = 0,
        to_ms: Annotated[int, Query(ge=0)] = 2**63 - 1,
        sensor: Annotated[int | None, Query(ge=0, le=65535)] = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
        linearizable: bool = False,
    ) -> dict[str, Any]:
        if linearizable:
            await barrier(r)
        known(r, device_id, who)
        if to_ms <= from_ms:
            raise HTTPException(422, "to_ms must be above from_ms")
        rows = r.read(lambda s: s.readings_between(device_id, from_ms, to_ms, sensor))
        truncated = len(rows) > limit
        rows = rows[:limit]
        return {
            "device_id": device_id,
            "truncated": truncated,
            "readings": [
                {"seq": x.seq, "ts_ms": x.ts_ms, "sensor": x.sensor, "value": x.value} for x in rows
            ],
        }

    @app.get("/v1/devices/{device_id}/energy")
    async def energy(
        device_id: str, who: Viewer, r: Raft, day: date, linearizable: bool = False
    ) -> dict[str, Any]:
        if linearizable:
            await barrier(r)
        known(r, device_id, who)
        hours = r.read(lambda s: s.hourly_energy(device_id, day))
        return {
            "device_id": device_id,
            "day": day.isoformat(),
            "hours": [{"start_ms": h.start_ms, "wh": round(h.wh, 6)} for h in hours],
        }

    @app.post("/v1/commands", status_code=201)
    async def send_command(body: CommandIn, who: Operator, r: Raft) -> dict[str, Any]:
        d = known(r, body.device)
        cap = next((c for c in d.capabilities if c.action == body.action), None)
        if cap is None:
            actions = ", ".join(c.action for c in d.capabilities) or "none"
            raise HTTPException(422, f"{body.device} has no action {body.action!r} ({actions})")
        try:  # the device's own rules (edge/executor.py), as the guard applies them
            params, _ = normalize_params(cap, body.params)
        except ParamError as exc:
            raise HTTPException(422, str(exc)) from None
        now = wall_ms()
        deadline_s = body.deadline_s or hub.cfg.commands.deadline_s
        command_id = body.command_id or uuid.uuid4().hex[:16]
        if body.command_id is not None:
            existing = r.read(lambda s: s.command(command_id))
            if existing is not None:  # a retry of a command that did commit
                if existing.command.device_id != body.device:
                    raise HTTPException(409, f"command {command_id!r} is for another device")
                return ledger_json(existing)
        parts: list[bytes] = []
        guard = hub.engine.guard if hub.engine is not None else None
        if guard is not None:
            # The guard sees operator commands too (hub/decide/guard.py); what it
            # blocks or changes is recorded as an operator decision.
            proposal = Proposal(body.device, body.action, params, "operator", body.approved)
            verdict = guard.check(proposal, d, now)
            if verdict.recorded:
                record = {
                    "requested_by": who.name,
                    "action": {"name": body.action, "params": {p.name: p.value for p in params}},
                    "guard": verdict.to_dict(),
                    "facts": [f"{who.name} asked for {body.action} on {body.device}"],
                }
                rec_bytes = json.dumps(record, sort_keys=True, default=str).encode()
                decision = e.Decision(
                    "d-" + uuid.uuid4().hex[:16],
                    body.device,
                    e.Tier.OPERATOR,
                    now,
                    command_id if verdict.allowed else "",
                    rec_bytes,
                )
                parts.append(e.encode(decision))
            if not verdict.allowed:
                await _commit_group(r, parts)
                raise HTTPException(
                    409, f"the guard blocked it: {verdict.reason}: {verdict.detail}"
                )
            params = verdict.params
        cmd = e.PutCommand(
            command_id,
            body.device,
            r.status().term,
            body.action,
            params,
            now,
            now + int(deadline_s * 1000),
        )
        try:
            await _commit_group(r, [e.encode(cmd), *parts])
        except HTTPException as exc:
            # A retry racing its own first attempt: that one committed.
            again = r.read(lambda s: s.command(cmd.command_id))
            if exc.status_code != 409 or body.command_id is None or again is None:
                raise
        rec = r.read(lambda s: s.command(cmd.command_id))
        assert rec is not None
        return ledger_json(rec)

    @app.get("/v1/commands")
    async def list_commands(device: str, who: Viewer, r: Raft) -> list[dict[str, Any]]:
        known(r, device, who)
        return [ledger_json(x) for x in r.read(lambda s: s.commands(device))]

    @app.get("/v1/commands/{command_id}")
    async def show_command(command_id: str, who: Viewer, r: Raft) -> dict[str, Any]:
        rec = r.read(lambda s: s.command(command_id)) if _key_ok(command_id) else None
        if rec is None:
            raise HTTPException(404, f"no command {command_id[:80]!r}")
        device = r.read(lambda s: s.device(rec.command.device_id))
        if who.devices is not None and (device is None or not who.sees(device)):
            raise HTTPException(
                403, f"command {command_id!r} is for a device not assigned to {who.name}"
            )
        return ledger_json(rec)

    # -- decisions, alerts and the live stream --

    def visible_decisions(
        r: RaftNode, who: Principal, device: str | None, limit: int
    ) -> list[dict[str, Any]]:
        if device is not None:
            known(r, device, who)

        def rows(s: Store) -> list[dict[str, Any]]:
            out = []
            for d in s.decisions(device, limit if who.devices is None else 100_000):
                if who.devices is not None:
                    dev = s.device(d.device_id)
                    if dev is None or not who.sees(dev):
                        continue
                out.append(decision_json(d, s.alert_ack(d.decision_id)))
                if len(out) >= limit:
                    break
            return out

        return r.read(rows)

    @app.get("/v1/decisions")
    async def list_decisions(
        who: Viewer,
        r: Raft,
        device: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[dict[str, Any]]:
        return visible_decisions(r, who, device, limit)

    @app.get("/v1/decisions/{decision_id}")
    async def show_decision(decision_id: str, who: Viewer, r: Raft) -> dict[str, Any]:
        d = r.read(lambda s: s.decision(decision_id)) if _key_ok(decision_id) else None
        if d is None:
            raise HTTPException(404, f"no decision {decision_id[:80]!r}")
        device = r.read(lambda s: s.device(d.device_id))
        if who.devices is not None and (device is None or not who.sees(device)):
            raise HTTPException(403, f"decision {decision_id!r} is not about your devices")
        return decision_json(d, r.read(lambda s: s.alert_ack(decision_id)))

    @app.get("/v1/alerts")
    async def list_alerts(
        who: Viewer,
        r: Raft,
        device: str | None = None,
        unacknowledged: bool = False,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[dict[str, Any]]:
        rows = [d for d in visible_decisions(r, who, device, 10_000) if d["alert"]]
        if unacknowledged:
            rows = [d for d in rows if d["acknowledged"] is None]
        return rows[:limit]

    @app.post("/v1/alerts/{decision_id}/ack")
    async def ack_alert(decision_id: str, who: Operator, r: Raft) -> dict[str, Any]:
        d = r.read(lambda s: s.decision(decision_id)) if _key_ok(decision_id) else None
        if d is None or not decision_json(d, None)["alert"]:
            raise HTTPException(404, f"no alert {decision_id!r}")
        _results_error(await _commit(r, e.encode(e.AckAlert(decision_id, who.name, wall_ms()))))
        return decision_json(d, r.read(lambda s: s.alert_ack(decision_id)))

    @app.get("/v1/stream")
    async def stream(request: Request, who: Viewer) -> StreamingResponse:
        """Server-Sent Events: readings, status, presence, commands, decisions, alerts."""

        raft = hub.raft
        assert raft is not None

        async def events() -> AsyncIterator[bytes]:
            async with hub.events.subscribe() as sub:
                yield b": connected\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(sub.get(), 15)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    dev_id = event.get("device_id")
                    if who.devices is not None and dev_id is not None:
                        dev = raft.read(partial(Store.device, device_id=str(dev_id)))
                        if dev is None or not who.sees(dev):
                            continue
                    kind = event.get("type", "message")
                    data = json.dumps(event, separators=(",", ":"))
                    yield f"event: {kind}\ndata: {data}\n\n".encode()

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- the model registry (hub/decide/registry.py) --

    def registry() -> ModelRegistry:
        if hub.models is None:
            raise HTTPException(503, "the model registry is not running")
        return hub.models

    @app.put("/v1/models/blobs/{sha256}")
    async def put_blob(sha256: str, request: Request, _: Operator) -> dict[str, Any]:
        reg = registry()
        chunks = [c async for c in request.stream()]
        try:
            size = await asyncio.to_thread(reg.store_blob, sha256, chunks)
        except ModelRefused as exc:
            raise HTTPException(422, str(exc)) from None
        return {"sha256": sha256, "size": size}

    @app.get("/v1/models/blobs/{sha256}")
    async def get_blob(sha256: str, _: Admin) -> FileResponse:
        try:
            path = registry().blob_path(sha256)
        except ModelRefused as exc:
            raise HTTPException(422, str(exc)) from None
        if not path.exists():
            raise HTTPException(404, f"no model bytes {sha256} on this node")
        return FileResponse(path, media_type="application/octet-stream")

    @app.post("/v1/models", status_code=201)
    async def register_model(body: ModelIn, _: Operator, r: Raft) -> dict[str, Any]:
        reg = registry()
        try:
            signature = base64.b64decode(body.signature, validate=True)
            mv = models_mod.version_record(body.manifest.encode(), signature, body.key_id)
            models_mod.verify_signature(mv, reg.trusted)
        except (ValueError, ModelRefused) as exc:
            raise HTTPException(422, f"model refused: {exc}") from None
        if not reg.has_blob(mv.sha256.hex()):
            raise HTTPException(
                409, f"upload the bytes first: PUT /v1/models/blobs/{mv.sha256.hex()}"
            )
        _results_error(await _commit(r, e.encode(mv)))
        return {"name": mv.name, "version": mv.version, "sha256": mv.sha256.hex()}

    @app.get("/v1/models")
    async def list_models(_: Viewer, r: Raft) -> list[dict[str, Any]]:
        versions = r.read(lambda s: s.model_versions())
        wanted = {m.name: m.version for m in r.read(Store.models)}
        here = {} if hub.models is None else hub.models.status()
        out = []
        for mv in versions:
            doc = json.loads(mv.manifest)
            active = here.get(mv.name, {})
            out.append(
                {
                    "name": mv.name,
                    "version": mv.version,
                    "kind": mv.kind,
                    "sha256": mv.sha256.hex(),
                    "size": mv.size,
                    "created": doc.get("created"),
                    "key_id": mv.key_id,
                    "activated": wanted.get(mv.name) == mv.version,
                    "active_on": {hub.node_id: active.get("version")},
                    "error_on": {hub.node_id: active.get("error")},
                }
            )
        for name, st in here.items():
            if not any(mv.name == name for mv in versions):
                out.append(
                    {
                        "name": name,
                        "version": st["version"],
                        "kind": "onnx",
                        "sha256": st["sha256"],
                        "activated": True,
                        "active_on": {hub.node_id: st["version"]},
                        "error_on": {hub.node_id: st["error"]},
                    }
                )
        return out

    @app.post("/v1/models/{name}/activate")
    async def activate_model(name: str, body: ActivateIn, _: Operator, r: Raft) -> dict[str, Any]:
        if not e.MODEL_NAME.fullmatch(name) or not e.MODEL_NAME.fullmatch(body.version):
            raise HTTPException(404, f"no model {name[:80]!r} version {body.version[:80]!r}")
        try:
            res = await models_mod.propose_activation(r, name, body.version)
        except ModelRefused as exc:
            raise HTTPException(404, str(exc)) from None
        except RaftError as exc:
            raise HTTPException(503, f"the cluster did not commit: {exc.reason}") from None
        _results_error(res)
        return {"name": name, "version": body.version, "activated": True}

    # -- explanations --

    @app.post("/v1/ask")
    async def ask(body: AskIn, who: Viewer, r: Raft) -> dict[str, Any]:
        view = _StoreView(r, who)
        fallback = hub.ask_fallback() if hasattr(hub, "ask_fallback") else None
        answer = await asyncio.to_thread(explain.explain, body.question, view, fallback)
        return {
            "answer": answer.text,
            "method": answer.method,
            "sources": answer.sources,
            "refused": answer.refused or None,
        }

    # -- users and sessions --

    @app.post("/v1/login")
    async def login(body: LoginIn, r: Raft) -> dict[str, Any]:
        user = r.read(lambda s: s.user(body.username))
        ok = user is not None and await asyncio.to_thread(users.check_password, user, body.password)
        if not ok or user is None:
            raise HTTPException(401, "wrong user name or password")
        token, expires = users.issue(hub.cfg.raft.secret, user)
        return {"token": token, "expires_ms": expires, **user_json(user)}

    @app.get("/v1/me")
    async def me(who: Viewer) -> dict[str, Any]:
        return {
            "name": who.name,
            "role": who.role.name.lower(),
            "devices": None if who.devices is None else sorted(who.devices),
        }

    @app.get("/v1/users")
    async def list_users(_: Admin, r: Raft) -> list[dict[str, Any]]:
        return [user_json(u) for u in r.read(Store.users)]

    @app.put("/v1/users/{name}")
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
        user = e.User(name, _role(body.role), pw, tuple(sorted(set(body.devices))), wall_ms())
        _results_error(await _commit(r, e.encode(user)))
        return user_json(user)

    @app.delete("/v1/users/{name}")
    async def remove_user(name: str, _: Admin, r: Raft) -> dict[str, Any]:
        if not _key_ok(name) or r.read(lambda s: s.user(name)) is None:
            raise HTTPException(404, f"no user {name[:80]!r}")
        _results_error(await _commit(r, e.encode(e.RemoveUser(name, wall_ms()))))
        return {"removed": name}

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    from hub.http import dashboard, firmware
    from hub.ops import backup, metrics

    metrics.mount(app, hub)
    backup.mount(app, hub)
    firmware.mount(app, hub)
    _openapi_errors(app)
    dashboard.mount(app)
    return app


def _key_ok(key: str) -> bool:
    """A lookup key LMDB can take (1..511 bytes; ids are far shorter)."""
    return 0 < len(key.encode()) <= 255


def _openapi_errors(app: FastAPI) -> None:
    """Our 4xx answers carry ``detail`` as a message (a string), FastAPI's
    own validation errors as a list: say so in the published schema."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        comp = schema.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in comp:
            comp["HTTPValidationError"]["properties"]["detail"] = {
                "title": "Detail",
                "anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                    {"type": "string"},
                ],
            }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _valid_address(value: str) -> None:
    try:
        address(value)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


# -- serving ----------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM."""

    task: asyncio.Task[None]

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def start_http(hub: Hub) -> _Server:
    """Listening when it returns; OSError when the address is taken."""
    bind = hub.cfg.http.bind
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as exc:
        sock.close()
        raise OSError(f"HTTP API cannot listen on {bind}: {exc.strerror}") from None
    config = uvicorn.Config(
        make_app(hub),
        host=bind.host,
        port=bind.port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)
    server.task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started and not server.task.done():
        await asyncio.sleep(0.02)
    return server
