"""How full the store is, and what apply does when the map or the disk is full.

Fullness is node-local: LMDB's free pages depend on the readers each node
had, so two replicas of the same content can have different files. That is
why ingest refuses at admission, on this node's own figures (``StoreUsage``,
``Thresholds``), before it proposes; apply never refuses for space, because
skipping an entry other replicas applied would make them diverge.
hub/state/DESIGN.md ("A full store") has the whole policy.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import lmdb

# Apply may grow the map past its configured size by this fraction when
# committed entries fill it (the refuse threshold keeps room below it, but
# LMDB needs free pages for copy-on-write and cannot reuse pages an open
# reader still sees).
GROWTH: Final = 0.25


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """One node's store: the bytes its live pages hold (``used``), how far
    the file reaches (``high``, what LMDB has ever used), the map's size and
    the free bytes on the file's filesystem."""

    used: int
    high: int
    map_size: int
    disk_free: int

    @property
    def fraction(self) -> float:
        """Live pages against the map: what the thresholds compare."""
        return self.used / self.map_size if self.map_size else 1.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``[store]`` alert_at and refuse_at, as fractions of the map."""

    alert_at: float = 0.75
    refuse_at: float = 0.85
    # Ingest also refuses when the filesystem has less free space than this.
    min_disk_free: int = 64 << 20

    def refuses(self, u: StoreUsage) -> str:
        """Why ingest refuses now ("" when it does not)."""
        if u.fraction >= self.refuse_at:
            return (
                f"store {u.fraction:.0%} full (refuse_at {self.refuse_at:.0%} of a "
                f"{u.map_size >> 20} MiB map)"
            )
        if u.disk_free < self.min_disk_free:
            return f"disk nearly full: {u.disk_free >> 20} MiB free"
        return ""

    def alerts(self, u: StoreUsage) -> bool:
        return u.fraction >= self.alert_at or u.disk_free < self.min_disk_free


def usage(env: Any, txn: Any, dbs: dict[str, Any], path: Path) -> StoreUsage:
    """The live pages of every table (branch, leaf, overflow), the main
    database and the two meta pages, against the map."""
    info = env.info()
    main = txn.stat()
    psize = int(main["psize"])
    pages = 2 + _pages(main) + sum(_pages(txn.stat(db)) for db in dbs.values())
    return StoreUsage(pages * psize, (info["last_pgno"] + 1) * psize, info["map_size"], _free(path))


def _pages(stat: dict[str, int]) -> int:
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])


# An I/O error while the filesystem has less than this free is taken for a
# full disk: LMDB reports a short write (what a full disk gives) as EIO.
NEARLY_FULL: Final = 4 << 20


def disk_full(exc: BaseException, path: Path) -> bool:
    """An LMDB or OS error that means the filesystem of ``path`` is full."""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        return exc.errno == errno.EIO and _free(path) < NEARLY_FULL
    if isinstance(exc, lmdb.Error):
        text = str(exc)
        if "No space left" in text or "quota exceeded" in text.lower():
            return True
        return "Input/output error" in text and _free(path) < NEARLY_FULL
    return False


def _free(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize
