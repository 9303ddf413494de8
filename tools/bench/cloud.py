"""`aiot bench cloud`: a site's export to a NATS JetStream cloud, under load.

One run, on loopback: a local JetStream cluster (tools/cloud/: ``cloud_nodes``
`nats-server` processes over TLS, the site's stream with as many replicas as
servers, up to 3) and tools/bench/rig.py's hub cluster (three `aiot hub run`
processes, each with its own Mosquitto) whose nodes carry the site's
``[cloud]`` table, under load from the generator processes
(tools/bench/generator.py, with one more command here: ``marks``):

1. closed loop, as `aiot bench ingest` measures it: the site's maximum
   committed ingest rate with the export on; then the export drains;
2. paced at half that rate: readings the cloud stored per second against
   readings committed per second over the same window, and the bytes on the
   exporter's link over it;
3. still paced, every cloud server is stopped (SIGTERM) for ``outage_s``
   seconds and started again on its data; catch-up runs from the servers'
   return until the cloud holds every entry committed before it;
4. the load stops, the export drains, and the site's stream is read back
   (tools/bench/cloudread.py): JetStream's store time of every message gives
   the rates, the catch-up and the device-to-cloud latency; each device's
   sequence numbers say whether every acknowledged reading is there once;
5. the baseline: the cloud stopped, a second hub cluster with no ``[cloud]``
   table, closed loop as in 1: what the export costs the site's ingest.

tools/bench/cloudfigures.py turns what was measured into the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tools.bench import rig
from tools.bench.cloudfigures import SITE, Measured, Outage, Paced, report
from tools.bench.cloudread import link_bytes, read_arrivals
from tools.bench.codec import BenchError
from tools.bench.frames import BATCH_READINGS
from tools.bench.generator import Generator, serve
from tools.bench.ingest import HUBS, LATENCY_WARMUP_S
from tools.bench.load import WINDOW, Fleet, Generators, closed_loop
from tools.bench.watch import CpuMeter
from tools.cloud.buckets import ensure_buckets
from tools.cloud.cluster import CloudError, CloudLayout, CloudServers, Creds, init_cloud
from tools.cloud.sites import add_site
from tools.lab.cluster import LocalCluster

DRAIN_TIMEOUT_S: Final = 600.0  # the export must catch up within this, or the run fails
POLL_S: Final = 0.25
SETTLE_S: Final = 2.0  # after the paced window, before the outage


@dataclass(frozen=True, slots=True)
class Settings:
    """The parameters of one run (`aiot bench cloud`'s options)."""

    duration_s: float
    outage_s: float
    warmup_s: float
    cloud_nodes: int
    max_rate: float
    baseline: bool
    fleet: Fleet

    def __post_init__(self) -> None:
        f = self.fleet
        if min(f.devices, f.batch_readings, f.window, f.generators, self.cloud_nodes) < 1:
            raise BenchError("devices, batch readings, window, generators and cloud nodes ≥ 1")
        if self.duration_s <= 0 or self.outage_s <= 0 or self.warmup_s < 0:
            raise BenchError("durations must be positive")

    def paced_batches(self, rate: float) -> int:
        """Frames per device for phases 2 and 3 at ``rate``: the window, the
        outage and as long again for the catch-up (a device out of frames
        stops sending, which the report says)."""
        seconds = LATENCY_WARMUP_S + self.duration_s + 2 * self.outage_s + 60
        return self.fleet.batches_for(rate, seconds)


# -- the generators --------------------------------------------------------------------------


class CloudGenerator(Generator):
    """tools/bench/generator.py's Generator with one more command, ``marks``:
    each device's watermark (readings acknowledged) and, with ``first``, the
    first publish time of each batch built (time.monotonic())."""

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] != "marks":
            return await super().command(cmd)
        out: dict[str, Any] = {}
        for d in self.devs:
            out[d.id] = {"acked": d.acked * self.n}
            if cmd.get("first"):
                out[d.id]["first"] = d.first_t[: len(d.packets)].tolist()
        return {"devices": out}


class CloudGenerators(Generators):
    """tools/bench/load.py's Generators, with the processes running CloudGenerator."""

    MODULE = "tools.bench.cloud"

    def marks(self, first: bool = False) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for part in self.call({"cmd": "marks", "first": first}, timeout=120):
            out.update(part["devices"])
        return out

    def __enter__(self) -> CloudGenerators:
        return self


# -- the cloud -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cloud:
    layout: CloudLayout
    servers: CloudServers
    admin: Creds

    def table(self) -> str:
        """The [cloud] table of the site's hubs."""
        urls = ", ".join(f'"{u}"' for u in self.layout.urls())
        return (
            f'[cloud]\nsite = "{SITE}"\nservers = [{urls}]\n'
            f'login = "{self.layout.creds(f"site-{SITE}")}"\nca = "{self.layout.ca}"\n'
        )

    def pids(self) -> dict[str, int | None]:
        return {
            name: (p.pid if (p := self.servers.procs.get(i)) is not None else None)
            for i, name in enumerate(self.layout.names)
        }


