"""Bodies from outside: a flood is cut off while it is read (413, before any
parsing, the node's memory barely moves), each route has its own limit, and
every number a body carries is finite and bounded (422 naming the field)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.http_hubs import (
    add_user,
    admin_token,
    api_hub,
    bearer,
    crashes,
    detail,
    hub_pid,
    login,
    rss_kb,
)

pytestmark = pytest.mark.cluster

GIB = 1 << 30
CHUNK = 64 * 1024
MAX_GROWTH_KB = 20 * 1024


def flood(total: int, sent: list[int]) -> Iterator[bytes]:
    """``total`` bytes of a JSON-looking body, made as they are sent."""
    chunk = b"[" + b"1," * (CHUNK // 2 - 1) + b"1"
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk


def settle_rss(pid: int) -> int:
    """RSS once it stops moving (the node is idle between two reads)."""
    last = rss_kb(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_kb(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


def test_a_gigabyte_login_flood_answers_413_and_costs_no_memory(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        url = cluster.client(0).url
        pid = hub_pid(cluster)
        for _ in range(20):  # warm the paths the flood takes
            httpx.post(f"{url}/v1/login", json={"username": "nobody", "password": "x" * 8})
        before = settle_rss(pid)
        headers = {"Content-Type": "application/json"}
        # Chunked: no Content-Length, so the node must count what arrives.
        sent = [0]
        r = httpx.post(f"{url}/v1/login", content=flood(GIB, sent), headers=headers, timeout=120)
        assert r.status_code == 413, r.text
        assert "http.max_body_bytes" in detail(r)
        assert "chunked" in r.request.headers.get("transfer-encoding", "")
        chunked_sent = sent[0]
        # Declared: a Content-Length of 1 GiB is refused before the body is read.
        sent = [0]
        r = httpx.post(
            f"{url}/v1/login",
            content=flood(GIB, sent),
            headers={**headers, "Content-Length": str(GIB)},
            timeout=120,
        )
        assert r.status_code == 413, r.text
        declared_sent = sent[0]
        # A route that reads no body (a GET sent one) answers, and is not made to drain it.
        sent = [0]
        r = httpx.request("GET", f"{url}/v1/health", content=flood(GIB, sent), timeout=120)
        assert r.status_code == 200, r.text
        after = settle_rss(pid)
        growth = after - before
        print(
            f"RSS before {before} KiB, after {after} KiB (+{growth} KiB); "
            f"the client got {chunked_sent}, {declared_sent} and {sent[0]} bytes out "
            "before the answers"
        )
        assert growth < MAX_GROWTH_KB, (before, after)
        # The node closed the connection: the client could not push the gigabyte
        # (what it got out is what the sockets' buffers took).
        for got_out in (chunked_sent, declared_sent, sent[0]):
            assert got_out < GIB // 4, (chunked_sent, declared_sent, sent[0])
        # The node answers afterwards, and logged no error.
        assert httpx.get(f"{url}/v1/health").json()["ready"] is True
        assert crashes(cluster) == [], crashes(cluster)


def raw_flood(host: str, port: int, path: str, total: int) -> tuple[bytes, int]:
    """A chunked POST from a plain socket that keeps sending until the node
    answers (or ``total`` bytes): the answer's first bytes and what was sent."""
    s = socket.create_connection((host, port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    s.sendall(head)
    chunk = f"{CHUNK:x}\r\n".encode() + b"1" * CHUNK + b"\r\n"
    sent = 0
    s.setblocking(False)
    answer = b""
    try:
        while sent < total and not answer:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:  # the node closed the connection after answering
                break
            with contextlib.suppress(BlockingIOError):
                answer = s.recv(4096)
        s.setblocking(True)
        s.settimeout(10)
        while not answer:
            answer = s.recv(4096)
    except OSError:
        pass
    finally:
        s.close()
    return answer, sent


def test_each_route_has_its_own_body_limit(tmp_path: Path) -> None:
    with api_hub(tmp_path, max_body_bytes=4096, max_user_body_bytes=65536) as cluster:
        c = cluster.client(0)
        url = c.url
        admin = bearer(admin_token(cluster))
        cluster.add_device("plug-1")
        # A user's device list may be longer than a command may be.
        devices = [f"plug-{i:05d}" for i in range(500)]  # about 7 KiB
        r = httpx.put(
            f"{url}/v1/users/ola",
            json={"role": "viewer", "password": "long enough pw", "devices": devices},
            headers=admin,
        )
        assert r.status_code == 200, r.text
        pad = "x" * 6000
        r = httpx.post(
            f"{url}/v1/commands",
            json={"device": "plug-1", "action": "reboot", "pad": pad},
            headers=admin,
        )
        assert r.status_code == 413 and "http.max_body_bytes" in detail(r), r.text
        assert c.get("/v1/commands", device="plug-1") == []
        r = httpx.put(
            f"{url}/v1/users/eve",
            json={"role": "viewer", "password": "long enough pw", "devices": devices * 20},
            headers=admin,
        )
        assert r.status_code == 413 and "http.max_user_body_bytes" in detail(r), r.text
        assert "eve" not in [u["name"] for u in c.get("/v1/users")]
        # Without a token: refused for its size before anyone asks who it is.
        r = httpx.post(f"{url}/v1/devices", content=b"{" + b" " * 8000 + b"}")
        assert r.status_code == 413, r.text
        # A plain socket that keeps sending chunks gets its 413 while it sends.
        host, port = url.removeprefix("http://").rsplit(":", 1)
        answer, sent = raw_flood(host, int(port), "/v1/login", 256 << 20)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        print(f"raw socket: answered 413 after {sent} bytes sent")
        assert sent < 256 << 20
        assert crashes(cluster) == [], crashes(cluster)


def test_a_model_upload_is_limited_and_leaves_nothing(tmp_path: Path) -> None:
    with api_hub(tmp_path, max_model_bytes=100_000) as cluster:
        url = cluster.client(0).url
        admin = bearer(admin_token(cluster))
        small = b"m" * 50_000
        sha = hashlib.sha256(small).hexdigest()
        r = httpx.put(f"{url}/v1/models/blobs/{sha}", content=small, headers=admin)
        assert r.status_code == 200 and r.json()["size"] == len(small), r.text
        big = b"m" * 300_000
        big_sha = hashlib.sha256(big).hexdigest()

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 10_000):
                yield big[i : i + 10_000]

        r = httpx.put(f"{url}/v1/models/blobs/{big_sha}", content=chunks(), headers=admin)
        assert r.status_code == 413 and "http.max_model_bytes" in detail(r), r.text
        blobs = cluster.data_dir(0) / "models"
        assert sorted(p.name for p in blobs.iterdir()) == [sha], list(blobs.iterdir())
        assert crashes(cluster) == [], crashes(cluster)


# (body, the field the 422 names) for bodies whose numbers are not finite or not bounded.
BAD_DEVICES: list[tuple[bytes, tuple[Any, ...]]] = [
    (b'{"device_id": "plug-x", "limit_w": Infinity}', ("body", "limit_w")),
    (b'{"device_id": "plug-x", "limit_w": -Infinity}', ("body", "limit_w")),
    (b'{"device_id": "plug-x", "limit_w": NaN}', ("body", "limit_w")),
    (b'{"device_id": "plug-x", "limit_w": 1e308}', ("body", "limit_w")),
    (b'{"device_id": "plug-x", "limit_w": 1e400}', ("body", "limit_w")),
    (b'{"device_id": "plug-x", "limit_w": -1}', ("body", "limit_w")),
    (
        b'{"device_id": "plug-x", "capabilities": [{"action": "dim", "params": '
        b'[{"name": "level", "kind": "float", "min": 0, "max": Infinity}]}]}',
        ("body", "capabilities", 0, "params", 0, "max"),
    ),
    (
        b'{"device_id": "plug-x", "capabilities": [{"action": "dim", "params": '
        b'[{"name": "level", "kind": "float", "min": -1e300, "max": 1}]}]}',
        ("body", "capabilities", 0, "params", 0, "min"),
    ),
]
BAD_COMMANDS: list[tuple[bytes, tuple[Any, ...]]] = [
    (
        b'{"device": "plug-1", "action": "limit.set", "params": {"watts": Infinity}}',
        ("body", "params", "watts"),
    ),
    (
        b'{"device": "plug-1", "action": "limit.set", "params": {"watts": NaN}}',
        ("body", "params", "watts"),
    ),
    (
        b'{"device": "plug-1", "action": "limit.set", "params": {"watts": 1e308}}',
        ("body", "params", "watts"),
    ),
    (
        b'{"device": "plug-1", "action": "sample.set", '
        b'"params": {"interval_ms": 123456789012345678901234567890}}',
        ("body", "params", "interval_ms"),
    ),
    (
        b'{"device": "plug-1", "action": "reboot", "deadline_s": NaN}',
        ("body", "deadline_s"),
    ),
    (
        b'{"device": "plug-1", "action": "reboot", "deadline_s": Infinity}',
        ("body", "deadline_s"),
    ),
]


def test_numbers_in_bodies_are_finite_and_bounded(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        c = cluster.client(0)
        url = c.url
        cluster.add_device("plug-1", limit_w=1500)
        add_user(cluster, "ola", "operator", [])
        headers = {**bearer(admin_token(cluster)), "Content-Type": "application/json"}
        ops = {**bearer(login(url, "ola")), "Content-Type": "application/json"}
        for body, field in BAD_DEVICES:
            r = httpx.post(f"{url}/v1/devices", content=body, headers=headers)
            assert r.status_code == 422, (body, r.status_code, r.text)
            locs = [tuple(err["loc"][: len(field)]) for err in detail(r)]
            assert field in locs, (body, r.text)
            assert all(err["msg"] for err in detail(r))
        assert [d["device_id"] for d in c.get("/v1/devices")] == ["plug-1"]
        for body, field in BAD_COMMANDS:
            r = httpx.post(f"{url}/v1/commands", content=body, headers=ops)
            assert r.status_code == 422, (body, r.status_code, r.text)
            locs = [tuple(err["loc"][: len(field)]) for err in detail(r)]
            assert field in locs, (body, r.text)
        assert c.get("/v1/commands", device="plug-1") == []
        r = httpx.get(
            f"{url}/v1/devices/plug-1/readings", params={"to_ms": 10**30}, headers=headers
        )
        assert r.status_code == 422, r.text
        # A finite, bounded limit still registers, and a bounded command still goes.
        ok = httpx.post(
            f"{url}/v1/devices", json={"device_id": "plug-2", "limit_w": 3680.5}, headers=headers
        )
        assert ok.status_code == 201 and c.get("/v1/devices/plug-2")["limit_w"] == 3680.5
        sent = httpx.post(
            f"{url}/v1/commands",
            json={"device": "plug-1", "action": "limit.set", "params": {"watts": 1200.5}},
            headers=ops,
        )
        assert sent.status_code == 201, sent.text
        assert crashes(cluster) == [], crashes(cluster)
