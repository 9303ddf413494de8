"""The checks of a chaos campaign: pure functions over what was recorded
(docs/chaos.md, "The checks").

    h = parse_history("plug-01", text)          # the device's history.log
    storage = check_storage([h, ...], stored)   # L and E
    commands = check_commands([h, ...], ledger) # D
    converged, v = check_convergence(hashes)    # C
    worst, v = check_recovery(events, 30.0)     # R
    cloud = check_cloud(stored, in_cloud, 4.2)  # X (with --cloud)

    L  every reading a device saw acknowledged is stored on every node
    E  no reading is stored twice on a node (its content under two sequence
       numbers), and what a node stores for a sequence number is what the
       device recorded under it
    D  no command id runs twice on a device; the ledger and the devices agree
    C  every node's content hash is equal after quiescence
    R  after each fault, ingest resumes within the recovery limit; a
       restarted hub becomes ready
    X  (with a cloud) the export catches up once the devices stop, and every
       reading stored on a node is in the site's cloud stream once, as stored

Each finding is a violation: a dict with its check, where it applies (node,
device, fault) and a detail that says what was missing or wrong.
"""

from __future__ import annotations

import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

CHECKS: Final = ("L", "E", "D", "C", "R", "X", "crash")
READY_LIMIT_S: Final = 90.0  # R: a restarted hub is ready within this


class Reading(NamedTuple):
    """One reading under its sequence number, as a node stores it or as the
    device's flash holds it."""

    seq: int
    ts_ms: int  # the device's timestamp
    sensor: int
    value: float  # a float32 on flash, on the wire and in the store


@dataclass(slots=True)
class DeviceHistory:
    """What one device recorded about itself (tools/mpy/chaos_device.py), across
    boots, and the readings still on its flash when it stopped."""

    device_id: str
    flushed: list[tuple[int, int]] = field(default_factory=list)  # (first seq, count)
    watermark: int = 0  # the highest watermark it saw acknowledged
    executed: list[str] = field(default_factory=list)  # command ids, in order
    boots: int = 0
    jumps: list[int] = field(default_factory=list)
    floor: int = 0  # readings at or below were dropped by overflow (meta.floor)
    dropped: int = 0
    bad_lines: int = 0
    recorded: dict[int, Reading] = field(default_factory=dict)  # seq -> reading on flash


def parse_history(device_id: str, text: str) -> DeviceHistory:
    """The device's history.log read back; a line it cannot read (a torn tail
    after a power cut) is counted in ``bad_lines``."""
    h = DeviceHistory(device_id)
    for line in text.splitlines():
        parts = line.split()
        try:
            if parts[0] == "B" and len(parts) == 3:
                h.boots += 1
                h.watermark = max(h.watermark, int(parts[2]))
            elif parts[0] == "F" and len(parts) == 3:
                h.flushed.append((int(parts[1]), int(parts[2])))
            elif parts[0] == "W" and len(parts) == 2:
                h.watermark = max(h.watermark, int(parts[1]))
            elif parts[0] == "X" and len(parts) == 2:
                h.executed.append(parts[1])
            elif parts[0] == "J" and len(parts) == 2:
                h.jumps.append(int(parts[1]))
            else:
                h.bad_lines += 1
        except (IndexError, ValueError):
            h.bad_lines += 1
    return h


def acknowledged(h: DeviceHistory) -> set[int]:
    """Sequence numbers of readings that reached the device's flash and that
    it saw acknowledged. Numbers it reserved but never used (after a power
    cut) were never readings; readings it dropped itself (overflow) are not
    counted."""
    out: set[int] = set()
    for first, n in h.flushed:
        lo, hi = max(first, h.floor + 1), min(first + n - 1, h.watermark)
        if lo <= hi:
            out.update(range(lo, hi + 1))
    return out


def _ranges(seqs: list[int], limit: int = 5) -> str:
    """'3-7, 12, 40-41' for the first few runs of sorted numbers."""
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and s == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (f", ... ({len(runs)} runs)" if len(runs) > limit else "")


def violation(check: str, detail: str, **where: Any) -> dict[str, Any]:
    """A finding of ``check``; ``where``: node, device or fault."""
    return {"check": check, **where, "detail": detail}


@dataclass(slots=True)
class StorageResult:
    readings_acked: int = 0
    readings_lost: int = 0
    duplicates_stored: int = 0  # readings stored again under another seq, summed over nodes
    violations: list[dict[str, Any]] = field(default_factory=list)


def _content(r: Reading) -> tuple[int, int, bytes]:
    """What a reading says, without its number (the value's float32 bits, so
    that equal means the same bits)."""
    return r.ts_ms, r.sensor, struct.pack("<f", r.value)


