"""Two sites report to one cloud exactly once: two hub clusters of three
nodes with MicroPython plugs, a JetStream cluster of three servers. Under
load, the north site's exporting leader is killed in the middle of its
export, a cloud server is killed, and the south site loses the cloud (its
links go through TCP proxies that are stopped) for OUTAGE_S, then gets it
back. Every reading each plug saw acknowledged is then in its site's stream
once, read back by site, device and sequence number; the registry's and a
command's changes too, each once; the hourly energy read from the cloud
equals the hubs'; the export lag is 0 in /metrics.

``AIOT_CLOUD_OUTAGE_S`` sets the outage (CI: 20 s; run it with 120 for the
two minutes of the acceptance run)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.cloud.test_cloud_models import _extra_cloud, _until
from tests.cluster.hubs import assert_exactly_once, need_mosquitto, provision, running_cluster
from tests.cluster.test_hub_ops import scrape
from tests.cluster.test_membership import empty_flash
from tests.device import Device
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudLayout, CloudServers, Creds, init_cloud
from tools.cloud.proxy import Proxies
from tools.cloud.query import hourly, read_events, read_readings, summary
from tools.cloud.sites import add_site
from tools.lab.cluster import LocalCluster

pytestmark = [pytest.mark.cloud, pytest.mark.cluster]

OUTAGE_S = float(os.environ.get("AIOT_CLOUD_OUTAGE_S", "20"))
TUNING: dict[str, Any] = {"sample_ms": 100, "return_after_s": 5}
PLUGS = {"north": ("n-plug-1", "n-plug-2"), "south": ("s-plug-1", "s-plug-2")}


@contextmanager
def proxies_for(layout: CloudLayout) -> Iterator[Proxies]:
    """The south site's only way to the cloud (tools/cloud/proxy.py)."""
    p = Proxies(layout.host, [port.client for port in layout.ports])
    p.start()
    try:
        yield p
    finally:
        p.stop()


def export(c: LocalCluster) -> dict[str, Any]:
    """The export status of the site's leader."""
    status: dict[str, Any] = c.status(c.leader())["cloud"]["export"]
    return status


def caught_up(c: LocalCluster) -> bool:
    try:
        x = export(c)
    except Exception:  # a node between leaders
        return False
    return bool(x["exported_index"]) and x["first_unexported_index"] == 0


def same_energy_in_the_cloud(admin: Creds, c: LocalCluster) -> None:
    """Energy by the hour from the cloud's copy equals each hub's, today (UTC)."""
    day = datetime.now(UTC).date()
    got = hourly(read_readings(admin, "north"), day)
    for d in PLUGS["north"]:
        hub = c.client(0).get(f"/v1/devices/{d}/energy", day=day.isoformat())["hours"]
        assert got["devices"][d]["hours"] == hub, d
    assert got["wh"] > 0


def registry_and_commands_in_the_cloud(admin: Creds, c: LocalCluster, command_id: str) -> None:
    """The registrations and the command's changes, each once, in the cloud."""
    devices = read_events(admin, "north", "devices")
    assert sorted(x["device"] for x in devices if x["op"] == "register") == sorted(PLUGS["north"])
    cmds = [x for x in read_events(admin, "north", "commands") if x["command_id"] == command_id]
    assert cmds[0]["op"] == "put" and cmds[-1]["state"] == "DONE", cmds
    assert len({x["index"] for x in cmds}) == len(cmds)  # one message per change, none twice
    assert cmds[-1]["result"]["status"] == "DONE"


def test_two_sites_export_every_reading_once_across_faults(tmp_path: Path) -> None:
    need_mosquitto()
    layout = init_cloud(tmp_path / "cloud", nodes=3, port=0)
    admin = Creds.load(layout.creds("admin"))
    plugs: dict[str, Device] = {}
    with ExitStack() as stack:
        servers = stack.enter_context(CloudServers(layout))
        servers.start_all()
        ensure_buckets(admin, 3)
        for site in PLUGS:
            add_site(layout, site)
        proxies = stack.enter_context(proxies_for(layout))
        south_cloud = _extra_cloud(layout, "south").replace(
            f"servers = {json.dumps(layout.urls())}", f"servers = {json.dumps(proxies.urls)}"
        )
        sites = {
            "north": stack.enter_context(
                running_cluster(tmp_path / "north", 3, extra=_extra_cloud(layout, "north"))
            ),
            "south": stack.enter_context(
                running_cluster(tmp_path / "south", 3, extra=south_cloud + "lag_alert_s = 5\n")
            ),
        }
        stack.callback(lambda: [d.stop() for d in plugs.values()])
        # The export is on (from the next entry on) before the plugs register.
        _until(lambda: all(export(c)["on"] for c in sites.values()), 60)
        for site, names in PLUGS.items():
            for d in names:
                plugs[d] = provision(sites[site], tmp_path / site, d, **TUNING).start()
        north, south = sites["north"], sites["south"]
        _until(lambda: caught_up(north) and caught_up(south), 90)

        # A command, executed by the plug: the ledger's changes go out too.
        cmd = north.client(0).post(
            "/v1/commands", {"device": "n-plug-1", "action": "relay.set", "params": {"on": False}}
        )

        # 1. The north site's exporting leader dies in the middle of its export.
        leader = north.leader()
        sent = export(north)["messages"]
        _until(lambda: north.status(leader)["cloud"]["export"]["messages"] > sent + 5, 30)
        north.kill(leader)
        time.sleep(2)
        north.restart(leader)

        # 2. A cloud server dies, and comes back.
        servers.kill(1)
        time.sleep(5)
        servers.start(1)
        servers.wait_ready()

        # 3. The south site loses the cloud: its export stops, the site goes on,
        #    the lag alert fires; then the cloud is back and the backlog drains.
        proxies.stop()
        _until(lambda: export(south)["error"] is not None, 30)
        time.sleep(OUTAGE_S)
        away = export(south)
        assert away["first_unexported_index"] > 0 and away["lag_s"] > 5, away
        assert away["alert"].startswith("cloud export"), away
        proxies.start()

        acked = empty_flash(plugs)
        for site, c in sites.items():
            mine = {d: acked[d] for d in PLUGS[site]}
            assert_exactly_once(c, mine)
            try:
                _until(lambda c=c: caught_up(c), 120)
            except AssertionError:
                raise AssertionError(f"{site} never caught up: {export(c)}") from None
        _until(lambda: export(south)["alert"] == "", 30)  # checked once a second
        assert export(south)["alerts"] >= 1

        # Read back from the cloud by site, device and seq: each reading once.
        for site, names in PLUGS.items():
            doc = summary(read_readings(admin, site))
            assert sorted(doc["devices"]) == sorted(names)
            for d in names:
                want = {"readings": acked[d], "first_seq": 1, "last_seq": acked[d]}
                assert doc["devices"][d] == {**want, "gaps": [], "duplicates": []}, (site, d)
            assert doc["bad_messages"] == []
            assert sum(acked[d] for d in names) > 0
        same_energy_in_the_cloud(admin, north)
        registry_and_commands_in_the_cloud(admin, north, cmd["command_id"])
        metrics = scrape(north, north.leader())  # the same figures in /metrics
        assert metrics["aiot_cloud_export_lag_seconds"][()] == 0.0
        assert metrics["aiot_cloud_export_first_unexported_index"][()] == 0.0
        assert metrics["aiot_cloud_exporting"][()] == 1.0
        assert metrics["aiot_cloud_export_alert"][()] == 0.0
        assert metrics["aiot_cloud_export_messages_total"][()] > 0
