"""Leak figures for the soak: a process's memory and descriptors, and their growth.

``proc_memory`` and ``proc_fds`` read one sample from /proc (VmRSS and its
parts RssAnon, the heap, and RssFile, mostly mapped files such as the LMDB
map's pages; the entries of /proc/<pid>/fd). ``summarize`` turns a process's
samples into growth figures over the samples after the warm-up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final


def proc_memory(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile of a process, in KiB; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0])
    return out if "VmRSS" in out else None


def proc_fds(pid: int) -> int | None:
    """Open file descriptors of a process; None once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def growth(first: float, last: float) -> float:
    """(last - first) / first in percent, to 2 places (0 when first is not positive)."""
    return 0.0 if first <= 0 else round((last - first) / first * 100, 2)


def slope_per_hour(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` over ``times`` (seconds), per hour."""
    n = len(times)
    if n < 2:
        return None
    mt, mv = sum(times) / n, sum(values) / n
    den = sum((t - mt) ** 2 for t in times)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / den * 3600


FD_WINDOW: Final = 6  # samples at each end whose fewest descriptors are compared


def fd_growth(fds: Sequence[int]) -> int | None:
    """The fewest descriptors over the last FD_WINDOW samples minus the fewest
    over the first ones: a leak raises both ends' floor, while a descriptor
    open at the moment of one sample (a snapshot file being written, a peer
    reconnecting) does not."""
    if len(fds) < 2:
        return None
    w = max(1, min(FD_WINDOW, len(fds) // 2))
    return min(fds[-w:]) - min(fds[:w])


def summarize(series: list[dict[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Growth figures of one process from its samples (t, rss, anon, file in
    KiB, fds), over the samples taken at or after ``warmup_s``."""
    after = [s for s in series if s["t"] >= warmup_s and s["rss_kib"] is not None]
    if len(after) < 2:
        return {"samples_after_warmup": len(after)}
    first, last = after[0], after[-1]
    fds = [s["fds"] for s in after if s["fds"] is not None]
    times = [s["t"] for s in after]
    slope = slope_per_hour(times, [s["rss_kib"] / 1024 for s in after])
    half = after[len(after) // 2 :]
    anon_slope = slope_per_hour([s["t"] for s in half], [s["anon_kib"] / 1024 for s in half])
    return {
        "samples_after_warmup": len(after),
        "rss_mib_first": round(first["rss_kib"] / 1024, 1),
        "rss_mib_last": round(last["rss_kib"] / 1024, 1),
        "rss_mib_max": round(max(s["rss_kib"] for s in after) / 1024, 1),
        "rss_growth_pct": growth(first["rss_kib"], last["rss_kib"]),
        "rss_anon_mib_first": round(first["anon_kib"] / 1024, 1),
        "rss_anon_mib_last": round(last["anon_kib"] / 1024, 1),
        "rss_anon_growth_pct": growth(first["anon_kib"], last["anon_kib"]),
        "rss_file_mib_first": round(first["file_kib"] / 1024, 1),
        "rss_file_mib_last": round(last["file_kib"] / 1024, 1),
        "rss_slope_mib_per_h": None if slope is None else round(slope, 2),
        "rss_anon_slope_mib_per_h_second_half": None
        if anon_slope is None
        else round(anon_slope, 2),
        "fds_first": first["fds"],
        "fds_last": last["fds"],
        "fds_min": min(fds) if fds else None,
        "fds_max": max(fds) if fds else None,
        "fd_last_minus_first": None
        if first["fds"] is None or last["fds"] is None
        else last["fds"] - first["fds"],
        "fd_growth": fd_growth(fds),
    }
