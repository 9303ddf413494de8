"""What the checks of a chaos campaign read once the campaign is over: every
reading each node stores, each device's history and flash, the content
hashes, and the hubs' alert lines.

    stored_readings(cluster, i, "plug-01")   # [Reading(seq, ts_ms, sensor, value), ...]
    device_history(device, "plug-01", final) # DeviceHistory, flash readings included
    content_hashes(cluster, 90.0, [0, 1, 2]) # node id -> hash (None: no answer)
    log_alerts(cluster)                      # node id -> level -> lines

A device's flash is read on CPython with the device's own code (edge/meta.py,
edge/slots.py), from a copy of its data directory: opening a store may cut a
torn tail, and the original stays as the device left it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from edge.meta import Meta
from edge.slots import SlotStore
from tools.base.hubclient import HubClient, HubError
from tools.chaos import ChaosError
from tools.chaos.checks import DeviceHistory, Reading, parse_history
from tools.lab.cluster import LocalCluster
from tools.lab.device import Device

ALERT_LEVELS: Final = ("critical", "error")
_FLASH_FILES: Final = ("meta.a", "meta.b", "slot.a", "slot.b")


def stored_readings(cluster: LocalCluster, i: int, device_id: str) -> list[Reading]:
    """Every reading node i stores for the device (time ranges are split
    until none is truncated); none when the node does not know the device
    (a node that never caught up: L reports what it misses)."""
    # Reading a large store takes a while on a busy machine.
    client = HubClient.from_config(cluster.configs[i], timeout=60.0)
    out: list[Reading] = []
    try:
        todo = [(0, 2**62)]
        while todo:
            lo, hi = todo.pop()
            try:
                got = client.get(
                    f"/v1/devices/{device_id}/readings", from_ms=lo, to_ms=hi, limit=100_000
                )
            except HubError as exc:
                if exc.status == 404 and "no device" in str(exc):
                    return []
                raise
            if got["truncated"] and hi - lo > 1:
                mid = (lo + hi) // 2
                todo += [(lo, mid), (mid, hi)]
                continue
            if got["truncated"]:
                raise ChaosError(f"more than 100000 readings of {device_id} in one ms")
            out.extend(
                Reading(int(r["seq"]), int(r["ts_ms"]), int(r["sensor"]), float(r["value"]))
                for r in got["readings"]
            )
    finally:
        client.close()
    return out


def device_history(device: Device, device_id: str, final: dict[str, Any] | None) -> DeviceHistory:
    """The device's history.log, completed by its final counters (``final``,
    None if it printed none) and by what its flash holds: the metadata's
    watermark, floor and dropped count, and the readings still stored."""
    data = Path(device.config["data_dir"])
    path = data / "history.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    h = parse_history(device_id, text)
    if final is not None:
        h.watermark = max(h.watermark, int(final.get("watermark", 0)))
        h.dropped = int(final.get("dropped", 0))
    if not data.is_dir():
        return h
    with tempfile.TemporaryDirectory(prefix="aiot-flash-") as tmp:
        for name in _FLASH_FILES:
            if (data / name).exists():
                shutil.copyfile(data / name, Path(tmp) / name)
        meta = Meta(tmp)
        h.watermark = max(h.watermark, meta.watermark)
        h.floor = meta.floor
        h.dropped = max(h.dropped, meta.dropped)
        h.recorded = _flash_readings(tmp, meta, device.config)
    return h


def _flash_readings(directory: str, meta: Any, config: dict[str, Any]) -> dict[int, Reading]:
    """The readings in the slot store in ``directory``, by sequence number."""
    store = SlotStore(
        directory,
        meta,
        capacity=int(config["slot_capacity"]),
        record_bytes=int(config["record_bytes"]),
    )
    out: dict[int, Reading] = {}

    def emit(seq: int, sensor: int, ts_ms: int, value: float) -> None:
        out[seq] = Reading(seq, ts_ms, sensor, value)

    # A scan stops at a gap in the numbers (those reserved before a power
    # cut); the next one starts past it.
    try:
        start = 1
        while store.scan(start, 1 << 30, emit):
            start = max(out) + 1
    finally:
        store.close()
    return out


def content_hashes(
    cluster: LocalCluster, limit_s: float, nodes: list[int]
) -> dict[str, str | None]:
    """The content hash of each of ``nodes`` (indexes), polled until all are
    equal or ``limit_s`` has passed (None: the node did not answer)."""
    # Hashing a large store takes a while on a busy machine.
    clients = {i: HubClient.from_config(cluster.configs[i], timeout=60.0) for i in nodes}
    deadline = time.monotonic() + limit_s
    hashes: dict[str, str | None] = {}
    try:
        while time.monotonic() < deadline:
            hashes = {}
            for i, client in clients.items():
                try:
                    st = client.get("/v1/status", hash="true")
                    hashes[cluster.node_id(i)] = str(st["content_hash"])
                except (HubError, KeyError):
                    hashes[cluster.node_id(i)] = None
            if len(set(hashes.values())) == 1 and None not in hashes.values():
                return hashes
            time.sleep(1.0)
    finally:
        for client in clients.values():
            client.close()
    return hashes


def log_alerts(cluster: LocalCluster) -> dict[str, dict[str, list[str]]]:
    """Critical and error lines of each hub's log (observations for the
    record, not violations: the checks judge the outcome)."""
    out: dict[str, dict[str, list[str]]] = {}
    for i in range(cluster.n):
        if not cluster.log_path(i).exists():  # a spare never started
            continue
        found: dict[str, list[str]] = {level: [] for level in ALERT_LEVELS}
        with contextlib.suppress(OSError):
            for line in cluster.log_path(i).read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    rec = json.loads(line)
                    if rec.get("level") in found:
                        found[rec["level"]].append(f"{rec.get('ts')} {rec.get('msg')}"[:300])
        out[cluster.node_id(i)] = found
    return out
