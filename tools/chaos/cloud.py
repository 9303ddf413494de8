"""The site's cloud in a chaos campaign (`aiot chaos --cloud`): a NATS
JetStream cluster the hubs export to, its faults, and its copy read back.

    cloud = ChaosCloud(workdir / "cloud", nodes=3, listen="10.1.2.1")
    cloud.up()                      # servers ready, buckets, the site, its proxies
    cloud.table                     # the [cloud] table every hub's config gets
    cloud.kill(1); cloud.start(1)   # cloud_kill and its heal
    cloud.cut(); cloud.heal()       # cloud_partition: the proxies stop, and start
    cloud.readings()                # device id -> every reading in the site's stream
    cloud.close()

The servers (tools/cloud/cluster.py) listen on 127.0.0.1 of this namespace;
the site reaches them only through TCP proxies (tools/cloud/proxy.py) on
``listen``: 127.0.0.1, or the bridge's address when the hubs run in network
namespaces (tools/chaos/netns.py). The servers' certificates also name that
address. Stopping the proxies cuts the whole site off the cloud at once
(every hub, every connection), as a site's uplink going down does.

``wait_exported`` waits until the leader's export has caught up
(``/v1/status`` ``cloud.export.first_unexported_index`` 0).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from hub.core.tls import write_node
from tools.base.hubclient import HubError
from tools.chaos import ChaosError
from tools.chaos.checks import CloudResult, Reading, check_cloud, violation
from tools.chaos.fleet import POLL_S, Fleet
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudError, CloudLayout, CloudServers, Creds, init_cloud
from tools.cloud.proxy import Proxies
from tools.cloud.query import read_readings
from tools.cloud.sites import add_site

SITE: Final = "chaos"
READY_S: Final = 60.0  # the cloud is ready at the start, a restarted server rejoins
READ_S: Final = 300.0  # reading the site's stream back


class ChaosCloud:
    """A JetStream cluster of ``nodes`` servers under ``root`` with the
    campaign's site, and which of its servers the campaign has killed."""

    def __init__(self, root: Path, nodes: int, listen: str = "127.0.0.1") -> None:
        self.root = root
        self.nodes = nodes
        self.listen = listen
        self._layout: CloudLayout | None = None
        self._servers: CloudServers | None = None
        self._proxies: Proxies | None = None
        self.killed: set[int] = set()  # servers the campaign killed
        self.violations: list[dict[str, Any]] = []  # servers that exited by themselves

    @property
    def layout(self) -> CloudLayout:
        if self._layout is None:
            raise RuntimeError("the cloud is not up")
        return self._layout

    @property
    def servers(self) -> CloudServers:
        if self._servers is None:
            raise RuntimeError("the cloud is not up")
        return self._servers

    @property
    def proxies(self) -> Proxies:
        if self._proxies is None:
            raise RuntimeError("the cloud is not up")
        return self._proxies

    def name(self, i: int) -> str:
        return self.layout.names[i]

    def up(self) -> None:
        """Write the cluster, start its servers, make the buckets and the
        site's stream and login, and start the site's proxies."""
        try:
            layout = init_cloud(self.root, self.nodes, port=0)
            self._layout = layout
            if self.listen not in (layout.host, "localhost"):
                for name in layout.names:  # the address the site dials, named too
                    write_node(layout.root / "tls", name, [layout.host, "localhost", self.listen])
            self._servers = CloudServers(layout)
            self._servers.start_all(READY_S)
            ensure_buckets(Creds.load(layout.creds("admin")), min(3, self.nodes))
            add_site(layout, SITE)
            self._proxies = Proxies(layout.host, [p.client for p in layout.ports], self.listen)
            self._proxies.start()
        except CloudError as exc:
            raise ChaosError(f"the cloud did not start: {exc}") from None

    @property
    def table(self) -> str:
        """The [cloud] table of the site's hubs: the proxies are its servers."""
        layout = self.layout
        return (
            "[cloud]\n"
            f'site = "{SITE}"\n'
            f"servers = {json.dumps(self.proxies.urls)}\n"
            f'login = "{layout.creds(f"site-{SITE}")}"\n'
            f'ca = "{layout.ca}"\n'
        )

    # -- faults

    def kill(self, i: int) -> None:
        """kill -9 of server i."""
        self.killed.add(i)
        self.servers.kill(i)

    def start(self, i: int) -> float | None:
        """Start server i again; seconds until the cluster agrees on a meta
        leader with it (None: not within READY_S)."""
        t = time.monotonic()
        self.servers.start(i)
        self.killed.discard(i)
        try:
            self.servers.wait_ready(READY_S)
        except CloudError:
            return None
        return round(time.monotonic() - t, 2)

    def cut(self) -> None:
        """The site loses the cloud: its proxies stop."""
        self.proxies.stop()

    def heal(self) -> None:
        self.proxies.start()

    def check_servers(self, now: float) -> None:
        """A server that exited without the campaign killing it is a crash:
        recorded, and started again."""
        for i in range(self.nodes):
            if i in self.killed or self.servers.alive(i):
                continue
            proc = self.servers.procs.get(i)
            code = None if proc is None else proc.returncode
            self.violations.append(
                violation(
                    "crash",
                    f"cloud server {self.name(i)} exited by itself ({code}) "
                    f"at {now:.1f} s; see {self.servers.log_path(i)}",
                )
            )
            self.servers.start(i)

    def heal_everything(self, now: float) -> None:
        """Every server running and the proxies up."""
        self.check_servers(now)
        for i in sorted(self.killed):
            self.start(i)
        if self._proxies is not None and not self._proxies.running:
            self._proxies.start()

    def close(self) -> None:
        if self._proxies is not None:
            self._proxies.stop()
        if self._servers is not None:
            self._servers.stop()

    # -- reading the copy back

    def readings(self) -> dict[str, list[Reading]]:
        """Every reading in the site's stream, per device; one the stream
        holds twice (the same device and seq) comes twice."""
        try:
            found = read_readings(Creds.load(self.layout.creds("admin")), SITE, timeout=READ_S)
        except CloudError as exc:
            raise ChaosError(f"cannot read the site's stream back: {exc}") from None
        out: dict[str, list[Reading]] = {}
        for device, rows in found.rows.items():
            got = [Reading(*row) for row in rows.values()]
            got += [Reading(*rows[seq]) for seq in found.duplicates.get(device, [])]
            out[device] = sorted(got)
        if found.bad:
            raise ChaosError(
                f"{len(found.bad)} messages of the stream did not decode: {found.bad[0]}"
            )
        return out


