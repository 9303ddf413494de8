"""The hub's wall clock: milliseconds since the Unix epoch.

Times in replicated entries are the proposer's wall clock (apply never reads a
clock: hub/state/DESIGN.md), and a CommitAck carries the hub's time.
"""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000
