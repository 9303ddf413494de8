"""Logins from outside: failed attempts per user name and attempts per client
address are rate limited (429 with Retry-After), and an unknown user name
costs the same password hash as a known one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from hub.state import entries as e
from hub.state import users
from tests.security.http_hubs import PASSWORD, add_user, api_hub, crashes, detail


def attempt(url: str, name: str, password: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/login", json={"username": name, "password": password})


@pytest.mark.cluster
def test_failed_logins_for_one_name_are_limited(tmp_path: Path) -> None:
    burst = 3
    with api_hub(tmp_path, login_user_burst=burst, login_user_per_minute=1) as cluster:
        url = cluster.client(0).url
        add_user(cluster, "vic", "viewer", [])
        add_user(cluster, "ann", "viewer", [])
        assert attempt(url, "vic", PASSWORD).status_code == 200  # success costs nothing
        for _ in range(burst):
            r = attempt(url, "vic", "not the password")
            assert r.status_code == 401 and detail(r) == "wrong user name or password"
        # The N+1th attempt: 429, even with the right password.
        r = attempt(url, "vic", PASSWORD)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "http.login_user_per_minute" in detail(r)
        # Unknown names are limited the same way, and answer like a known one.
        for _ in range(burst):
            r = attempt(url, "nobody", "not the password")
            assert r.status_code == 401 and detail(r) == "wrong user name or password"
        assert attempt(url, "nobody", "not the password").status_code == 429
        # Another user is not held up.
        assert attempt(url, "ann", PASSWORD).status_code == 200
        assert crashes(cluster) == [], crashes(cluster)


@pytest.mark.cluster
def test_logins_from_one_address_are_limited(tmp_path: Path) -> None:
    burst = 6
    with api_hub(tmp_path, login_address_burst=burst, login_address_per_minute=1) as cluster:
        url = cluster.client(0).url
        add_user(cluster, "vic", "viewer", [])
        codes = [attempt(url, f"user-{i}", "not the password").status_code for i in range(burst)]
        assert codes == [401] * burst
        r = attempt(url, "vic", PASSWORD)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "http.login_address_per_minute" in detail(r)
        # The rest of the API still answers this address.
        assert cluster.client(0).get("/v1/me")["role"] == "admin"
        assert crashes(cluster) == [], crashes(cluster)


@pytest.mark.unit
def test_an_unknown_user_costs_the_same_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_login runs scrypt once, with the same parameters, whether the
    user exists or not (the route calls it for every name it is given)."""
    calls: list[dict[str, Any]] = []
    real = hashlib.scrypt

    def counted(password: bytes, **kw: Any) -> bytes:
        calls.append({k: v for k, v in kw.items() if k != "salt"} | {"salt": len(kw["salt"])})
        return real(password, **kw)

    user = e.User("vic", e.Role.VIEWER, users.hash_password(PASSWORD), (), 1)
    users.check_login(None, "warm up the dummy hash")
    monkeypatch.setattr(hashlib, "scrypt", counted)
    assert users.check_login(user, PASSWORD) is user
    known_ok = calls[:]
    calls.clear()
    assert users.check_login(user, "not the password") is None
    known_bad = calls[:]
    calls.clear()
    assert users.check_login(None, PASSWORD) is None
    unknown = calls[:]
    assert len(known_ok) == len(known_bad) == len(unknown) == 1
    assert known_ok == known_bad == unknown
