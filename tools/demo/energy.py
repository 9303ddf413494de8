"""`aiot demo`: a hub cluster, simulated smart plugs and the energy scenario.

    aiot demo [--hubs 3] [--devices 6] [--duration S] [--json] [--fresh]

Everything is real: each hub is an `aiot hub run` process with its own broker
(Mosquitto where it is installed, the embedded amqtt broker otherwise), each
device is the firmware (firmware/main.py) in its own MicroPython process (or
CPython when the interpreter is missing, said at start), provisioned through
the API. The plugs simulate appliance load curves with an overconsumption
event about every 30 s; the hubs' rules switch them off or alert.

The demo keeps its state in ``--dir`` (default ``.aiot-demo``) between runs;
``--fresh`` starts empty. ``demo.json`` there holds what a client needs:
each hub's HTTP URL and broker port, the monitoring MQTT login (reads
``aiot/v1/#``), an admin token (valid for a day, written at every start)
and the dashboard login.

Every hub's ``/metrics`` is scraped once the hubs are up and again at the
end (after the plugs stop), and parsed with prometheus-client's parser; the
summary's ``metrics`` holds each counter's increase over the demo, summed over
the hubs and the labels.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hub.core import auth
from hub.link.broker import find_mosquitto
from tools.base.errors import ToolError
from tools.base.hubclient import HubClient, HubError
from tools.base.paths import ROOT
from tools.lab.cluster import ClusterError, LocalCluster
from tools.lab.device import Device, edge_runtime

Say = Callable[[str], None]
DASHBOARD_USER = "admin"
DEMO_TOKEN_TTL_S = 86_400  # the admin token in demo.json

# Demo devices: fast enough to see things move, slow enough for 2 cores.
DEVICE_TUNING: dict[str, Any] = {
    "sample_ms": 500,
    "flush_ms": 1000,
    "status_ms": 5000,
    "keepalive_s": 10,
    "ack_timeout_ms": 3000,
    "failover_after_ms": 10000,
    "event_every_s": 30,
}


class DemoError(ToolError):
    pass


# (sample name, sorted labels) -> value, for one hub's counters.
CounterSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MetricsError(RuntimeError):
    pass


def scrape_counters(
    url: str, timeout: float = 10.0, verify: ssl.SSLContext | bool = True
) -> tuple[set[str], CounterSamples]:
    """One hub's counters from its /metrics (no token), parsed with
    prometheus-client's parser: the ``_total`` names of every counter family
    it declares (samples or not yet), and each ``_total`` sample's value."""
    try:
        r = httpx.get(f"{url}/metrics", timeout=timeout, verify=verify)
    except httpx.HTTPError as exc:
        raise MetricsError(f"not reachable: {exc}") from None
    if r.status_code != 200:
        raise MetricsError(f"answered {r.status_code}")
    names: set[str] = set()
    samples: CounterSamples = {}
    try:
        for fam in text_string_to_metric_families(r.text):
            if fam.type != "counter":
                continue
            total = fam.name + "_total"
            names.add(total)
            for s in fam.samples:
                if s.name == total:  # not _created
                    samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    except Exception as exc:  # the parser raises ValueError and others on bad text
        raise MetricsError(f"did not parse as Prometheus text: {exc!r}") from None
    if not names:
        raise MetricsError("declares no counter")
    return names, samples


def counter_deltas(
    start: dict[str, tuple[set[str], CounterSamples]],
    end: dict[str, tuple[set[str], CounterSamples]],
) -> dict[str, int | float]:
    """Each counter's increase from ``start`` to ``end`` (node -> scrape),
    summed over the nodes scraped both times and over the labels. A series
    lower at the end restarted from zero, so its end value is its increase."""
    names: set[str] = set()
    for n, _ in (*start.values(), *end.values()):
        names |= n
    out = dict.fromkeys(sorted(names), 0.0)
    for node in start.keys() & end.keys():
        before = start[node][1]
        for key, value in end[node][1].items():
            was = before.get(key, 0.0)
            out[key[0]] += value - was if value >= was else value
    return {k: int(v) if v.is_integer() else round(v, 3) for k, v in out.items()}