def check_storage(
    devices: list[DeviceHistory], stored: dict[str, dict[str, list[Reading]]]
) -> StorageResult:
    """L and E. ``stored``: node id -> device id -> the readings its API
    returned for the device (every page)."""
    res = StorageResult()
    lost: set[tuple[str, int]] = set()
    for h in devices:
        acked = acknowledged(h)
        res.readings_acked += len(acked)
        for node, per_device in sorted(stored.items()):
            readings = per_device.get(h.device_id, [])
            where = {"node": node, "device": h.device_id}
            twice = _stored_twice(readings, h)
            if twice:
                res.duplicates_stored += len(twice)
                res.violations.append(
                    violation(
                        "E",
                        f"{len(twice)} readings stored again under another seq (the same "
                        f"timestamp, sensor and value: {_pairs(twice)})",
                        **where,
                    )
                )
            differ = [r for r in readings if _recorded_otherwise(h, r)]
            if differ:
                r = differ[0]
                res.violations.append(
                    violation(
                        "E",
                        f"{len(differ)} readings stored otherwise than the device recorded "
                        f"them (seq {_ranges(sorted(x.seq for x in differ))}; seq {r.seq}: "
                        f"stored {tuple(r[1:])}, recorded {tuple(h.recorded[r.seq][1:])})",
                        **where,
                    )
                )
            missing = sorted(acked - {r.seq for r in readings})
            if missing:
                lost.update((h.device_id, s) for s in missing)
                res.violations.append(
                    violation(
                        "L",
                        f"{len(missing)} of {len(acked)} acknowledged readings missing "
                        f"(seq {_ranges(missing)}; the device saw up to {h.watermark} acked)",
                        **where,
                    )
                )
    res.readings_lost = len(lost)
    return res


def _stored_twice(readings: list[Reading], h: DeviceHistory) -> list[tuple[int, int]]:
    """(first seq, later seq) for each reading whose content is stored again
    under a later sequence number. Not when the device's flash holds that
    same content under both numbers: then the device recorded two readings
    alike (two samples its clock, stepped back by a resync, stamped with one
    timestamp, of sensors whose values did not change), and the hub stored
    each once."""
    seqs: dict[tuple[int, int, bytes], set[int]] = defaultdict(set)
    for r in readings:
        seqs[_content(r)].add(r.seq)
    out = []
    for content, same in seqs.items():
        first, *later = sorted(same)
        on_flash = {s for s in same if s in h.recorded and _content(h.recorded[s]) == content}
        out += [(first, s) for s in later if not {first, s} <= on_flash]
    return sorted(out)


def _pairs(pairs: list[tuple[int, int]], limit: int = 5) -> str:
    """'seq 3 again as 4099, seq 4 again as 4100, ... (12 in all)'"""
    text = ", ".join(f"seq {a} again as {b}" for a, b in pairs[:limit])
    return text + (f", ... ({len(pairs)} in all)" if len(pairs) > limit else "")


def _recorded_otherwise(h: DeviceHistory, r: Reading) -> bool:
    """The device's flash still holds seq ``r.seq`` with other content."""
    mine = h.recorded.get(r.seq)
    return mine is not None and _content(mine) != _content(r)


@dataclass(slots=True)
class CommandsResult:
    executed: int = 0  # handler runs on the devices
    executed_twice: int = 0  # command ids that ran more than once
    by_state: dict[str, int] = field(default_factory=dict)  # the ledger's final states
    executed_not_done: int = 0  # ran, but the ledger says otherwise (documented limits)
    # accepted by the API, then refused by the device: the command carried a
    # term below one the device had already seen (the proposer's stale view)
    stale_term: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)


def check_commands(
    devices: list[DeviceHistory], ledger: dict[str, dict[str, Any]]
) -> CommandsResult:
    """D. ``ledger``: command id -> its record from the API (state, device_id)."""
    res = CommandsResult()
    res.by_state = dict(sorted(Counter(str(r["state"]) for r in ledger.values()).items()))
    for cid, entry in sorted(ledger.items()):
        result = entry.get("result") or {}
        if (result.get("payload") or {}).get("reason") == "STALE_TERM":
            res.stale_term.append(cid)
    for h in devices:
        counts = Counter(h.executed)
        res.executed += len(h.executed)
        for cid, n in sorted(counts.items()):
            rec = ledger.get(cid)
            if n > 1:
                res.executed_twice += 1
                res.violations.append(
                    violation("D", f"command {cid} executed {n} times", device=h.device_id)
                )
            if rec is None or rec["device_id"] != h.device_id:
                res.violations.append(
                    violation(
                        "D",
                        f"command {cid} executed but the ledger has no such command "
                        "for this device",
                        device=h.device_id,
                    )
                )
            elif rec["state"] not in ("DONE", "FAILED"):
                res.executed_not_done += 1
    executed = {(h.device_id, cid) for h in devices for cid in h.executed}
    for cid, rec in sorted(ledger.items()):
        if rec["state"] == "DONE" and (rec["device_id"], cid) not in executed:
            res.violations.append(
                violation(
                    "D",
                    f"the ledger says command {cid} is DONE, but the device never ran it",
                    device=rec["device_id"],
                )
            )
    return res


