"""Metrics, liveness and readiness (hub/ops/metrics.py has what they serve).

    GET /metrics    Prometheus text format (0.0.4)
    GET /healthz    200 while the process answers: liveness
    GET /readyz     200 when this node can take work; 503 with the reasons

None of them needs a token and none is in the OpenAPI schema. ``count_requests``
adds the middleware that counts every HTTP answer (``aiot_http_requests``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from hub.http.principal import ThisNode
from hub.ops import metrics

router = APIRouter()

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@router.get("/metrics", include_in_schema=False)
async def prometheus(node: ThisNode) -> Response:
    body = await metrics.for_hub(node).render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", include_in_schema=False)
async def healthz(node: ThisNode) -> dict[str, Any]:
    return {"alive": True, "node_id": node.node_id}


@router.get("/readyz", include_in_schema=False)
async def readyz(node: ThisNode) -> JSONResponse:
    reasons = metrics.readiness(node)
    body = {"ready": not reasons, "node_id": node.node_id, "reasons": reasons}
    return JSONResponse(body, status_code=503 if reasons else 200)


class _CountRequests:
    """Pure ASGI middleware (streams pass through untouched): counts every
    HTTP response by method, route template and status."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.counter.labels(scope.get("method", "?"), route, str(status)).inc()


def count_requests(app: FastAPI, counter: Counter) -> None:
    """Count every answer of ``app`` in ``counter`` (method, route, status)."""
    app.add_middleware(_CountRequests, counter=counter)