class Demo:
    def __init__(
        self,
        root: Path,
        hubs: int = 3,
        devices: int = 6,
        fresh: bool = False,
        say: Say = print,
    ) -> None:
        self.root = root.resolve()  # the plugs run in their own directories
        self.n_hubs = hubs
        self.n_devices = devices
        self.fresh = fresh
        self.say = say
        self.broker = "mosquitto" if find_mosquitto() else "embedded"
        self.runtime = edge_runtime()
        self.cluster: LocalCluster | None = None
        self.devices: list[Device] = []
        self.errors: list[str] = []
        self.acked: dict[str, int] = {}
        self.devices_stopped = False
        self.metrics_start: dict[str, tuple[set[str], CounterSamples]] = {}
        self.metrics: dict[str, int | float] = {}

    # -- setup ------------------------------------------------------------------------

    def start(self) -> None:
        if self.fresh and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        say = self.say
        broker_name = "Mosquitto" if self.broker == "mosquitto" else "the embedded amqtt broker"
        why = "" if self.broker == "mosquitto" else " (Mosquitto is not installed)"
        say(f"starting {self.n_hubs} hub nodes, each with {broker_name}{why}")
        croot = self.root / "cluster"
        if (croot / "hub-1.toml").exists():
            cluster = LocalCluster.reopen(croot, new_session=True)
            if cluster.n != self.n_hubs:
                raise DemoError(f"{croot} holds {cluster.n} hubs; use --fresh to start over")
        else:
            rules = ROOT / "models" / "rules" / "energy.toml"
            extra = f'[rules]\nfiles = ["{rules}"]\n'
            # Hubs and plugs in their own sessions: a terminal's Ctrl-C reaches
            # the demo alone, which then stops the plugs and the hubs in order.
            # Should the demo die without stopping them (kill -9), each gets
            # SIGTERM (hub/core/procs.py die_with_parent).
            cluster = LocalCluster(
                croot,
                self.n_hubs,
                broker=self.broker,
                extra=extra,
                llm=True,
                new_session=True,
                tls=True,  # MQTT over TLS and HTTPS, with the cluster's own CA in tls/
            )
        self.cluster = cluster
        try:
            cluster.start(120)
        except ClusterError as exc:
            raise DemoError(f"the hubs did not come up: {exc} (try --fresh)") from None
        say(f"hub cluster up: leader {cluster.node_id(cluster.leader())}")
        self.metrics_start = self.scrape_metrics("start")
        client = cluster.any_client()
        password = self._dashboard_user(client)
        runtime = "MicroPython" if self.runtime == "micropython" else "CPython"
        note = "" if self.runtime == "micropython" else " (the MicroPython interpreter is missing)"
        say(f"starting {self.n_devices} simulated smart plugs on {runtime}{note}")
        known = {d["device_id"] for d in client.get("/v1/devices")}
        for k in range(1, self.n_devices + 1):
            device_id = f"plug-{k}"
            if device_id in known:
                secrets_cfg = client.get(f"/v1/devices/{device_id}/config")
            else:
                secrets_cfg = client.post(
                    "/v1/devices", {"device_id": device_id, "limit_w": 2000.0, "owner": "demo"}
                )
            dev = Device(
                self.root / "devices" / device_id,
                {**secrets_cfg, **DEVICE_TUNING},
                runtime=self.runtime,
                new_session=True,
            )
            self.devices.append(dev.start())
        self._write_demo_json(password)
        say(f"dashboard: {cluster.url(0)}/  login: {DASHBOARD_USER} / {password}")
        if cluster.ca_pem is not None:
            say(
                f"  (HTTPS with the cluster's own CA {cluster.ca_pem}: the browser warns until "
                "you trust it or accept the certificate)"
            )
        say(f"everything a client needs: {self.root / 'demo.json'}")

    def _dashboard_user(self, client: HubClient) -> str:
        path = self.root / "dashboard.password"
        if path.exists():
            password = path.read_text().strip()
        else:
            password = secrets.token_urlsafe(12)
            path.write_text(password + "\n")
            path.chmod(0o600)
        body = {"role": "admin", "password": password}
        client.request("PUT", f"/v1/users/{DASHBOARD_USER}", json=body)
        return password

    def _write_demo_json(self, password: str) -> None:
        assert self.cluster is not None
        c = self.cluster
        secret = (c.root / "cluster.secret").read_text().strip()
        doc = {
            "hubs": [
                {
                    "node_id": c.node_id(i),
                    "http": c.url(i),
                    "broker_port": p.broker,
                    "raft": f"127.0.0.1:{p.raft}",
                    "config": str(c.configs[i]),
                }
                for i, p in enumerate(c.ports)
            ],
            "broker": "mosquitto" if self.broker == "mosquitto" else "amqtt",
            "tls": None if c.ca_pem is None else {"ca": str(c.ca_pem)},
            "monitor": {"user": auth.MONITOR_USER, "password": auth.monitor_password(secret)},
            # Good for a day of demo; `aiot token create -c CONFIG` mints another.
            "admin_token": auth.admin_token(secret, DEMO_TOKEN_TTL_S),
            "dashboard": {"user": DASHBOARD_USER, "password": password},
            "devices": [d.config["device_id"] for d in self.devices],
            "edge_runtime": self.runtime,
        }
        path = self.root / "demo.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.chmod(0o600)

    # -- running ------------------------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        """What the cluster holds now (through the API)."""
        assert self.cluster is not None
        client = self.cluster.any_client()
        rows = client.get("/v1/devices")
        committed = sum(r["watermark"] for r in rows)
        online = sum(1 for r in rows if r["online"])
        done_ids: set[str] = set()
        for r in rows:
            done_ids |= {
                c["command_id"]
                for c in client.get("/v1/commands", device=r["device_id"])
                if c["state"] == "DONE"
            }
        by_tier: Counter[str] = Counter()
        done_by_tier: Counter[str] = Counter()  # executed commands, by the tier that issued them
        alerts = 0
        try:
            for d in client.get("/v1/decisions", limit=10_000):
                by_tier[d["tier"]] += 1
                alerts += bool(d.get("alert"))
                if d.get("command_id") in done_ids:
                    done_by_tier[d["tier"]] += 1
        except HubError as exc:
            if exc.status != 404:
                raise
        return {
            "readings_committed": committed,
            "devices_online": online,
            "commands_executed": len(done_ids),
            "commands_executed_by_tier": dict(done_by_tier),
            "decisions_by_tier": dict(by_tier),
            "alerts": alerts,
        }

    def scrape_metrics(self, when: str) -> dict[str, tuple[set[str], CounterSamples]]:
        """Every hub's counters (node id -> scrape); a failure goes to errors."""
        assert self.cluster is not None
        c = self.cluster
        out: dict[str, tuple[set[str], CounterSamples]] = {}
        for i in range(c.n):
            node = c.node_id(i)
            try:
                out[node] = scrape_counters(c.url(i), verify=c.verify)
            except MetricsError as exc:
                self.errors.append(f"metrics at the {when}: {node} /metrics {exc}")
        return out

    def finish_metrics(self) -> None:
        """Scrape the hubs again; the counters' increases go to the summary."""
        end = self.scrape_metrics("end")
        self.metrics = counter_deltas(self.metrics_start, end)
        moved = [f"{k} +{v}" for k, v in self.metrics.items() if v > 0]
        still = [k for k, v in self.metrics.items() if not v > 0]
        self.say(
            f"counters moved on the hubs' /metrics: {', '.join(moved) or 'none'}"
            + (f"; unchanged: {', '.join(still)}" if still else "")
        )

    def run(self, duration: float | None, every_s: float = 5.0) -> None:
        """Until ``duration`` passes (None: until Ctrl-C), a line every few seconds."""
        stop = {"now": False}

        def interrupted(*_: object) -> None:
            stop["now"] = True

        old = signal.signal(signal.SIGINT, interrupted)
        try:
            t0 = time.monotonic()
            next_line = t0 + every_s
            while not stop["now"] and (duration is None or time.monotonic() - t0 < duration):
                time.sleep(0.2)
                for d in self.devices:
                    if d.proc is not None and d.proc.poll() is not None:
                        self.errors.append(f"{d.config['device_id']} exited {d.proc.returncode}")
                        d.start()  # the plug reboots, its flash is intact
                if time.monotonic() >= next_line:
                    next_line += every_s
                    try:
                        p = self.progress()
                    except (HubError, ClusterError) as exc:
                        self.say(f"  (status unavailable: {exc})")
                        continue
                    self.say(
                        f"  t={time.monotonic() - t0:5.0f}s  readings {p['readings_committed']:>8}"
                        f"  online {p['devices_online']}/{len(self.devices)}"
                        f"  alerts {p['alerts']}  commands done {p['commands_executed']}"
                    )
        finally:
            signal.signal(signal.SIGINT, old)

    def stop(self) -> None:
        if not self.devices_stopped:
            self.stop_devices()
        if self.cluster is not None:
            self.cluster.stop()

    def stop_devices(self) -> None:
        for d in self.devices:
            try:
                stats = d.interrupt(30)
                self.acked[d.config["device_id"]] = int(stats.get("watermark", 0))
            except Exception as exc:
                self.errors.append(f"{d.config['device_id']}: {exc}")
                d.kill()
        self.devices_stopped = True

    def summary(self, final: dict[str, Any]) -> dict[str, Any]:
        return {
            "hubs": self.n_hubs,
            "devices": self.n_devices,
            "broker": "mosquitto" if self.broker == "mosquitto" else "amqtt",
            "edge_runtime": self.runtime,
            "readings_committed": final.get("readings_committed", 0),
            "readings_acked_by_devices": sum(self.acked.values()),
            "commands_executed": final.get("commands_executed", 0),
            "commands_executed_by_tier": final.get("commands_executed_by_tier", {}),
            "decisions_by_tier": final.get("decisions_by_tier", {}),
            "alerts": final.get("alerts", 0),
            "metrics": self.metrics,
            "errors": self.errors,
        }


def run_demo(
    root: Path,
    hubs: int,
    devices: int,
    duration: float | None,
    fresh: bool,
    say: Say,
) -> dict[str, Any]:
    demo = Demo(root, hubs, devices, fresh, say)
    final: dict[str, Any] = {}
    try:
        demo.start()
        demo.run(duration)
        say("stopping the devices")
        demo.stop_devices()  # their last acks are in before the final count
        try:
            final = demo.progress()
        except (HubError, ClusterError) as exc:
            demo.errors.append(f"final status: {exc}")
        demo.finish_metrics()
    finally:
        say("stopping the hubs")
        demo.stop()
    return demo.summary(final)