def check_convergence(hashes: dict[str, str | None]) -> tuple[bool, list[dict[str, Any]]]:
    """C. ``hashes``: node id -> content hash after quiescence (None: no answer)."""
    values = set(hashes.values())
    if len(values) == 1 and None not in values:
        return True, []
    return False, [
        violation(
            "C",
            "content hashes differ after quiescence: "
            + ", ".join(f"{n}={(v or 'no answer')[:12]}" for n, v in sorted(hashes.items())),
        )
    ]


def check_recovery(
    events: list[dict[str, Any]], limit_s: float
) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """R. The slowest recovery per fault kind (None: one never recovered)."""
    worst: dict[str, float | None] = {}
    violations = []
    for ev in events:
        if "skipped" in ev:
            continue
        kind, rec = ev["kind"], ev.get("recovery_s")
        if kind not in worst:
            worst[kind] = rec
        elif rec is None or worst[kind] is None:
            worst[kind] = None
        else:
            worst[kind] = max(rec, worst[kind] or 0.0)
        if rec is None or rec > limit_s:
            stalled = ev.get("stalled") or []
            violations.append(
                violation(
                    "R",
                    f"ingest did not resume within {limit_s:g} s of fault {ev['n']} "
                    f"({kind} on {ev['target']} at {ev['at_s']} s)"
                    + (f"; devices still stalled: {', '.join(stalled)}" if stalled else ""),
                    fault=ev["n"],
                )
            )
        if ev.get("ready_s") is None and ev.get("needs_ready"):
            violations.append(
                violation(
                    "R",
                    f"{ev['target']} was not ready within {READY_LIMIT_S:g} s of its "
                    f"restart (fault {ev['n']})",
                    fault=ev["n"],
                )
            )
    return {k: worst[k] for k in sorted(worst)}, violations


@dataclass(slots=True)
class CloudResult:
    readings: int = 0  # distinct readings in the cloud's stream
    lost: int = 0  # stored on a node, not in the cloud
    duplicates: int = 0  # copies beyond the first of a (device, seq) in the cloud
    differ: int = 0  # in the cloud with other content than stored
    unknown: int = 0  # in the cloud, stored on no node
    violations: list[dict[str, Any]] = field(default_factory=list)


def check_cloud(
    stored: dict[str, dict[str, list[Reading]]],
    in_cloud: dict[str, list[Reading]],
    caught_up_s: float | None,
    limit_s: float = 0.0,
) -> CloudResult:
    """X. ``stored``: node id -> device id -> the readings it stores;
    ``in_cloud``: device id -> the readings of the site's stream, one entry
    per copy; ``caught_up_s``: seconds the export took to catch up once the
    devices stopped (None: it did not within ``limit_s``)."""
    res = CloudResult()
    if caught_up_s is None:
        res.violations.append(
            violation("X", f"the cloud export did not catch up within {limit_s:g} s")
        )
    hubs: dict[str, dict[int, Reading]] = defaultdict(dict)
    for per_device in stored.values():
        for device, readings in per_device.items():
            for r in readings:
                hubs[device].setdefault(r.seq, r)
    for device in sorted(set(hubs) | set(in_cloud)):
        have = hubs.get(device, {})
        copies = Counter(r.seq for r in in_cloud.get(device, []))
        got = {r.seq: r for r in in_cloud.get(device, [])}
        res.readings += len(got)
        missing = sorted(set(have) - set(got))
        twice = sorted(s for s, n in copies.items() if n > 1)
        unknown = sorted(set(got) - set(have))
        differ = sorted(s for s in set(got) & set(have) if _content(got[s]) != _content(have[s]))
        res.lost += len(missing)
        res.duplicates += sum(copies[s] - 1 for s in twice)
        res.unknown += len(unknown)
        res.differ += len(differ)
        for seqs, what in (
            (missing, f"stored on the hubs but not in the cloud (of {len(have)} stored)"),
            (twice, "in the cloud more than once"),
            (unknown, "in the cloud but stored on no hub"),
            (differ, "in the cloud otherwise than the hubs store them"),
        ):
            if seqs:
                res.violations.append(
                    violation(
                        "X", f"{len(seqs)} readings {what}: seq {_ranges(seqs)}", device=device
                    )
                )
    return res
