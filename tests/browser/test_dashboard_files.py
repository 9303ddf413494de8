"""The dashboard's files as the hub serves them (no browser needed): the page
and every script it imports answer 200 without a token, under a
Content-Security-Policy that the page can live with (no inline script or
style), and nothing outside hub/http/static/ is reachable."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hub.http import dashboard

pytestmark = pytest.mark.unit

STATIC = dashboard.STATIC_DIR


class Client:
    """GET requests straight into the ASGI app (no server, no network)."""

    def __init__(self) -> None:
        self.app = FastAPI()
        dashboard.mount(self.app)

    def get(self, url: str) -> httpx.Response:
        async def one() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub") as c:
                return await c.get(url)

        return asyncio.run(one())


@pytest.fixture
def client() -> Client:
    return Client()


def referenced(start: str) -> set[str]:
    """Every /static/ URL the page loads, following JavaScript imports."""
    html = (STATIC / "index.html").read_text()
    todo = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    seen: set[str] = set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        if url.endswith(".js"):
            text = (STATIC / url.removeprefix("/static/")).read_text()
            base = url.rsplit("/", 1)[0]
            for rel in re.findall(
                r'^\s*(?:import|export)\b[^;]*?from\s+"([^"]+)"', text, re.M | re.S
            ):
                parts = [*base.split("/"), *rel.split("/")]
                out: list[str] = []
                for p in parts:
                    if p == "..":
                        out.pop()
                    elif p != ".":
                        out.append(p)
                todo.append("/".join(out))
    return seen


def test_the_page_and_everything_it_loads_answer_without_a_token(client: Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["cache-control"] == "no-cache"
    urls = referenced("/static/js/app.js")
    assert "/static/js/app.js" in urls and "/static/js/views/device.js" in urls
    assert len(urls) >= 14
    for url in sorted(urls):
        r = client.get(url)
        assert r.status_code == 200, url
        assert r.headers["x-content-type-options"] == "nosniff", url
        if url.endswith(".js"):
            assert "javascript" in r.headers["content-type"], url


def test_nothing_outside_the_static_folder_is_served(client: Client) -> None:
    for url in ("/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/nope.js"):
        assert client.get(url).status_code == 404, url
    assert "/" not in client.app.openapi()["paths"]  # the API's schema stays the API's


def test_the_files_keep_to_the_content_security_policy() -> None:
    """No inline script, style or handler (the CSP refuses them), and data
    reaches the page as text: no innerHTML anywhere."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert not re.search(r"\son[a-z]+=", html) and "style=" not in html and "<style" not in html
    scripts = list(STATIC.rglob("*.js"))
    assert scripts
    for path in scripts:
        text = path.read_text()
        assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write", text), (
            path
        )
        assert "eval(" not in text and "new Function" not in text, path
        assert 'setAttribute("style"' not in text, path


def test_every_static_file_is_small_and_local() -> None:
    """Nothing vendored or fetched from elsewhere at run time."""
    for path in STATIC.rglob("*"):
        if path.is_file():
            assert path.stat().st_size < 64 * 1024, path
            text = re.sub(r'xmlns="[^"]*"', "", path.read_text())  # a name, not a fetch
            assert not re.search(r"""["'(]https?://""", text), f"{path}: an absolute URL"


def test_the_sensor_ids_match_the_edge() -> None:
    from edge import sensors

    for path in (STATIC / "js" / "views").glob("*.js"):
        for value in re.findall(r"const POWER_W = (\d+);", path.read_text()):
            assert int(value) == sensors.POWER_W, path
    text = (STATIC / "js" / "views" / "decisions.js").read_text()
    for i, name in enumerate(sensors.NAMES):
        assert f'{i}: "{name}"' in text


def test_the_static_folder_is_where_mount_looks() -> None:
    assert Path(dashboard.__file__).parent / "static" == STATIC
    assert (STATIC / "index.html").is_file()
