"""Reading a site's exports back out of the cloud (`aiot cloud query`).

The readings of a site (or of one device) come from the site's stream in
stream order, through an ephemeral pull consumer filtered on their subject.
Each message is decoded with protocol/cloud.py; a ``(device, seq)`` that
comes twice is a duplicate, and a seq the export skipped is a gap: both are
counted, so the same read serves a person and the exactly-once checks.

``hourly`` turns the same read into energy per UTC hour of a day, per device
and for the site, from the energy counter readings (sensor 1, Wh), computed
the way each hub computes its rollups (hub/state/rollups.py: the counter's
increase between consecutive readings by time, a decrease being a reset,
spread over the time between them and split at hour bounds, summed in
nano-Wh, on the same 32-bit values), so a device's hours equal the hub's
``/v1/devices/{id}/energy`` for the readings the cloud holds.
"""

from __future__ import annotations

import itertools
import struct
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from hub.state import rollups
from protocol import cloud
from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import REQUEST_S, connect, run_within

_BATCH = 512


@dataclass
class SiteReadings:
    site: str
    messages: int = 0
    rows: dict[str, dict[int, cloud.Row]] = field(default_factory=dict)  # device -> seq -> row
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # messages that did not decode

    def add(self, found: cloud.Readings) -> None:
        rows = self.rows.setdefault(found.device_id, {})
        for row in found.rows:
            if row[0] in rows:
                self.duplicates.setdefault(found.device_id, []).append(row[0])
            rows[row[0]] = row

    def gaps(self, device_id: str) -> list[tuple[int, int]]:
        """Seq ranges missing between the device's first and last seq."""
        seqs = sorted(self.rows.get(device_id, {}))
        return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b > a + 1]


async def _read(
    creds: Creds,
    site: str,
    subject: str,
    take: Callable[[Any], None],
    stream: str = "",
    deliver: DeliverPolicy = DeliverPolicy.ALL,
) -> None:
    """Every message of the site's stream (or ``stream``) on ``subject`` (a
    filter), in stream order; with ``LAST_PER_SUBJECT``, the newest of each
    subject. A site with no such stream is an error only for its own stream."""
    own = not stream
    stream = stream or cloud.stream_name(site)
    nc = await connect(creds)
    try:
        js = nc.jetstream(timeout=REQUEST_S)
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            if not own:
                return
            raise CloudError(f"the cloud has no stream {stream}: is site {site} added?") from None
        if not info.state.messages:
            return
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=deliver),
        )
        try:
            await _drain(sub, take)
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


async def _drain(sub: Any, take: Callable[[Any], None]) -> None:
    while True:
        try:
            msgs = await sub.fetch(_BATCH, timeout=2)
        except nats.errors.TimeoutError:
            return  # nothing (more) on the subject
        for msg in msgs:
            take(msg)
        if msgs and msgs[-1].metadata.num_pending == 0:
            return


def _run(site: str, device: str | None, timeout: float, work: Coroutine[Any, Any, None]) -> None:
    try:
        cloud.check_site(site)
        if device is not None:
            cloud.token(device)
    except ValueError as exc:
        work.close()
        raise CloudError(str(exc)) from None
    run_within(work, timeout, f"reading site {site}")


def read_readings(
    creds: Creds, site: str, device: str | None = None, timeout: float = 300.0
) -> SiteReadings:
    out = SiteReadings(site)

    def take(msg: Any) -> None:
        out.messages += 1
        try:
            out.add(cloud.decode_readings(msg.data))
        except cloud.CloudFormatError as exc:
            out.bad.append(f"{msg.subject}: {exc}")

    subject = f"aiot.{site}.readings.>" if device is None else _subject(site, "readings", device)
    _run(site, device, timeout, _read(creds, site, subject, take))
    return out


