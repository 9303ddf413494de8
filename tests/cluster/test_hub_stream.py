"""The live stream (Server-Sent Events) on a real node: readings, presence and
command events arrive; a viewer sees only their devices' events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol import topics
from tests.cluster.hubs import running_cluster
from tests.cluster.test_hub_e2e import batch, publish_as
from tests.support import wait_until

pytestmark = pytest.mark.cluster


class Listener:
    """Reads /v1/stream in a thread and keeps the events."""

    def __init__(self, url: str, token: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, token), daemon=True)
        self.connected = threading.Event()

    def _run(self, url: str, token: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the node stopped under the stream
            self._read(url, token)

    def _read(self, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{url}/v1/stream", headers=headers, timeout=None) as r:
            kind = ""
            for line in r.iter_lines():
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append({"event": kind, **json.loads(line[6:])})
                if self._stop.is_set():
                    return

    def __enter__(self) -> Listener:
        self._thread.start()
        assert self.connected.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def kinds(self, device: str) -> set[str]:
        return {e["event"] for e in self.events if e.get("device_id") == device}


def test_stream_carries_readings_presence_and_commands(tmp_path: Path) -> None:
    with running_cluster(tmp_path, nodes=1) as cluster:
        admin = cluster.client(0)
        a = cluster.add_device("plug-a")
        cluster.add_device("plug-b")
        pw = "long enough password"
        admin.request(
            "PUT", "/v1/users/vic", json={"role": "viewer", "password": pw, "devices": ["plug-b"]}
        )
        vic = httpx.post(f"{admin.url}/v1/login", json={"username": "vic", "password": pw}).json()
        token = admin._http.headers["Authorization"].split(" ", 1)[1]
        with Listener(admin.url, token) as everyone, Listener(admin.url, vic["token"]) as viewer:
            key = bytes.fromhex(a["key"])
            frames = [(topics.topic("plug-a", "up"), batch("plug-a", 1, 5, key))]
            asyncio.run(publish_as(cluster.ports[0].broker, "plug-a", a["password"], frames))
            admin.post("/v1/commands", {"device": "plug-a", "action": "reboot"})
            wait_until(
                lambda: {"reading", "presence", "command"} <= everyone.kinds("plug-a"),
                20,
                "reading, presence and command events for plug-a",
            )
            reading = next(e for e in everyone.events if e["event"] == "reading")
            assert reading["watermark"] == 5 and len(reading["readings"]) == 5
            assert viewer.kinds("plug-a") == set()  # not assigned to the viewer
