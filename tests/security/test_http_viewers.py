"""A viewer learns nothing about devices that are not theirs: /v1/status does
not list them, and on every device-scoped route another's device answers
exactly as a device that does not exist (the same status, the same body)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import httpx
import pytest

from protocol import topics
from tests.cluster.test_hub_e2e import batch
from tests.cluster.test_hub_stream import Listener
from tests.security.http_hubs import add_user, admin_token, api_hub, bearer, crashes, login
from tests.support import wait_until

pytestmark = pytest.mark.cluster

# Every route that names a device ({d}), as a viewer may call it.
DEVICE_ROUTES = (
    ("GET", "/v1/devices/{d}", None),
    ("GET", "/v1/devices/{d}/readings", None),
    ("GET", "/v1/devices/{d}/readings?linearizable=true&limit=5", None),
    ("GET", "/v1/devices/{d}/energy?day=2026-11-22", None),
    ("GET", "/v1/devices/{d}/config", None),
    ("GET", "/v1/commands?device={d}", None),
    ("GET", "/v1/decisions?device={d}", None),
    ("GET", "/v1/alerts?device={d}", None),
    ("POST", "/v1/ask", {"question": "what did {d} do today?"}),
    ("POST", "/v1/ask", {"question": "how much energy did {d} use yesterday?"}),
    ("DELETE", "/v1/devices/{d}", None),
    ("POST", "/v1/commands", {"device": "{d}", "action": "reboot"}),
)
COMMAND_ROUTES = (("GET", "/v1/commands/{c}", None),)


def fill(template: object, **names: str) -> object:
    if isinstance(template, str):
        return template.format(**names)
    if isinstance(template, dict):
        return {k: fill(v, **names) for k, v in template.items()}
    return template


def probe(
    client: httpx.Client, routes: tuple[tuple[str, str, object], ...], **names: str
) -> list[tuple[str, int, str]]:
    """(route, status, body with the probed name as ``<id>``) for each route."""
    out = []
    for method, path, body in routes:
        r = client.request(method, str(fill(path, **names)), json=fill(body, **names))
        text = r.text
        for name in names.values():
            text = text.replace(name, "<id>")
        out.append((f"{method} {path}", r.status_code, text))
    return out


async def report(port: int, device_id: str, password: str, frames: list[tuple[str, bytes]]) -> None:
    """Publish as the device, with its own id as the MQTT client id."""
    async with aiomqtt.Client(
        "127.0.0.1", port, username=device_id, password=password, identifier=device_id
    ) as c:
        for topic, payload in frames:
            await c.publish(topic, payload, qos=1)
        await asyncio.sleep(1)


def test_a_viewer_cannot_tell_anothers_device_from_a_missing_one(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        admin = cluster.client(0)
        url = admin.url
        cluster.add_device("plug-1")
        theirs = cluster.add_device("plug-2")
        add_user(cluster, "vic", "viewer", ["plug-1"])
        # plug-2 reports to this node: it is connected here, with readings.
        up = batch("plug-2", 1, 5, bytes.fromhex(theirs["key"]))
        frames = [(topics.topic("plug-2", "up"), up)]
        asyncio.run(report(cluster.ports[0].broker, "plug-2", theirs["password"], frames))
        wait_until(
            lambda: "plug-2" in admin.get("/v1/status")["devices_connected"],
            20,
            "plug-2 connected to hub-1",
        )
        cmd = admin.post("/v1/commands", {"device": "plug-2", "action": "reboot"})
        missing_cmd = "f" * len(cmd["command_id"])
        assert admin.get("/v1/devices/plug-2")["watermark"] == 5
        vic = login(url, "vic")
        with httpx.Client(base_url=url, headers=bearer(vic), timeout=15) as c:
            # /v1/status: only the viewer's own devices, by id.
            status = c.get("/v1/status").json()
            assert "plug-2" not in status["devices_connected"], status
            assert "plug-2" not in c.get("/v1/status?hash=true").text
            assert [d["device_id"] for d in c.get("/v1/devices").json()] == ["plug-1"]
            # Another's device, a device that never existed: the same answers.
            foreign = probe(c, DEVICE_ROUTES, d="plug-2")
            never = probe(c, DEVICE_ROUTES, d="plug-9")
            assert foreign == never, [(a, b) for a, b in zip(foreign, never, strict=True) if a != b]
            statuses = {route: status for route, status, _ in foreign}
            assert statuses["GET /v1/devices/{d}"] == 404
            assert statuses["GET /v1/commands?device={d}"] == 404
            assert statuses["GET /v1/devices/{d}/config"] == 403  # admin only, either way
            foreign_cmd = probe(c, COMMAND_ROUTES, c=cmd["command_id"])
            assert foreign_cmd == probe(c, COMMAND_ROUTES, c=missing_cmd)
            assert foreign_cmd[0][1] == 404
            # And once plug-2 is gone, the same answers again, byte for byte.
            raw = [
                (r.status_code, r.text)
                for r in (c.get("/v1/devices/plug-2"), c.get("/v1/commands?device=plug-2"))
            ]
            admin.delete("/v1/devices/plug-2")
            again = [
                (r.status_code, r.text)
                for r in (c.get("/v1/devices/plug-2"), c.get("/v1/commands?device=plug-2"))
            ]
            assert raw == again
            assert c.get("/v1/devices/plug-1").status_code == 200
        assert crashes(cluster) == [], crashes(cluster)


def test_a_viewers_stream_carries_only_their_devices(tmp_path: Path) -> None:
    with api_hub(tmp_path) as cluster:
        admin = cluster.client(0)
        url = admin.url
        cluster.add_device("plug-1")
        cluster.add_device("plug-2")
        add_user(cluster, "vic", "viewer", ["plug-1"])
        vic = login(url, "vic")
        with Listener(url, admin_token(cluster)) as everyone, Listener(url, vic) as viewer:
            admin.post("/v1/commands", {"device": "plug-2", "action": "reboot"})
            admin.post("/v1/commands", {"device": "plug-1", "action": "reboot"})
            wait_until(
                lambda: (
                    "command" in viewer.kinds("plug-1") and "command" in everyone.kinds("plug-2")
                ),
                20,
                "command events",
            )
            assert viewer.kinds("plug-2") == set()
            assert all(e.get("device_id") in (None, "plug-1") for e in viewer.events)