def read_health(creds: Creds, site: str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The newest health report of each node of ``site`` (hub/link/cloudhealth.py),
    by node id; empty when the site has none (or no health stream)."""
    out: dict[str, dict[str, Any]] = {}

    def take(msg: Any) -> None:
        try:
            body = cloud.decode(msg.data)
        except cloud.CloudFormatError:
            return
        out[str(body.get("node"))] = body

    health = cloud.health_stream_name(site)
    subject = f"aiot.{site}.health.>"
    work = _read(creds, site, subject, take, health, DeliverPolicy.LAST_PER_SUBJECT)
    _run(site, None, timeout, work)
    return dict(sorted(out.items()))


EVENT_KINDS = ("decisions", "commands", "alerts", "devices")


def check_event_kind(kind: str) -> None:
    if kind not in EVENT_KINDS:
        raise CloudError(f"--kind {kind!r}: want one of {', '.join(EVENT_KINDS)}")


def read_events(
    creds: Creds, site: str, kind: str, device: str | None = None, timeout: float = 300.0
) -> list[dict[str, Any]]:
    """The site's events of one kind (decisions, commands, alerts, devices)
    in stream order, each with its ``seq`` in the stream; a message that does
    not decode comes as ``{"bad": reason, "subject": ...}``."""
    check_event_kind(kind)
    out: list[dict[str, Any]] = []

    def take(msg: Any) -> None:
        try:
            body = cloud.decode(msg.data)
        except cloud.CloudFormatError as exc:
            out.append({"bad": str(exc), "subject": msg.subject})
            return
        out.append({**body, "stream_seq": msg.metadata.sequence.stream})

    subject = f"aiot.{site}.{kind}.>" if device is None else _subject(site, kind, device)
    _run(site, device, timeout, _read(creds, site, subject, take))
    return out


def _subject(site: str, kind: str, device: str) -> str:
    try:
        return cloud.subject(site, kind, device)
    except ValueError as exc:
        raise CloudError(str(exc)) from None


def summary(found: SiteReadings) -> dict[str, Any]:
    """Per device: readings, first and last seq, gaps, duplicates."""
    devices: dict[str, Any] = defaultdict(dict)
    for device, rows in sorted(found.rows.items()):
        seqs = sorted(rows)
        devices[device] = {
            "readings": len(rows),
            "first_seq": seqs[0],
            "last_seq": seqs[-1],
            "gaps": found.gaps(device),
            "duplicates": sorted(found.duplicates.get(device, [])),
        }
    return {
        "site": found.site,
        "messages": found.messages,
        "devices": dict(devices),
        "bad_messages": found.bad,
    }


HOUR_MS = 3_600_000
_F32 = struct.Struct(">f")


def hourly(found: SiteReadings, day: date) -> dict[str, Any]:
    """Energy (Wh) per UTC hour of ``day``: the site's, and each device's
    that has energy counter readings in the cloud (see the module's docstring)."""
    first_hour = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) // 3600
    devices: dict[str, Any] = {}
    site = [0] * 24
    for device, rows in sorted(found.rows.items()):
        points = sorted(
            (ts, seq, _f32(value))
            for seq, ts, sensor, value in rows.values()
            if sensor == rollups.ENERGY_WH_SENSOR
        )
        if not points:
            continue
        nwh = [0] * 24
        for (a_ts, _, a_v), (b_ts, _, b_v) in itertools.pairwise(points):
            if b_ts < first_hour * HOUR_MS or a_ts >= (first_hour + 24) * HOUR_MS:
                continue  # a pair outside the day
            for h, wh in rollups.energy_shares(a_ts, a_v, b_ts, b_v):
                if 0 <= h - first_hour < 24:
                    nwh[h - first_hour] += round(wh * rollups.NANO)
        site = [a + b for a, b in zip(site, nwh, strict=True)]
        devices[device] = {
            "wh": round(sum(nwh) / rollups.NANO, 6),
            "hours": _hours(first_hour, nwh),
        }
    return {
        "site": found.site,
        "day": day.isoformat(),
        "wh": round(sum(site) / rollups.NANO, 6),
        "hours": _hours(first_hour, site),
        "devices": devices,
        "messages": found.messages,
        "bad_messages": found.bad,
    }


def _f32(value: float) -> float:
    """The 32-bit float the hub stored: the cloud carries its shortest decimal
    (protocol/cloud.py ``f32``), which reads back as the same float."""
    return float(_F32.unpack(_F32.pack(value))[0])


def _hours(first_hour: int, nwh: list[int]) -> list[dict[str, Any]]:
    return [
        {"start_ms": (first_hour + i) * HOUR_MS, "wh": round(n / rollups.NANO, 6)}
        for i, n in enumerate(nwh)
    ]
