"""`aiot cloud query`: a site's readings read back from its stream, per
device, with gaps and duplicates counted, against a real JetStream server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from hub.link.export import Exporter, Outgoing, PendingEntry
from protocol import cloud
from tests.console_support import aiot
from tools.cloud.cluster import CloudServers, Creds, init_cloud
from tools.cloud.sites import add_site
from tools.cloud.status import connect

pytestmark = pytest.mark.cloud

SITE = "east"
T0 = 1_764_806_400_000


class Batches:
    """One entry per batch of 30 readings (10 samples of 3 sensors) of a device."""

    def __init__(self, batches: list[tuple[str, int]]) -> None:
        self.entries = []
        for i, (device, first) in enumerate(batches):
            rows = [(first + k, T0 + 1000 * (k // 3), k % 3, 100.0 + k / 8) for k in range(30)]
            payloads = cloud.readings_payloads(SITE, 10 + i, device, rows, max_rows=16)
            subject = cloud.subject(SITE, "readings", device)
            self.entries.append(PendingEntry(10 + i, tuple(Outgoing(subject, p) for p in payloads)))
        self.cursor = 0

    def exported(self) -> int:
        return self.cursor

    def pending(self, after: int, limit: int) -> Sequence[PendingEntry]:
        return [e for e in self.entries if e.index > after][:limit]

    async def commit(self, index: int) -> None:
        self.cursor = index


def _query(root: Path, *args: str) -> dict[str, object]:
    out = aiot(root.parent, "cloud", "query", "--site", SITE, "--dir", str(root), "--json", *args)
    assert out.returncode == 0, out.stderr
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_readings_come_back_per_device_with_gaps_and_duplicates(tmp_path: Path) -> None:
    layout = init_cloud(tmp_path / "c", nodes=1, port=0)
    with CloudServers(layout) as servers:
        servers.start_all()
        add_site(layout, SITE)
        admin = Creds.load(layout.creds("admin"))
        src = Batches([("plug-1", 1), ("ann.plug", 1), ("plug-1", 31), ("plug-1", 91)])

        async def export() -> None:
            nc = await connect(admin)
            ex = Exporter(SITE, cloud.stream_name(SITE), src)
            while await ex.step(nc.jetstream()):
                pass
            await nc.close()

        asyncio.run(export())
        doc = _query(layout.root)
        devices = doc["devices"]
        assert isinstance(devices, dict)
        assert devices["ann.plug"] == {
            "readings": 30, "first_seq": 1, "last_seq": 30, "gaps": [], "duplicates": [],
        }  # fmt: skip
        assert devices["plug-1"]["readings"] == 90
        assert devices["plug-1"]["gaps"] == [[61, 90]]  # a batch the export never had
        assert devices["plug-1"]["duplicates"] == []
        assert doc["messages"] == 4 * 2 and doc["bad_messages"] == []

        async def stray() -> None:  # what a broken exporter would leave: seqs 31..46 again
            nc = await connect(admin)
            entry = src.entries[2]
            await nc.jetstream().publish(
                entry.messages[0].subject, entry.messages[0].payload, headers={"Nats-Msg-Id": "x"}
            )
            await nc.close()

        asyncio.run(stray())
        one = _query(layout.root, "--device", "plug-1")["devices"]
        assert isinstance(one, dict) and list(one) == ["plug-1"]
        assert one["plug-1"]["duplicates"] == list(range(31, 47))
        missing = aiot(tmp_path, "cloud", "query", "--site", "nope", "--dir", str(layout.root))
        assert missing.returncode == 1 and "no stream AIOT_SITE_NOPE" in missing.stderr
    away = aiot(tmp_path, "cloud", "query", "--site", SITE, "--dir", str(layout.root))
    assert away.returncode == 1 and "no cloud server answered" in away.stderr
    assert "Traceback" not in away.stderr
