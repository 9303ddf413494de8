"""BodyLimit (hub/http/limits.py) reads what is left of a body the app did
not want before the answer starts, within the limit and a time bound, so a
client never loses an answer to a reset connection. Driven through its ASGI
interface: the app answers 405 without reading, as FastAPI's router does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hub.core.config import HttpConfig
from hub.http.limits import BodyLimit, Limits

pytestmark = pytest.mark.unit


async def _unwanted(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 405, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _run(chunks: list[bytes], length: int, stalls: bool = False) -> list[str]:
    log: list[str] = []
    queue = list(chunks)

    async def receive() -> dict[str, Any]:
        if not queue:
            log.append("wait")
            await asyncio.sleep(3600)
        body = queue.pop(0)
        log.append(f"body {len(body)}")
        return {"type": "http.request", "body": body, "more_body": bool(queue) or stalls}

    async def send(message: dict[str, Any]) -> None:
        log.append(message["type"])

    scope = {
        "type": "http",
        "method": "TRACE",
        "path": "/v1/ask",
        "headers": [(b"content-length", str(length).encode())],
    }
    asyncio.run(BodyLimit(_unwanted, Limits(HttpConfig()))(scope, receive, send))
    return log


def test_the_rest_of_the_body_is_read_before_the_answer() -> None:
    log = _run([b"x" * 1000, b"y" * 1000, b"z" * 500], 2500)
    assert log == [
        "body 1000",
        "body 1000",
        "body 500",
        "http.response.start",
        "http.response.body",
    ]


def test_a_body_that_never_comes_is_waited_for_a_bounded_time() -> None:
    log = _run([b"x" * 100], 5000, stalls=True)  # 4900 bytes announced that never arrive
    assert log == ["body 100", "wait", "http.response.start", "http.response.body"]


def test_a_body_over_the_limit_is_not_read_at_all() -> None:
    limit = HttpConfig().max_body_bytes
    log = _run([b"x" * 10], limit + 1)
    assert log == ["http.response.start", "http.response.body"]  # 413 at once
