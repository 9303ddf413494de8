"""The operator dashboard: plain HTML, CSS and JavaScript served by every node.

    dashboard.mount(app)        # hub/http/api.py make_app

    GET /                       the app page (login, then the views)
    GET /static/<file>          its scripts, styles and icon

The files in ``hub/http/static/`` are served as they are: no build step, nothing
fetched from elsewhere at run time. None of them needs a token, because they
hold no data: the page logs in with ``POST /v1/login``, keeps the session
token in the tab's ``sessionStorage`` and reads everything through the
authenticated API (``/v1/...``) and the live stream (``/v1/stream``, read
with ``fetch()`` so that it can send the ``Authorization`` header, which an
``EventSource`` cannot). docs/dashboard.md describes the views.

The page is served with a Content-Security-Policy that allows only this
origin's scripts, styles and connections (no inline script), so markup that
slipped into a device id or a rule description cannot run as code, and with
``no-cache`` so an upgraded hub serves its new files at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_RAW_HEADERS: Final = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]


class _Static(StaticFiles):
    """StaticFiles with the dashboard's headers on every answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_RAW_HEADERS]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its files under ``/static/``."""

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers={**HEADERS, "Content-Security-Policy": CSP, "X-Frame-Options": "DENY"},
        )

    app.mount("/static", _Static(directory=STATIC_DIR), name="static")
