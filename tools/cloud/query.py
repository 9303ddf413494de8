"""Reading a site's exports back out of the cloud (`aiot cloud query`).

The readings of a site (or of one device) come from the site's stream in
stream order, through an ephemeral pull consumer filtered on their subject.
Each message is decoded with protocol/cloud.py; a ``(device, seq)`` that
comes twice is a duplicate, and a seq the export skipped is a gap: both are
counted, so the same read serves a person and the exactly-once checks.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from protocol import cloud
from tools.cloud.cluster import CloudError, Creds
from tools.cloud.status import connect

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


async def _read(creds: Creds, site: str, device: str | None) -> SiteReadings:
    stream = cloud.stream_name(site)
    subject = cloud.subject(site, "readings", device) if device else f"aiot.{site}.readings.>"
    out = SiteReadings(site)
    nc = await connect(creds)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise CloudError(f"the cloud has no stream {stream}: is site {site} added?") from None
        if not info.state.messages:
            return out
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        try:
            await _drain(sub, out)
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return out


async def _drain(sub: Any, out: SiteReadings) -> None:
    while True:
        try:
            msgs = await sub.fetch(_BATCH, timeout=2)
        except nats.errors.TimeoutError:
            return  # nothing (more) on the subject
        for msg in msgs:
            out.messages += 1
            try:
                out.add(cloud.decode_readings(msg.data))
            except cloud.CloudFormatError as exc:
                out.bad.append(f"{msg.subject}: {exc}")
        if msgs and msgs[-1].metadata.num_pending == 0:
            return


def read_readings(
    creds: Creds, site: str, device: str | None = None, timeout: float = 300.0
) -> SiteReadings:
    try:
        cloud.check_site(site)
        if device is not None:
            cloud.token(device)
    except ValueError as exc:
        raise CloudError(str(exc)) from None
    try:
        return asyncio.run(asyncio.wait_for(_read(creds, site, device), timeout))
    except TimeoutError:
        raise CloudError(f"reading site {site} took over {timeout:.0f} s") from None


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
