"""What one client may send and hold: request bodies, logins, request rates,
live streams. Every limit is a key of the hub config's ``[http]`` table
(hub/core/config.py); docs/api.md "Limits" lists them with their defaults.

    limits = Limits(cfg.http)            # app.state.limits (hub/http/api.py)
    BodyLimit(app, limits)               # ASGI: 413 while a body is read
    limits.login_address.take(host)      # 0.0, or the seconds to wait (429)
    slot = limits.streams.open(key)      # a stream subscriber, or 429/503

Bodies are limited per route while they are read: a ``Content-Length``
over the route's limit is answered 413 before the app sees the request, and
a chunked body is counted as it arrives, so a flood costs the node at most
one limit's worth of memory. Rates are token buckets: ``burst`` requests at
once, refilled at ``rate`` per second; a refused request is answered 429
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.core.config import HttpConfig
from hub.state import entries as e

# Seconds spent reading an unwanted body before answering (BodyLimit).
DRAIN_S: Final = 2.0
MAX_KEYS: Final = 10_000  # buckets kept per limiter (the fullest are dropped first)
# A model's manifest may be MAX_MODEL_MANIFEST bytes, and JSON escapes it.
MODEL_BODY_MIN: Final = 4 * e.MAX_MODEL_MANIFEST
# A policy of 4000 characters, each JSON-escaped as a surrogate pair (12 bytes).
POLICY_BODY_MIN: Final = 12 * 4000 + 1024


class TooMany(HTTPException):
    """429 with ``Retry-After`` (whole seconds, at least 1)."""

    def __init__(self, what: str, wait_s: float) -> None:
        retry = max(1, math.ceil(wait_s))
        super().__init__(
            429, f"too many {what}: retry in {retry} s", headers={"Retry-After": str(retry)}
        )


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, ``rate`` more per second.

    Thread-safe (sync route dependencies run in a thread pool). At most
    MAX_KEYS buckets are kept: past that the least recently used go, and a
    bucket that went is full again, which errs on the side of the client.
    """

    def __init__(
        self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = float(burst)
        self.rate = rate
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        with self._lock:
            level = self._level(key, self._clock())
        return 0.0 if level >= 1 else self._until_one(level)

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0.0 when there was one, else the seconds
        until there is (and nothing taken)."""
        with self._lock:
            now = self._clock()
            level = self._level(key, now)
            if level < 1:
                return self._until_one(level)
            self._buckets[key] = (level - 1, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
            return 0.0

    def _until_one(self, level: float) -> float:
        return math.inf if self.rate <= 0 else (1 - level) / self.rate


class StreamSlots:
    """Open live streams: at most ``per_node`` on this node (then 503) and
    ``per_key`` for one user or token (then 429)."""

    def __init__(self, per_node: int, per_key: int) -> None:
        self.per_node = per_node
        self.per_key = per_key
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self._open.values())

    def open(self, key: str) -> Callable[[], None]:
        """Hold a slot for ``key``; returns its release (safe to call twice)."""
        with self._lock:
            if self._open[key] >= self.per_key:
                raise HTTPException(
                    429,
                    f"{self.per_key} live streams are open for this user already "
                    "(http.max_streams_per_user): close one first",
                    headers={"Retry-After": "15"},
                )
            if self.total >= self.per_node:
                raise HTTPException(
                    503,
                    f"this node serves {self.per_node} live streams already "
                    "(http.max_streams): try another node or later",
                    headers={"Retry-After": "15"},
                )
            self._open[key] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._open[key] -= 1
                    if self._open[key] <= 0:
                        del self._open[key]

        return release


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    path: re.Pattern[str]
    key: str  # the [http] key of its limit


# Routes whose bodies may be larger than http.max_body_bytes.
_ROUTES: Final = (
    _Route("PUT", re.compile(r"/v1/models/blobs/[^/]*"), "max_model_bytes"),
    _Route("POST", re.compile(r"/v1/firmware/?"), "max_firmware_bytes"),
    _Route("PUT", re.compile(r"/v1/users/[^/]*"), "max_user_body_bytes"),
)


class Limits:
    """The limits of one node's API, from its ``[http]`` config."""

    def __init__(self, cfg: HttpConfig) -> None:
        self.cfg = cfg
        self.login_user = TokenBuckets(cfg.login_user_burst, cfg.login_user_per_minute / 60)
        self.login_address = TokenBuckets(
            cfg.login_address_burst, cfg.login_address_per_minute / 60
        )
        self.users = TokenBuckets(cfg.user_burst, cfg.user_per_s) if cfg.user_per_s > 0 else None
        self.streams = StreamSlots(cfg.max_streams, cfg.max_streams_per_user)

    def body_limit(self, method: str, path: str) -> tuple[int, str]:
        """The most bytes a body of ``method path`` may have, and its config key."""
        for route in _ROUTES:
            if method == route.method and route.path.fullmatch(path):
                return int(getattr(self.cfg, route.key)), route.key
        if method == "POST" and path == "/v1/models":
            return max(self.cfg.max_body_bytes, MODEL_BODY_MIN), "max_body_bytes"
        if method == "PUT" and path.startswith("/v1/policies/"):
            return max(self.cfg.max_body_bytes, POLICY_BODY_MIN), "max_body_bytes"
        return self.cfg.max_body_bytes, "max_body_bytes"


class BodyTooLarge(HTTPException):
    """413; the connection closes after the answer, so the rest of the body
    is never read (a kept-alive connection would have to read it all)."""

    def __init__(self, limit: int, key: str) -> None:
        super().__init__(
            413, f"request body over {limit} bytes (http.{key})", headers={"Connection": "close"}
        )


def _content_length(scope: Scope) -> int | None:
    """The request's Content-Length; -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


class BodyLimit:
    """Pure ASGI middleware: every request body within its route's limit.

    A ``Content-Length`` over the limit is answered 413 at once, before the
    app (or any authentication) sees the request. Otherwise ``receive`` is
    counted: the message that takes the body over the limit raises
    ``BodyTooLarge`` (an HTTPException: FastAPI answers it 413 before it
    parses anything), and any later ``receive`` says the client went away.
    A body within the limit that the app did not read (a 405, a GET sent one)
    is read to its end, for at most ``DRAIN_S``, before the answer starts:
    closing a socket with unread bytes resets it, and the client can lose the
    answer.
    """

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, key = self.limits.body_limit(scope["method"], scope["path"])
        length = _content_length(scope)
        if length is not None and (length < 0 or length > limit):
            what = f"over {limit} bytes (http.{key})" if length >= 0 else "not a number"
            await _answer(send, 413 if length >= 0 else 400, f"Content-Length {what}")
            return
        seen = 0
        tripped = False
        # A body the app did not read to its end (a GET that was sent one) is
        # drained before the answer, and the connection closes after it.
        unread = bool(length) or _chunked(scope)

        async def counted() -> Message:
            nonlocal seen, tripped, unread
            if tripped:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    tripped = True
                    raise BodyTooLarge(limit, key)
                unread = unread and bool(message.get("more_body", False))
            return message

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start" and unread:
                await drain()
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"connection" for name, _ in headers):
                    message["headers"] = [*headers, (b"connection", b"close")]
            await send(message)

        async def drain() -> None:
            # Read what is left of a body the app did not want (a 405 answer,
            # a GET sent one) before answering: closing a socket with unread
            # bytes resets it, and the client may lose the answer. Within the
            # body limit and DRAIN_S only; past them the socket closes as it is.
            with contextlib.suppress(BodyTooLarge, TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    while unread and not tripped:
                        if (await counted())["type"] != "http.request":
                            return

        await self.app(scope, counted, answer)


def _chunked(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def client_address(scope: Mapping[str, Any]) -> str:
    """The peer's address (what a login is limited by): the socket's, not a header's."""
    client = scope.get("client")
    return str(client[0]) if client else "?"
