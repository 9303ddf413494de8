"""The hub's HTTP API (FastAPI under uvicorn, inside the daemon's event loop).

    app = make_app(node)                    # node: anything hub/http/node.py's Node describes
    server = Server(app, cfg.http.bind)     # built, not listening
    await server.start() ... await server.stop()

Every node serves it. Writes become Raft proposals, which pysyncobj forwards
to the leader, so a write sent to a follower reaches the leader. Reads come
from this node's LMDB; ``?linearizable=true`` first commits an empty entry
through the leader (a barrier), so the read sees everything committed before
the request (hub/http/replica.py).

Authentication: ``Authorization: Bearer <token>``, a cluster admin token
(minted with the cluster secret, expiring, revocable: hub/core/auth.py;
`aiot` commands given the hub config mint their own, `aiot token create`
one to hand out) or a user's session token (hub/http/principal.py).
``/v1/health`` is open.

    GET    /v1/health                         liveness and readiness   routes/health.py
    GET    /v1/status                         this node: raft, broker, ingest
    GET    /v1/cluster                        the replicated node table  routes/cluster.py
    POST   /v1/cluster/nodes {raft}           add a node (dynamic membership)
    DELETE /v1/cluster/nodes/{raft}           remove a node
    POST   /v1/cluster/drains/{node}          drain a node: its devices move (admin)
    DELETE /v1/cluster/drains/{node}          bring a drained node back
    POST   /v1/devices {...}                  register; answers the device's secrets
    GET    /v1/devices                        the registry                routes/devices.py
    GET    /v1/devices/{id}                   one device: progress, presence
    GET    /v1/devices/{id}/config            the device's secrets config again
    DELETE /v1/devices/{id}                   remove it and its data
    GET    /v1/devices/{id}/readings          from_ms, to_ms, limit, linearizable
    GET    /v1/devices/{id}/energy            day=YYYY-MM-DD: hourly Wh
    GET    /v1/devices/{id}/rollups           period=hour|day, from_ms, to_ms, sensor
    GET    /v1/devices/{id}/week              day=: Wh and cost of seven days  routes/overview.py
    GET    /v1/overview                       day=: power now, energy, cost, alerts
    POST   /v1/commands {device, action, params, deadline_s}   routes/commands.py
    GET    /v1/commands?device=ID             the device's ledger
    GET    /v1/commands/{id}                  one command with its history
    GET    /v1/decisions, /v1/alerts          decisions and alerts        routes/decisions.py
    GET    /v1/stream                         Server-Sent Events          routes/stream.py
    *      /v1/models...                      the model registry          routes/models.py
    POST   /v1/ask {question}                 answers from the ledger     routes/ask.py
    *      /v1/login, /v1/me, /v1/users...    users and sessions          routes/users.py
    *      /v1/tokens/revocations             admin token revocations     routes/tokens.py
    *      /v1/threads..., /v1/inbox          conversations, the admins' inbox  routes/threads.py
    *      /v1/invites...                     one-time invitation links   routes/invites.py
    *      /v1/policies[/{class}]             LLM policies per device class  routes/policies.py
    GET    /v1/backup                         a snapshot of the store     routes/backup.py
    *      /v1/firmware...                    firmware bundles            firmware.py
    GET    /metrics, /healthz, /readyz        Prometheus, probes          routes/probes.py
    GET    /, /static/...                     the dashboard               dashboard.py

Errors are JSON ``{"detail": ...}`` with a 4xx status; a cluster that cannot
commit right now answers 503 with the Raft reason.

Limits (hub/http/limits.py, the ``[http]`` keys of hub/core/config.py, all
listed in docs/api.md): request bodies per route while they are read (413),
logins per user name and per address, requests per user (429), live streams
per user (429) and per node (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import Generator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from hub.core.config import PLAIN, Address, TlsConfig
from hub.http import dashboard, firmware
from hub.http.limits import BodyLimit, Limits
from hub.http.node import Node
from hub.http.principal import AdminTokens
from hub.http.routes import (
    ask,
    backup,
    cluster,
    commands,
    decisions,
    devices,
    health,
    invites,
    models,
    overview,
    policies,
    probes,
    stream,
    threads,
    tokens,
    users,
)
from hub.ops import metrics


async def _bad_value(_: Request, exc: ValueError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with what it echoes made JSON: ``Infinity`` or ``NaN``
    given in a body comes back as a string, not a failure to answer."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def make_app(node: Node) -> FastAPI:
    """The whole API of ``node``, with its metrics, backups, firmware and dashboard."""
    app = FastAPI(
        title="aiot hub",
        version="1",
        description="One node of an aiot hub cluster: devices, commands, readings, cluster.",
    )
    app.state.node = node
    app.state.admin_tokens = AdminTokens.of(node)
    app.state.limits = Limits(node.cfg.http)
    app.state.hash_lock = asyncio.Lock()
    routers = (health, cluster, devices, commands, decisions, stream, models, ask, users, tokens)
    for module in routers:
        app.include_router(module.router)
    app.include_router(overview.router)
    app.include_router(threads.router)
    app.include_router(invites.router)
    app.include_router(policies.router)
    app.add_exception_handler(ValueError, _bad_value)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, limits=app.state.limits)  # inside the request counter
    probes.count_requests(app, metrics.for_hub(node).http)
    app.include_router(probes.router)
    app.include_router(backup.make_router())
    app.include_router(firmware.make_router(node.cfg.data_dir / "firmware"))
    _openapi_errors(app)
    dashboard.mount(app)
    return app


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


# -- serving ----------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn on one address, without its own signal handlers (the daemon
    owns SIGTERM); ``start()`` returns once it listens. With ``tls`` on it
    speaks HTTPS only, with the node's certificate (TLS 1.2 or later)."""

    def __init__(self, app: FastAPI, bind: Address, tls: TlsConfig = PLAIN) -> None:
        secure: dict[str, Any] = {}
        if tls.on:
            secure = {
                "ssl_certfile": str(tls.cert),
                "ssl_keyfile": str(tls.key),
            }
        super().__init__(
            uvicorn.Config(
                app,
                host=bind.host,
                port=bind.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                **secure,
            )
        )
        self.bind = bind
        self.task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def start(self) -> None:
        """Listening when it returns; OSError when the address is taken."""
        bind = self.bind
        family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
        # only when the listening socket says TCP; without it each response
        # after the first on a kept-open connection waited ~40 ms for the
        # client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind.host, bind.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"HTTP API cannot listen on {bind}: {exc.strerror}") from None
        self.task = asyncio.create_task(self.serve(sockets=[sock]), name="http")
        while not self.started and not self.task.done():
            await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop answering; wait up to ``timeout`` seconds for open requests."""
        if self.task is None:
            return
        self.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout)
