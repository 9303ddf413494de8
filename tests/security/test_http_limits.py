"""What one user may hold of a node: API requests per second (429 past a
user's bucket, others unaffected) and live streams (429 past a user's cap,
503 past the node's, and a closed stream frees its slot)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.security.http_hubs import add_user, admin_token, api_hub, bearer, crashes, login
from tests.support import wait_until

pytestmark = pytest.mark.cluster


def test_one_user_cannot_flood_the_api(tmp_path: Path) -> None:
    burst = 10
    with api_hub(tmp_path, user_burst=burst, user_per_s=1) as cluster:
        url = cluster.client(0).url
        add_user(cluster, "vic", "viewer", [])
        add_user(cluster, "ann", "viewer", [])
        vic, ann = login(url, "vic"), login(url, "ann")
        with httpx.Client(base_url=url, headers=bearer(vic), timeout=15) as c:
            codes = [c.get("/v1/me").status_code for _ in range(burst + 5)]
            refused = c.get("/v1/me")
        # A token or two may have come back while the requests went out.
        assert codes[:burst] == [200] * burst and 429 in codes[burst:], codes
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "http.user_per_s" in refused.json()["detail"]
        # Another user, and the cluster's own token, are not held up.
        assert httpx.get(f"{url}/v1/me", headers=bearer(ann)).status_code == 200
        for _ in range(burst + 5):
            assert httpx.get(f"{url}/v1/me", headers=bearer(admin_token(cluster))).is_success
        # The bucket refills: vic is served again.
        wait_until(
            lambda: httpx.get(f"{url}/v1/me", headers=bearer(vic)).status_code == 200,
            10,
            "vic's bucket to refill",
        )
        assert crashes(cluster) == [], crashes(cluster)


@contextlib.contextmanager
def stream(url: str, token: str) -> Iterator[httpx.Response]:
    """An open /v1/stream (its status known; the first line read when 200)."""
    with (
        httpx.Client(timeout=httpx.Timeout(15, read=30)) as c,
        c.stream("GET", f"{url}/v1/stream", headers=bearer(token)) as r,
    ):
        lines = r.iter_lines()  # kept open: closing it would close the stream
        if r.status_code == 200:
            assert next(lines).startswith(": connected")
        else:
            r.read()
        yield r


def test_streams_are_capped_per_user_and_per_node(tmp_path: Path) -> None:
    with api_hub(tmp_path, max_streams=3, max_streams_per_user=2) as cluster:
        url = cluster.client(0).url
        add_user(cluster, "vic", "viewer", [])
        add_user(cluster, "ann", "viewer", [])
        vic, ann = login(url, "vic"), login(url, "ann")
        with stream(url, vic) as a, stream(url, vic) as b:
            assert (a.status_code, b.status_code) == (200, 200)
            with stream(url, vic) as third:
                assert third.status_code == 429, third.text
                assert "http.max_streams_per_user" in third.json()["detail"]
                assert int(third.headers["retry-after"]) >= 1
            with stream(url, ann) as c:
                assert c.status_code == 200
                with stream(url, ann) as full:
                    assert full.status_code == 503, full.text
                    assert "http.max_streams" in full.json()["detail"]

        # Closed streams free their slots (the node notices the client left).
        def reopened() -> bool:
            with stream(url, vic) as a, stream(url, ann) as b:
                return (a.status_code, b.status_code) == (200, 200)

        wait_until(reopened, 40, "the closed streams' slots to be free again")
        assert httpx.get(f"{url}/v1/health").status_code == 200
        assert crashes(cluster) == [], crashes(cluster)
