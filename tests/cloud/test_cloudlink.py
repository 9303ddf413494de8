"""The hub's cloud link (hub/link/cloudlink.py) against a real JetStream
server: it exports only while its node leads, waits out a cloud that is
away and carries on exactly where the stream ends, and says how far behind
it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hub.core.cloudcfg import CloudConfig, CloudLogin
from hub.link.cloudlink import CloudLink
from tests.cloud.test_export_engine import SITE, Entries, _ids
from tools.cloud.cluster import CloudLayout, CloudServers, Creds, init_cloud
from tools.cloud.sites import add_site
from tools.cloud.status import connect

pytestmark = pytest.mark.cloud


@pytest.fixture()
def cloud(tmp_path: Path) -> Iterator[tuple[CloudLayout, CloudServers]]:
    layout = init_cloud(tmp_path / "c", nodes=1, port=0)
    with CloudServers(layout) as servers:
        servers.start_all()
        add_site(layout, SITE)
        yield layout, servers


def _config(layout: CloudLayout) -> CloudConfig:
    site = Creds.load(layout.creds(f"site-{SITE}"))
    return CloudConfig(
        SITE, tuple(site.servers), CloudLogin(site.user, site.password), Path(site.ca), window=8
    )


async def _until(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_only_the_leader_exports_and_a_lost_cloud_is_waited_out(
    cloud: tuple[CloudLayout, CloudServers],
) -> None:
    layout, servers = cloud
    admin = Creds.load(layout.creds("admin"))
    src = Entries(60)
    every = src.entries
    src.entries = every[:20]
    leading = [False]
    link = CloudLink(_config(layout), src, lambda: leading[0], "hub-1")

    async def run() -> tuple[list[str], list[dict[str, object]]]:
        seen: list[dict[str, object]] = []
        task = asyncio.create_task(link.run())
        try:
            await asyncio.sleep(1.0)
            assert src.cursor == 0 and link.status()["exporting"] is False  # a follower
            leading[0] = True
            await _until(lambda: src.cursor == every[19].index)
            seen.append(link.status())
            leading[0] = False  # leadership lost: nothing more goes out
            src.entries = every[:40]
            await asyncio.sleep(1.0)
            assert src.cursor == every[19].index
            servers.kill(0)  # the cloud goes away while the node leads again
            leading[0] = True
            await _until(lambda: link.status()["error"] is not None)
            seen.append(link.status())
            src.entries = every
            servers.start(0)
            servers.wait_ready()
            await _until(lambda: src.cursor == every[-1].index)
            seen.append({**link.status(), "expected": len(src.expected())})
            # More steps on the same connection: still two inboxes, the
            # publish acks' and the requests' (nats-py's subscriptions have no
            # public count).
            more = Entries(75).entries[60:]
            for k in range(3):
                src.entries = every + more[: 5 * (k + 1)]
                await _until(lambda: src.cursor == src.entries[-1].index)
            assert len(link._nc._subs) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        nc = await connect(admin)
        ids = await _ids(nc.jetstream())
        await nc.close()
        return ids, seen

    ids, seen = asyncio.run(run())
    assert ids == src.expected()  # each entry once, in order, across all of it
    assert seen[0]["exported_index"] == every[19].index and seen[0]["connected"] is True
    assert str(seen[1]["error"]).startswith("cloud unreachable")
    assert seen[2]["error"] is None and seen[2]["messages"] == seen[2]["expected"]
    assert seen[2]["duplicates"] == 0


def test_lag_is_measured_from_the_oldest_unexported_entry_and_alerts(
    cloud: tuple[CloudLayout, CloudServers],
) -> None:
    layout, servers = cloud
    src = Entries(5)
    old = int(time.time() * 1000) - 600_000  # committed ten minutes ago
    src.entries = [type(e)(e.index, e.messages, old) for e in src.entries]
    servers.kill(0)  # the cloud is away: nothing can go
    events: list[dict[str, object]] = []
    link = CloudLink(_config(layout), src, lambda: True, "hub-1", publish=events.append)

    async def run() -> tuple[dict[str, object], dict[str, object]]:
        task = asyncio.create_task(link.run())
        try:
            await _until(lambda: link.status()["error"] is not None and bool(events))
            away = link.status()
            servers.start(0)  # back: the export catches up and the alert clears
            servers.wait_ready()
            await _until(lambda: src.cursor == src.entries[-1].index and len(events) == 2)
            return away, link.status()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    away, back = asyncio.run(run())
    assert away["exporting"] is True and away["connected"] is False
    assert away["first_unexported_index"] == src.entries[0].index
    assert 600 <= float(away["lag_s"]) < 700  # type: ignore[arg-type]
    assert away["lagging"] is True  # past lag_alert_s (300 s)
    assert str(away["alert"]).startswith("cloud export 6") and away["alerts"] == 1
    raised, cleared = events
    assert raised["type"] == "alert" and raised["kind"] == "cloud_export"
    assert raised["active"] is True and raised["node"] == "hub-1"
    assert raised["first_unexported_index"] == src.entries[0].index
    assert cleared["active"] is False and cleared["reason"] == ""
    assert back["alert"] == "" and back["lag_s"] == 0.0 and back["first_unexported_index"] == 0
    assert back["alerts"] == 1 and back["lagging"] is False


class _HangsOnce(Entries):
    """A source whose first cursor commit never returns: the stand-in for a
    step stuck inside the NATS client (a flush or a drain on a dead socket
    waits without end), which no real server can be made to cause on demand."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.hung = 0

    async def commit(self, index: int) -> None:
        if not self.hung:
            self.hung += 1
            await asyncio.Event().wait()
        await super().commit(index)


def test_a_stuck_step_is_cut_and_the_link_made_again(
    cloud: tuple[CloudLayout, CloudServers],
) -> None:
    layout, _ = cloud
    admin = Creds.load(layout.creds("admin"))
    src = _HangsOnce(30)
    link = CloudLink(_config(layout), src, lambda: True, "hub-1")
    link.step_s = 2.0

    async def run() -> tuple[list[str], dict[str, object]]:
        task = asyncio.create_task(link.run())
        try:
            await _until(lambda: src.cursor == src.entries[-1].index)
            status = link.status()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        nc = await connect(admin)
        ids = await _ids(nc.jetstream())
        await nc.close()
        return ids, status

    ids, status = asyncio.run(run())
    assert src.hung == 1 and status["stuck_steps"] == 1
    assert ids == src.expected()  # resumed from the stream's tail: each message once
    assert status["duplicates"] == 0 and status["error"] is None