@contextlib.contextmanager
def local_cloud(nodes: int, say: rig.Say) -> Iterator[Cloud]:
    """A JetStream cluster of ``nodes`` servers in a new temporary folder,
    with the site added; stopped and removed however it ends."""
    root = Path(tempfile.mkdtemp(prefix="aiot-bench-cloud-js-"))
    try:
        layout = init_cloud(root / "cloud", nodes=nodes, port=0)
        say(f"starting a JetStream cluster of {nodes} nats-server(s), TLS, site {SITE!r}")
        with CloudServers(layout) as servers:
            servers.start_all()
            admin = Creds.load(layout.creds("admin"))
            ensure_buckets(admin, min(3, nodes))
            add_site(layout, SITE)
            yield Cloud(layout, servers, admin)
    except CloudError as exc:
        raise BenchError(f"the cloud: {exc}") from None
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the run ---------------------------------------------------------------------------------


def cloud(
    duration_s: float = 30.0,
    outage_s: float = 120.0,
    devices: int = 48,
    cloud_nodes: int = 3,
    warmup_s: float = 5.0,
    batch_readings: int = BATCH_READINGS,
    window: int = WINDOW,
    generators: int = 1,
    max_rate: float = 80_000.0,
    baseline: bool = True,
    say: rig.Say = rig.quiet,
) -> dict[str, Any]:
    """The export's rate at half the maximum ingest, its device-to-cloud
    latency, the catch-up after an outage, bytes per reading, and the ingest
    rate without the export. One JSON-ready dict."""
    rig.require_mosquitto()
    fleet = Fleet(devices, batch_readings, window, generators)
    s = Settings(duration_s, outage_s, warmup_s, cloud_nodes, max_rate, baseline, fleet)
    with local_cloud(cloud_nodes, say) as c:
        run = rig.on_cluster(
            "aiot-bench-cloud-",
            devices,
            say,
            lambda cl, work, creds: _run(cl, work, creds, s, c, say),
            extra=c.table(),
            with_what=", with the site's [cloud] table",
        )
    base = _baseline(s, say) if baseline else None
    return report(_settings(s), run, base)


def _settings(s: Settings) -> dict[str, Any]:
    f = s.fleet
    return {
        "duration_s": s.duration_s,
        "outage_s": s.outage_s,
        "warmup_s": s.warmup_s,
        "cloud_nodes": s.cloud_nodes,
        "devices": f.devices,
        "batch_readings": f.batch_readings,
        "window": f.window,
        "generators": f.generators,
        "nodes": rig.NODES,
    }


def _run(
    cluster: LocalCluster,
    work: Path,
    creds: list[dict[str, Any]],
    s: Settings,
    c: Cloud,
    say: rig.Say,
) -> Measured:
    """Phases 1 to 4 on the cluster with the [cloud] table."""
    offset = wall_offset()
    f = s.fleet
    with CloudGenerators(work, creds, f.generators, f.batch_readings, f.window) as gens:
        per_dev = f.batches_for(s.max_rate, s.warmup_s + s.duration_s)
        say(f"pre-building {per_dev * f.devices} signed frames ({per_dev} per device)")
        gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
        gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
        pids = {
            **rig.node_pids(cluster),
            **{f"generator-{i}": p for i, p in enumerate(gens.pids)},
            **c.pids(),
        }
        say(f"phase 1: closed loop, {s.warmup_s:g} s warm-up + {s.duration_s:g} s")
        p1 = closed_loop(gens, s.warmup_s, s.duration_s, pids, HUBS)
        if p1["rate"] <= 0:
            raise BenchError("nothing was committed in phase 1: see the hub logs")
        say("letting the export drain")
        drain_s = drain(cluster)
        paced = _paced(cluster, gens, pids, p1["rate"] / 2, s, c, say)
        outage = _outage(cluster, c, s, say)
        stops = gens.call({"cmd": "stop"}, timeout=60)
        say("load stopped; letting the export drain")
        final_drain_s = drain(cluster)
        export = export_status(cluster)
        marks = gens.marks(first=True)
        gens.call({"cmd": "disconnect"})
    say("reading the site's stream back")
    arrivals = read_arrivals(c.admin, SITE, f.batch_readings)
    return Measured(
        p1, drain_s, paced, outage, stops, final_drain_s, export, marks, arrivals, offset
    )


