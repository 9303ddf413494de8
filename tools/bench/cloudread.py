"""`aiot bench cloud`'s view from the cloud side: the site's stream read back,
and the bytes on the exporter's link.

- ``read_arrivals``: every readings message of the site's stream, in stream
  order, through a pull consumer with the admin login. Each message keeps
  the time JetStream stored it (the stream leader's wall clock, in the
  message's metadata), its Raft index, its readings and its payload size;
  every batch whose last reading it carries is noted (device, batch number,
  stored time) for the device-to-cloud latency; and each device's readings
  are counted by sequence number (duplicates and gaps).
- ``link_bytes``: the exporter's connection to the cloud, as the server
  sees it (``/connz``: the bytes of the messages it published, headers
  included) and as the kernel sees it on the hub's side (``ss``'s
  ``tcp_info``: the bytes the socket sent and got acknowledged, TLS
  included).
"""

from __future__ import annotations

import array
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Final

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from protocol import cloud
from tools.bench.codec import BenchError
from tools.cloud.cluster import CloudError, CloudLayout, Creds, get_json
from tools.cloud.status import REQUEST_S, connect, run_within

FETCH: Final = 2000  # messages per pull


@dataclass(slots=True)
class Arrivals:
    """The site's readings messages as the cloud stored them."""

    batch_readings: int
    ts: array.array[float] = field(default_factory=lambda: array.array("d"))  # stored, wall s
    index: array.array[int] = field(default_factory=lambda: array.array("q"))  # Raft index
    rows: array.array[int] = field(default_factory=lambda: array.array("q"))  # readings
    size: array.array[int] = field(default_factory=lambda: array.array("q"))  # payload bytes
    # (stored time, device, batch number) of every batch's last reading
    ends: list[tuple[float, str, int]] = field(default_factory=list)
    seen: dict[str, bytearray] = field(default_factory=dict)  # device: count per seq
    bad: list[str] = field(default_factory=list)

    def take(self, stored: float, subject: str, data: bytes) -> None:
        try:
            body = cloud.decode(data)
            device, seq0 = str(body["device"]), int(body["seq0"])
            seqs = [seq0 + int(r[0]) for r in body["rows"]]
        except (cloud.CloudFormatError, KeyError, TypeError, ValueError, IndexError) as exc:
            self.bad.append(f"{subject}: {exc}")
            return
        self.ts.append(stored)
        self.index.append(int(body["index"]))
        self.rows.append(len(seqs))
        self.size.append(len(data))
        counts = self.seen.setdefault(device, bytearray())
        top = max(seqs, default=0)
        if top >= len(counts):
            counts.extend(bytes(top + 1 - len(counts) + 4096))
        n = self.batch_readings
        for seq in seqs:
            counts[seq] = min(255, counts[seq] + 1)
            if seq % n == 0:
                self.ends.append((stored, device, seq // n - 1))

    def readings_between(self, t0: float, t1: float) -> tuple[int, int, int]:
        """(readings, payload bytes, messages) stored in [t0, t1)."""
        picked = [i for i, t in enumerate(self.ts) if t0 <= t < t1]
        return sum(self.rows[i] for i in picked), sum(self.size[i] for i in picked), len(picked)

    def coverage(self, marks: dict[str, tuple[int, int]]) -> dict[str, int]:
        """For each device's (after, upto] range of sequence numbers: how many
        are in the stream, missing, or there more than once, summed."""
        have = missing = dup = 0
        for device, (lo, hi) in marks.items():
            counts = self.seen.get(device, bytearray())
            for seq in range(lo + 1, hi + 1):
                c = counts[seq] if seq < len(counts) else 0
                have += c > 0
                missing += c == 0
                dup += max(0, c - 1)
        return {"in_cloud": have, "missing": missing, "duplicates": dup}

    def totals(self) -> dict[str, int]:
        """Distinct readings in the stream, and readings stored more than once."""
        distinct = sum(sum(1 for c in counts if c) for counts in self.seen.values())
        dup = sum(sum(c - 1 for c in counts if c > 1) for counts in self.seen.values())
        return {"distinct": distinct, "duplicates": dup, "messages": len(self.ts)}


def read_arrivals(admin: Creds, site: str, batch_readings: int, timeout: float = 900.0) -> Arrivals:
    """Every readings message of ``site``'s stream (see Arrivals)."""
    out = Arrivals(batch_readings)
    try:
        run_within(_read(admin, site, out), timeout, "reading the stream back")
    except CloudError as exc:
        raise BenchError(str(exc)) from None
    return out


async def _read(admin: Creds, site: str, out: Arrivals) -> None:
    nc = await connect(admin, name="aiot-bench-reader")
    try:
        js = nc.jetstream(timeout=REQUEST_S)
        sub = await js.pull_subscribe(
            f"aiot.{site}.readings.>",
            stream=cloud.stream_name(site),
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(FETCH, timeout=3)
                except nats.errors.TimeoutError:
                    return
                for msg in msgs:
                    out.take(msg.metadata.timestamp.timestamp(), msg.subject, msg.data)
                if msgs and msgs[-1].metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


# -- bytes on the link -----------------------------------------------------------------------


def exporter_conn(layout: CloudLayout, name: str) -> dict[str, Any] | None:
    """The client connection called ``name`` on any server of ``layout``
    (``/connz``): server, cid, the client's port, in_bytes, in_msgs."""
    for i, server in enumerate(layout.names):
        try:
            doc = get_json(f"{layout.monitor_url(i)}/connz?limit=4096", timeout=5.0)
        except (OSError, ValueError):
            continue
        for c in doc.get("connections") or []:
            if c.get("name") == name:
                return {
                    "server": server,
                    "cid": c["cid"],
                    "port": c["port"],
                    "in_bytes": c["in_bytes"],
                    "in_msgs": c["in_msgs"],
                    "out_bytes": c["out_bytes"],
                }
    return None


_TCP = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


def tcp_bytes(local_port: int) -> dict[str, int] | None:
    """bytes_acked (sent) and bytes_received of the socket whose local port is
    ``local_port`` (the hub's end of its link to the cloud), from ``ss``."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run(
            [ss, "-tinH", "state", "established", f"( sport = :{local_port} )"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    got = {k: int(v) for k, v in _TCP.findall(out)}
    return got if len(got) == 2 else None


def link_bytes(layout: CloudLayout, name: str) -> dict[str, Any] | None:
    """The exporter connection's counters now (exporter_conn, with ``tcp``)."""
    conn = exporter_conn(layout, name)
    if conn is not None:
        conn["tcp"] = tcp_bytes(int(conn["port"]))
    return conn


def bytes_report(
    before: dict[str, Any] | None, after: dict[str, Any] | None, readings: int
) -> dict[str, Any]:
    """The link's bytes over a window, per reading exported in it; None where
    the connection changed in between or a counter could not be read."""
    same = before is not None and after is not None and before["cid"] == after["cid"]
    if not same or readings <= 0:
        why = "the exporter's connection changed or was not found" if not same else "no readings"
        return {"nats_bytes_per_reading": None, "tcp_bytes_per_reading": None, "why": why}
    assert before is not None and after is not None
    nats_in = after["in_bytes"] - before["in_bytes"]
    out: dict[str, Any] = {
        "server": after["server"],
        "nats_in_bytes": nats_in,
        "nats_in_msgs": after["in_msgs"] - before["in_msgs"],
        "nats_bytes_per_reading": round(nats_in / readings, 3),
        "tcp_bytes_per_reading": None,
    }
    t0, t1 = before.get("tcp"), after.get("tcp")
    if t0 and t1:
        sent = t1["bytes_acked"] - t0["bytes_acked"]
        out["tcp_bytes_sent"] = sent
        out["tcp_bytes_received"] = t1["bytes_received"] - t0["bytes_received"]
        out["tcp_bytes_per_reading"] = round(sent / readings, 3)
    return out
