"""`aiot cloud query --hourly`: a site's energy per hour of a day, read from
the cloud, equals what each hub computes from the same readings (its
rollups), per device, and the site's hours are the devices' sums."""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest

from hub.link.export import Exporter, Outgoing, PendingEntry
from hub.state.store import ENERGY_WH_SENSOR, Store
from protocol import cloud
from tests.console_support import aiot
from tests.unit.test_retention import DAY0, DEVICE, MAP, _batches, _numbered, _register, _samples
from tools.cloud.cluster import CloudServers, Creds, init_cloud
from tools.cloud.query import SiteReadings, hourly
from tools.cloud.sites import add_site
from tools.cloud.status import connect

pytestmark = pytest.mark.cloud

SITE = "west"


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def _rows(samples: list[tuple[int, float, float, float]]) -> list[cloud.Row]:
    """The rows a hub exports for these samples (test_retention._batches: seq
    from 1, three sensors each, values as f32)."""
    return [
        (1 + 3 * i + k, ts, sensor, _f32(v))
        for i, (ts, w, wh, volt) in enumerate(samples)
        for k, (sensor, v) in enumerate(((0, w), (ENERGY_WH_SENSOR, wh), (2, volt)))
    ]


def _found(devices: dict[str, list[cloud.Row]]) -> SiteReadings:
    found = SiteReadings(SITE)
    for device, rows in devices.items():
        found.add(cloud.Readings(SITE, 1, device, tuple(rows)))
    return found


def test_the_clouds_hours_equal_the_hubs(tmp_path: Path) -> None:
    samples = _samples(2, seed=3)  # a reboot (counter reset) on the first day
    with Store(tmp_path / "s", map_size=MAP) as store:
        store.apply(_numbered([_register(), *_batches(samples)]))
        other = [(ts + 17_000, w, wh / 2, v) for ts, w, wh, v in samples]
        found = _found({DEVICE: _rows(samples), "ann.plug": _rows(other)})
        for day in (DAY0, DAY0 + timedelta(days=1)):
            got = hourly(found, day)
            hub = [round(h.wh, 6) for h in store.hourly_energy(DEVICE, day)]
            mine = got["devices"][DEVICE]
            assert [h["wh"] for h in mine["hours"]] == hub
            assert [h["start_ms"] for h in mine["hours"]] == [
                h.start_ms for h in store.hourly_energy(DEVICE, day)
            ]
            assert sum(hub) > 0
            site = [h["wh"] for h in got["hours"]]
            both = zip(mine["hours"], got["devices"]["ann.plug"]["hours"], strict=True)
            assert site == pytest.approx([a["wh"] + b["wh"] for a, b in both], abs=2e-6)
            assert got["wh"] == pytest.approx(sum(site), abs=1e-5)
    # A day with no readings: every hour 0; devices with no counter: left out.
    empty = hourly(_found({"meter": [(1, samples[0][0], 0, 5.0)]}), DAY0 + timedelta(days=9))
    assert empty["devices"] == {} and empty["wh"] == 0 and len(empty["hours"]) == 24


def test_the_cli_reads_the_hours_from_the_stream(tmp_path: Path) -> None:
    samples = _samples(1, seed=4)
    rows = _rows(samples)
    subject = cloud.subject(SITE, "readings", DEVICE)
    entries = [
        PendingEntry(5 + i, tuple(Outgoing(subject, p) for p in cloud.readings_payloads(
            SITE, 5 + i, DEVICE, rows[k : k + 300]
        )))
        for i, k in enumerate(range(0, len(rows), 300))
    ]  # fmt: skip

    class Source:
        cursor = 0

        def exported(self) -> int:
            return self.cursor

        def pending(self, after: int, limit: int) -> list[PendingEntry]:
            return [x for x in entries if x.index > after][:limit]

        async def commit(self, index: int) -> None:
            self.cursor = index

    layout = init_cloud(tmp_path / "c", nodes=1, port=0)
    with CloudServers(layout) as servers:
        servers.start_all()
        add_site(layout, SITE)

        async def export() -> None:
            nc = await connect(Creds.load(layout.creds("admin")))
            ex = Exporter(SITE, cloud.stream_name(SITE), Source())
            while await ex.step(nc.jetstream()):
                pass
            await nc.close()

        asyncio.run(export())
        root = str(layout.root)
        base = ("cloud", "query", "--site", SITE, "--dir", root, "--hourly")
        out = aiot(tmp_path, *base, "--day", DAY0.isoformat(), "--json")
        assert out.returncode == 0, out.stderr
        # The stream carries each value as its shortest decimal; the hours are
        # computed on the 32-bit floats it stands for, the hub's.
        got = json.loads(out.stdout)
        assert got.pop("messages") == sum(len(x.messages) for x in entries)
        want = hourly(_found({DEVICE: rows}), DAY0)
        del want["messages"]
        assert got == want and got["wh"] > 0
        text = aiot(tmp_path, *base, "--day", DAY0.isoformat())
        assert text.returncode == 0 and f"{DEVICE}" in text.stdout and " Wh" in text.stdout
        assert len(text.stdout.splitlines()) == 24 + 2  # the hours, the site, the device
        for bad, why in (
            (("--day", "2025-13-01"), "expected YYYY-MM-DD"),
            (("--day", "yesterday"), "expected YYYY-MM-DD"),
        ):
            r = aiot(tmp_path, *base, *bad)
            assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr
        r = aiot(tmp_path, "cloud", "query", "--site", SITE, "--dir", root, "--day", "2025-11-20")
        assert r.returncode == 2 and "--day goes with --hourly" in r.stderr
        events = ("cloud", "events", "--site", SITE, "--dir", root, "--kind")
        r = aiot(tmp_path, *events, "readings")
        assert r.returncode == 2 and "want one of decisions, commands" in r.stderr
        r = aiot(tmp_path, *events, "commands")
        assert r.returncode == 0 and r.stdout == "" and "no commands of site west" in r.stderr
