"""The hub benchmarks' figures: pure functions over the load generator's log.

The log (tools/bench/generator.py) is three parallel lists: ``t``, when a
watermark moved (``time.monotonic()``); ``n``, the readings it newly covered;
``pub``, the latest first-publish time of the batches it covered.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Final

from tools.bench.codec import BenchError

RECOVERY_WINDOW_S: Final = 1.0
RECOVERY_STEP_S: Final = 0.05
RECOVERY_SHARE: Final = 0.9


def committed(events: dict[str, list[float]], t0: float, t1: float) -> int:
    """Readings whose CommitAck arrived in [t0, t1)."""
    return int(sum(n for t, n in zip(events["t"], events["n"], strict=True) if t0 <= t < t1))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    if not values:
        raise BenchError("no samples")
    s = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[rank - 1]


def first_commit_after(events: dict[str, list[float]], t_kill: float) -> float | None:
    """Seconds from t_kill to the first CommitAck covering a batch first
    published after it (a batch sent before and resent after does not count:
    it may have been committed before the kill, its ack lost with the node)."""
    for t, pub in zip(events["t"], events["pub"], strict=True):
        if pub > t_kill and t >= t_kill:
            return t - t_kill
    return None


def recovery_after(
    events: dict[str, list[float]],
    t_kill: float,
    rate: float,
    until: float,
    share: float = RECOVERY_SHARE,
    window: float = RECOVERY_WINDOW_S,
    step: float = RECOVERY_STEP_S,
) -> float | None:
    """Seconds from t_kill to the end of the first ``window`` that lies wholly
    after t_kill (starts in ``step`` steps) and committed at least ``share``
    x ``rate`` readings per second: when the commit rate over the last
    ``window`` was back. At least ``window``; None if no window that ends by
    ``until`` does."""
    times = events["t"]
    prefix = [0]
    for n in events["n"]:
        prefix.append(prefix[-1] + int(n))
    need = share * rate * window
    k = 0
    while True:
        start = t_kill + k * step
        if start + window > until:
            return None
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_left(times, start + window)
        if prefix[hi] - prefix[lo] >= need:
            return start + window - t_kill
        k += 1


def per_second(events: dict[str, list[float]], t0: float, t1: float) -> list[int]:
    """Readings committed in each whole second of [t0, t1)."""
    bins = [0] * max(0, int(t1 - t0))
    for t, n in zip(events["t"], events["n"], strict=True):
        i = int(t - t0)
        if t >= t0 and i < len(bins):
            bins[i] += int(n)
    return bins


def slices(
    samples: Sequence[tuple[float, float]], t0: float, t1: float, step: float
) -> list[list[float]]:
    """The values of (time, value) samples in consecutive ``step``-second slices of [t0, t1)."""
    out: list[list[float]] = [[] for _ in range(max(1, math.ceil((t1 - t0) / step)))]
    for t, v in samples:
        if t0 <= t < t1:
            out[min(int((t - t0) / step), len(out) - 1)].append(v)
    return out


def merge_events(parts: Sequence[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The logs of several generators as one, in time order."""
    rows = sorted(
        (t, n, p) for e in parts for t, n, p in zip(e["t"], e["n"], e["pub"], strict=True)
    )
    return {"t": [r[0] for r in rows], "n": [r[1] for r in rows], "pub": [r[2] for r in rows]}


def median(values: list[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count)."""
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