def _paced(
    cluster: LocalCluster,
    gens: CloudGenerators,
    pids: dict[str, int | None],
    half: float,
    s: Settings,
    c: Cloud,
    say: rig.Say,
) -> Paced:
    """Phase 2: paced at ``half``; the load goes on into phase 3."""
    more = s.paced_batches(half)
    say(f"building {more * s.fleet.devices} more frames for phases 2 and 3")
    gens.call({"cmd": "build", "batches": more, "more": True}, timeout=600)
    say(f"phase 2: paced at {half:,.0f} readings/s for {s.duration_s:g} s")
    gens.call({"cmd": "start", "rate": half, "reset": False})
    time.sleep(LATENCY_WARMUP_S)
    name = f"aiot-{SITE}-{cluster.node_id(rig.leader_now(cluster))}"
    b0, m0 = link_bytes(c.layout, name), gens.marks()
    cpu = CpuMeter(pids, HUBS)
    w0 = time.monotonic()
    time.sleep(s.duration_s)
    w1 = time.monotonic()
    usage = cpu.read()
    b1, m1 = link_bytes(c.layout, name), gens.marks()
    # What was published in the window reaches the cloud before the outage
    # starts: no batch of the window waits out the outage in its latency.
    time.sleep(SETTLE_S)
    upto = rig.hub_counters(cluster)["commit_index"]
    t0 = time.monotonic()
    while export_status(cluster)["exported_index"] < upto:
        if time.monotonic() - t0 > DRAIN_TIMEOUT_S:
            raise BenchError(f"the export did not keep up within {DRAIN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return Paced(half, w0, w1, m0, m1, b0, b1, usage)


def _outage(cluster: LocalCluster, c: Cloud, s: Settings, say: rig.Say) -> Outage:
    """Phase 3: the cloud's servers stopped for ``outage_s``, then back."""
    n = len(c.layout.names)
    say(f"phase 3: stopping the {n} cloud server(s) for {s.outage_s:g} s, load going on")
    t_down = time.monotonic()
    for i in range(n):
        c.servers.kill(i, signal.SIGTERM)
    t_stopped = time.monotonic()
    time.sleep(max(0.0, s.outage_s - (t_stopped - t_down)))
    say("starting the cloud servers again on their data")
    t_restart = time.monotonic()
    try:
        c.servers.start_all(timeout=120)
    except CloudError as exc:
        raise BenchError(f"the cloud did not come back: {exc}") from None
    t_up = time.monotonic()
    commit_up = rig.hub_counters(cluster)["commit_index"]
    say(f"catch-up: until the cloud holds every entry up to index {commit_up}")
    deadline = t_up + DRAIN_TIMEOUT_S
    while export_status(cluster)["exported_index"] < commit_up:
        if time.monotonic() > deadline:
            raise BenchError(f"the export did not catch up within {DRAIN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return Outage(t_down, t_stopped, t_restart, t_up, commit_up, time.monotonic() - t_up)


def _baseline(s: Settings, say: rig.Say) -> dict[str, Any]:
    """Phase 5: closed loop on a cluster with no [cloud] table."""

    def run(cluster: LocalCluster, work: Path, creds: list[dict[str, Any]]) -> dict[str, Any]:
        f = s.fleet
        with CloudGenerators(work, creds, f.generators, f.batch_readings, f.window) as gens:
            per_dev = f.batches_for(s.max_rate, s.warmup_s + s.duration_s)
            gens.call({"cmd": "build", "batches": per_dev}, timeout=600)
            gens.call({"cmd": "connect", "hubs": {d["device_id"]: d["hubs"] for d in creds}})
            pids = {
                **rig.node_pids(cluster),
                **{f"generator-{i}": p for i, p in enumerate(gens.pids)},
            }
            say(f"baseline: closed loop, {s.warmup_s:g} s warm-up + {s.duration_s:g} s")
            out = closed_loop(gens, s.warmup_s, s.duration_s, pids, HUBS)
            gens.call({"cmd": "disconnect"})
        return out

    return rig.on_cluster(
        "aiot-bench-cloud-base-", s.fleet.devices, say, run, with_what=", with no [cloud] table"
    )


# -- the hub's side of the export ------------------------------------------------------------


def export_status(cluster: LocalCluster) -> dict[str, Any]:
    """The leader's cloud export status (GET /v1/status's cloud.export)."""
    i = rig.leader_now(cluster)
    st = cluster.status(i).get("cloud")
    if st is None:
        raise BenchError(f"{cluster.node_id(i)} has no [cloud] table")
    out: dict[str, Any] = st["export"]
    return out


def drain(cluster: LocalCluster) -> float:
    """Wait until nothing waits to be exported; the seconds it took."""
    t0 = time.monotonic()
    while export_status(cluster)["first_unexported_index"] != 0:
        if time.monotonic() - t0 > DRAIN_TIMEOUT_S:
            raise BenchError(f"the export did not drain within {DRAIN_TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic() - t0


def wall_offset() -> float:
    """time.time() - time.monotonic(), read as tightly as this process can
    (CLOCK_MONOTONIC is the same in every process of the machine)."""
    best: tuple[float, float] | None = None
    for _ in range(20):
        a = time.monotonic()
        w = time.time()
        b = time.monotonic()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    assert best is not None
    return best[1]


def main(argv: list[str]) -> int:
    """Entry point of the generator processes: `generate`."""
    if argv[:1] == ["generate"]:
        asyncio.run(serve(CloudGenerator))
        return 0
    print("usage: python -m tools.bench.cloud generate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