def export_status(fleet: Fleet) -> dict[str, Any] | None:
    """The leader's cloud export status (None: no leader answers)."""
    leader = fleet.leader()
    if leader is None:
        return None
    with contextlib.suppress(HubError, KeyError, TypeError):
        out: dict[str, Any] = fleet.api[leader].get("/v1/status")["cloud"]["export"]
        return out
    return None


def wait_exported(fleet: Fleet, limit_s: float) -> tuple[float | None, dict[str, Any] | None]:
    """Wait until the leader's export has caught up: everything committed
    is in the cloud (``first_unexported_index`` 0, something exported).
    The seconds it took (None: not within ``limit_s``) and the last status."""
    t = time.monotonic()
    last: dict[str, Any] | None = None
    while True:
        got = export_status(fleet)
        last = got if got is not None else last
        if got is not None and got["exported_index"] and got["first_unexported_index"] == 0:
            return round(time.monotonic() - t, 2), got
        if time.monotonic() - t > limit_s:
            return None, last
        time.sleep(POLL_S)


def cloud_target(cloud: ChaosCloud | None, f: Any, whole: int) -> tuple[int, str]:
    """A cloud fault's target: the server cloud_kill kills (by pick), or
    the whole cloud (``whole``) for cloud_partition."""
    if f.kind == "cloud_kill" and cloud is not None:
        i = f.pick % cloud.nodes
        return i, cloud.name(i)
    return whole, "the cloud"


def wait_for_export(fleet: Fleet, say: Callable[[str], None], limit_s: float) -> float | None:
    """Seconds until the leader's export caught up once the devices stopped
    (None: not within ``limit_s``), said as it goes."""
    say("devices stopped; waiting for the cloud export to catch up")
    took, last = wait_exported(fleet, limit_s)
    say(
        f"cloud export caught up in {took:g} s"
        if took is not None
        else f"cloud export did NOT catch up in {limit_s:g} s: {last}"
    )
    return took


def compare_cloud(
    cloud: ChaosCloud,
    fleet: Fleet,
    stored: dict[str, dict[str, list[Reading]]],
    caught_up_s: float | None,
    limit_s: float,
) -> CloudResult:
    """Check X: once the hubs are quiet, the export caught up (again: a
    record committed while the hashes converged is exported too), and the
    cloud's copy read back and compared with what the hubs store."""
    if caught_up_s is not None:
        again, _ = wait_exported(fleet, limit_s)
        caught_up_s = caught_up_s if again is not None else None
    return check_cloud(stored, cloud.readings(), caught_up_s, limit_s)
