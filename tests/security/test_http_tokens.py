"""Tokens from outside: malformed bearer tokens of every shape (session and
admin tokens alike) answer 401 with a clear error (never 500, nothing like a
traceback in the log), and user names with dots log in and then use the API
like any other."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hub.state import entries as e
from hub.state import users
from tests.security.http_hubs import (
    add_user,
    admin_token,
    api_hub,
    bearer,
    crashes,
    detail,
    login,
)

# Routes that check a session token, and one that takes only the admin token.
CHECKED = ("/v1/me", "/v1/devices/plug-1", "/v1/status", "/v1/firmware")
WORKERS = 8


def malformed(valid: str) -> list[bytes]:
    """Bearer values no node issued: fixed shapes, then mutations of a valid token."""
    _, name, expires, sig = valid.split(".", 3)
    fixed = [
        "v1..1.x",
        "v1...",
        "v1.",
        ".",
        "garbage",
        "v2.vic.1.x",
        "V1.vic.1.x",
        "v1.vic.1.forged",
        f"v1.{name}.{expires}.",
        f"v1.{name}..{sig}",
        f"v1..{expires}.{sig}",
        f"v1.{name}.-1.{sig}",
        f"v1.{name}.{'9' * 5000}.{sig}",
        f"v1.{name}.1e9.{sig}",
        f"v1.{name}.{expires}.{sig}.extra",
        f"v1.{name}.{expires}.{sig}=",
        f"v1.{name}.{expires}.{sig[:-1]}",
        f"v1.{'x' * 200}.{expires}.{sig}",
        f"v1.{'x' * 600}.{expires}.{sig}",
        f"v1.{name}\u00e9.{expires}.{sig}",
        f"v1.\u00b2.{expires}.{sig}",
        f"v1.{name}.\u00b2\u00b3.{sig}",
        "v1.a b.1.x",
        "x" * 8000,
        "v1." + "." * 4000,
        valid.replace("v1.", "v1.ann."),
        valid + valid,
    ]
    rng = random.Random(16)
    alphabet = "v1.0123456789abcxyz-_=+/ \u00e9\u00ff"
    mutants = []
    for _ in range(150):
        chars = list(valid)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            op = rng.choice(("set", "insert", "delete"))
            if op == "set":
                chars[i] = rng.choice(alphabet)
            elif op == "insert":
                chars.insert(i, rng.choice(alphabet))
            elif len(chars) > 1:
                del chars[i]
        mutant = "".join(chars).strip()
        if mutant != valid:
            mutants.append(mutant)
    return [t.encode("latin-1") for t in fixed + mutants]


def malformed_admin(valid: str) -> list[bytes]:
    """Admin-token-shaped values no node minted: fixed shapes, then mutations."""
    _, token_id, issued, expires, sig = valid.split(".")
    fixed = [
        "a1.",
        "a1....",
        "a1.x.1.2.y",
        f"a1.{token_id}.{issued}.{expires}.",
        f"a1.{token_id}.{issued}.{expires}.{sig}.",
        f"a1.{token_id.upper()}.{issued}.{expires}.{sig}",
        f"a1.{token_id}.{issued}.{int(expires) + 1}.{sig}",
        f"a1.{token_id}.{int(issued) - 1}.{expires}.{sig}",
        f"a1.{'0' * 16}.{issued}.{expires}.{sig}",
        f"a1.{token_id}.{'9' * 5000}.{expires}.{sig}",
        f"a1.{token_id}.\u00b2.{expires}.{sig}",
        f"a1.{token_id}.{issued}.{expires}.{sig[:-1]}\u00e9",
        "a1." + "0" * 8000,
        valid + valid,
    ]
    rng = random.Random(18)
    alphabet = "a1.0123456789abcdef-_=+/ \u00e9"
    mutants = []
    for _ in range(100):
        chars = list(valid)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars))
            chars[i] = rng.choice(alphabet)
        mutant = "".join(chars).strip()
        if mutant != valid:
            mutants.append(mutant)
    return [t.encode("latin-1") for t in fixed + mutants]


@pytest.mark.cluster
def test_malformed_tokens_answer_401_and_leave_no_traceback(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        url = cluster.client(0).url
        cluster.add_device("plug-1")
        add_user(cluster, "vic", "viewer", ["plug-1"])
        valid = login(url, "vic")
        admin = admin_token(cluster)
        shapes = malformed(valid) + malformed_admin(admin)
        assert len(shapes) > 250
        answers: dict[int, int] = {}
        # Eight requests at a time: each answer is checked on its own, and
        # the node answers them in any order.
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        with httpx.Client(base_url=url, timeout=15, limits=limits) as c:

            def ask(pair: tuple[bytes, str]) -> httpx.Response:
                token, path = pair
                return c.get(path, headers={b"Authorization": b"Bearer " + token})

            pairs = [(token, path) for token in shapes for path in CHECKED]
            with ThreadPoolExecutor(WORKERS) as pool:
                replies = list(pool.map(ask, pairs))
            assert len(replies) == len(pairs)
            for (token, path), r in zip(pairs, replies, strict=True):
                answers[r.status_code] = answers.get(r.status_code, 0) + 1
                assert r.status_code == 401, (token[:80], path, r.status_code, r.text)
                assert isinstance(detail(r), str) and "token" in detail(r), r.text
                challenge = r.headers["www-authenticate"]
                assert challenge == 'Bearer error="invalid_token"', (token[:80], challenge)
            # No token at all, or another scheme: 401 that says to log in.
            for header in ({}, {"Authorization": "Basic dmljOnB3"}, {"Authorization": "Bearer"}):
                r = c.get("/v1/me", headers=header)
                assert r.status_code == 401 and "log in" in detail(r), r.text
            # The real token still works, and the node still answers.
            assert c.get("/v1/me", headers=bearer(valid)).json()["name"] == "vic"
            assert c.get("/v1/firmware", headers=bearer(admin)).status_code == 200
            assert c.get("/v1/health").status_code == 200
        print(f"{len(shapes)} malformed tokens x {len(CHECKED)} routes: {answers}")
        assert crashes(cluster) == [], crashes(cluster)


@pytest.mark.cluster
def test_dotted_user_names_log_in_and_use_the_api(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        admin = cluster.client(0)
        url = admin.url
        cluster.add_device("plug-1")
        add_user(cluster, "ann.lee", "viewer", ["plug-1"])
        add_user(cluster, "ann", "viewer", ["plug-1"])
        add_user(cluster, "ops.team@site.", "operator", [])
        dotted = login(url, "ann.lee")
        assert dotted.startswith("v1.ann.lee.")
        with httpx.Client(base_url=url, timeout=15, headers=bearer(dotted)) as c:
            for path in (
                "/v1/me",
                "/v1/status",
                "/v1/devices",
                "/v1/devices/plug-1",
                "/v1/devices/plug-1/readings",
                "/v1/devices/plug-1/energy?day=2026-11-22",
                "/v1/commands?device=plug-1",
                "/v1/decisions?device=plug-1",
                "/v1/alerts",
                "/v1/models",
            ):
                r = c.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text)
            assert c.get("/v1/me").json() == {
                "name": "ann.lee",
                "role": "viewer",
                "devices": ["plug-1"],
            }
            assert c.post("/v1/ask", json={"question": "what did plug-1 do?"}).status_code == 200
        ops = login(url, "ops.team@site.")
        r = httpx.post(
            f"{url}/v1/commands",
            json={"device": "plug-1", "action": "reboot"},
            headers=bearer(ops),
        )
        assert r.status_code == 201, r.text
        # A token speaks for its own name only: ann.lee's signature under "ann" is refused.
        _, _, rest = dotted.partition("v1.ann.lee.")
        forged = f"v1.ann.{rest}"
        r = httpx.get(f"{url}/v1/me", headers=bearer(forged))
        assert r.status_code == 401, r.text
        # A name without a dot keeps the same token format.
        plain = login(url, "ann")
        assert plain.count(".") == 3
        assert httpx.get(f"{url}/v1/me", headers=bearer(plain)).json()["name"] == "ann"
        assert httpx.get(f"{url}/v1/me", headers=bearer(admin_token(cluster))).status_code == 200
        assert crashes(cluster) == [], crashes(cluster)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["ann", "ann.lee", "a.b.c.d", "x@y.z", "ann.", "n." * 32])
def test_a_token_splits_at_its_last_two_dots(name: str) -> None:
    assert e.USER_NAME.fullmatch(name)
    user = e.User(name, e.Role.VIEWER, b"s" * 16 + b"h" * 32, (), 1)
    token, expires = users.issue("a cluster secret of some length", user)
    claim = users.parse(token)
    assert (claim.name, claim.expires_ms) == (name, expires)
    assert users.verify("a cluster secret of some length", claim, user) is user
