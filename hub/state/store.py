"""The hub's replicated state in LMDB: the Store, its reads and its file.

``Store`` opens the LMDB file at ``<dir>/store.mdb`` (its tables:
hub/state/records.py), changes it only through ``Store.apply`` (the one
function behind it: hub/state/apply.py), answers the reads, hashes the
content, and takes and installs snapshots (hub/state/snapshot.py). Raft is
not in here: the thin replicated class, journal replay, snapshot install and
the tests all call the same ``apply``. hub/state/DESIGN.md describes the
tables, the rules and the power-loss window; hub/state/errors.py the errors.

Threads: one thread applies (pysyncobj's); any thread may read. Each read
method uses its own short read transaction. A long read (the content hash
of the API) runs on a ``PinnedView``: its own read transaction, consistent
without any lock; ``restore`` cancels the views still open (they raise
ViewClosed) and waits for them before it closes the file.

The file is created 0600 (it holds device keys and password hashes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time as _time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import lmdb

from hub.core.fsutil import fsync_path
from hub.state import entries as e
from hub.state import outbox, rollups, space
from hub.state import records as r
from hub.state.apply import ApplyResult, apply_entries
from hub.state.errors import IncompatibleStore, StoreFull
from hub.state.records import LedgerRecord, ModelRecord, NodeRecord, PresenceRecord
from hub.state.snapshot import IMAGE_MAGIC, SNAPSHOT_MAGIC, Snapshot, restore_image, restore_stream
from hub.state.telemetry import ENERGY_WH_SENSOR as ENERGY_WH_SENSOR
from hub.state.telemetry import HourlyEnergy as HourlyEnergy
from hub.state.telemetry import TelemetryReads

T = TypeVar("T")
log = logging.getLogger("hub.store")

DEFAULT_MAP_SIZE: Final = (8 << 30) if sys.maxsize > 2**32 else (1 << 30)
DATA_FILE: Final = "store.mdb"
INSTALL_FILE: Final = "store.mdb.install"


class ViewClosed(Exception):
    """A pinned view ended under a reader: the store was replaced by a snapshot."""


class Store(TelemetryReads, contextlib.AbstractContextManager["Store"]):
    """LMDB at ``path/store.mdb`` (a directory the store owns)."""

    def __init__(self, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = Path(path)
        self.map_size = map_size
        self._views = 0  # open read transactions and pinned views
        self._snaps = 0  # open snapshots
        self._views_done = threading.Condition()
        self._closing = False
        self._growing = False
        # What apply does when the map or the disk is full (set_full_policy).
        self._growth = 0.0
        self._wait_when_full = False
        self.on_full: Callable[[str], None] | None = None
        self.full_waits = 0  # times apply waited for space
        self.waiting = ""  # why apply waits for space now ("": it does not)
        self.grown = 0  # times apply grew the map
        self._open()

    def set_full_policy(self, growth: float = space.GROWTH, wait: bool = True) -> None:
        """When committed entries fill the map, apply grows it by up to
        ``growth`` of its size; when that is used up too (or the disk is
        full), it waits and retries (``wait``) instead of raising StoreFull.
        Each wait calls ``on_full`` with the reason (hub/state/DESIGN.md
        "A full store")."""
        self._growth, self._wait_when_full = growth, wait

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / INSTALL_FILE
        _unlink(tmp, _lock_of(tmp))  # an install that did not finish
        self._env = _open_env(self.path / DATA_FILE, self.map_size)
        try:
            with self._env.begin(write=True) as txn:
                self._dbs = {n: self._env.open_db(n.encode(), txn=txn) for n in r.TABLES}
                fmt = txn.get(r.META_FORMAT, db=self._dbs["meta"])
                if fmt == r.U32.pack(1):  # before the rollups: build them
                    rollups.rebuild(txn, self._dbs)
                elif fmt not in (None, r.U32.pack(r.STORE_FORMAT)):
                    raise IncompatibleStore(
                        f"{self.path}: store format {fmt!r}; this hub reads formats "
                        f"{', '.join(map(str, r.READABLE_FORMATS))}"
                    )
                if fmt != r.U32.pack(r.STORE_FORMAT):
                    txn.put(r.META_FORMAT, r.U32.pack(r.STORE_FORMAT), db=self._dbs["meta"])
        except BaseException:
            self._env.close()
            raise

    def close(self) -> None:
        self._env.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- apply --

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply ``(raft index, entry)`` pairs in one write transaction.

        Entries at or below the applied index are skipped; the new applied
        index is stored in the same transaction. A rejected entry changes
        nothing and the others still apply. When the map is full it grows
        it within the full policy (``set_full_policy``); past that, or on a
        full disk, it raises StoreFull (nothing written), or with ``wait``
        waits and retries the same entries: never skips them.
        """
        delay = 0.5
        cause: BaseException
        while True:
            try:
                results = apply_entries(self._env, self._dbs, entries)
                self.waiting = ""
                return results
            except lmdb.MapFullError as exc:
                if self._grow():
                    continue
                size = self._env.info()["map_size"]
                full, cause = StoreFull(f"{self.path}: LMDB map of {size} bytes is full"), exc
            except (lmdb.Error, OSError) as exc:
                if not space.disk_full(exc, self.path):
                    raise
                full, cause = StoreFull(f"{self.path}: the disk is full: {exc}"), exc
            if not self._wait_when_full:
                raise full from cause
            self.full_waits += 1
            self.waiting = str(full)
            if self.full_waits == 1 or delay >= 10:
                log.critical("apply waits for space, retrying in %.1f s: %s", delay, full)
            if self.on_full is not None:
                self.on_full(str(full))
            _time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _grow(self) -> bool:
        """Grow the map within the policy; False when it may not grow more.
        The map moves in memory, so no read may be open meanwhile: reads
        wait for it, and it waits for the open ones (and snapshots)."""
        current = int(self._env.info()["map_size"])
        limit = int(self.map_size * (1 + self._growth))
        if current >= limit:
            return False
        with self._views_done:
            self._growing = True
            try:
                self._views_done.wait_for(lambda: self._views == 0 and self._snaps == 0)
                self._env.set_mapsize(limit)
            finally:
                self._growing = False
                self._views_done.notify_all()
        self.grown += 1
        log.warning("store map full at %d bytes: grown to %d (the reserve)", current, limit)
        return True

    def usage(self) -> space.StoreUsage:
        """This node's figures: live bytes, file, map, free disk."""
        with self._read() as txn:
            return space.usage(self._env, txn, self._dbs, self.path)

    # -- reads --

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._views_done:
            self._views_done.wait_for(lambda: not self._growing)
            self._views += 1
        try:
            with self._env.begin(write=False) as txn:
                yield txn
        finally:
            self._unpin()

    def _one(self, table: str, key: str, unpack: Callable[[bytes], T]) -> T | None:
        """The record of ``table`` at ``key``, decoded, or None."""
        with self._read() as txn:
            raw = txn.get(key.encode(), db=self._dbs[table])
            return None if raw is None else unpack(raw)

    def _all(self, table: str, unpack: Callable[[str, bytes], T]) -> list[T]:
        """Every record of ``table`` in key order, decoded with its key."""
        with self._read() as txn:
            return [unpack(k.decode(), v) for k, v in txn.cursor(db=self._dbs[table])]

    def applied_index(self) -> int:
        with self._read() as txn:
            return r.applied_index(txn, self._dbs)

    def read_tables(self, fn: Callable[[Any, dict[str, Any]], T]) -> T:
        """``fn(txn, tables)`` in one read transaction: the reads of modules
        that keep their own tables (hub/state/invites.py, hub/state/threads.py)."""
        with self._read() as txn:
            return fn(txn, self._dbs)

    def device(self, device_id: str) -> e.Device | None:
        return self._one("devices", device_id, r.unpack_device_record)

    def devices(self) -> list[e.Device]:
        return self._all("devices", lambda _, v: r.unpack_device_record(v))

    def device_ids_registered(self) -> list[str]:
        """Every device id in registration order: by the time in its record
        (the registering entry's), then by id."""
        found = self._all("devices", lambda k, v: (r.registered_ms(v), k))
        return [k for _, k in sorted(found)]

    def watermark(self, device_id: str) -> int:
        """Highest seq up to which every reading is stored or declared lost."""
        return self.progress(device_id)[0]

    def progress(self, device_id: str) -> tuple[int, int]:
        """(watermark, lost_before): the device's declared gap is every seq
        below lost_before that is not stored (``readings`` shows which)."""
        found = self._one("watermarks", device_id, r.progress_of)
        return (0, 0) if found is None else found

    def presence(self, device_id: str) -> PresenceRecord | None:
        return self._one("presence", device_id, functools.partial(r.unpack_presence, device_id))

    def command(self, command_id: str) -> LedgerRecord | None:
        with self._read() as txn:
            lkey = txn.get(command_id.encode(), db=self._dbs["ledger_ids"])
            if lkey is None:
                return None
            return r.unpack_ledger(txn.get(lkey, db=self._dbs["ledger"]))

    def commands(self, device_id: str) -> list[LedgerRecord]:
        """The device's commands in sequence order."""
        prefix = r.dev_prefix(device_id)
        with self._read() as txn:
            return [r.unpack_ledger(v) for _, v in r.scan(txn, self._dbs["ledger"], prefix)]

    def model_versions(self, name: str | None = None) -> list[e.ModelVersion]:
        """Registered versions (of one model, or all), in key order."""
        if name is None:
            return self._all("model_versions", lambda _, v: r.unpack_model_version(v))
        with self._read() as txn:
            rows = r.scan(txn, self._dbs["model_versions"], name.encode() + b"\0")
            return [r.unpack_model_version(v) for _, v in rows]

    def models(self) -> list[ModelRecord]:
        """The activated version of each model."""
        return self._all("models", r.unpack_model)

    def model(self, name: str) -> ModelRecord | None:
        return self._one("models", name, functools.partial(r.unpack_model, name))

    def export_cursor(self) -> int | None:
        """The cloud export's cursor; None while the export is off (hub/state/outbox.py)."""
        with self._read() as txn:
            return outbox.cursor(txn, self._dbs)

    def outbox(self, after: int, limit: int) -> list[tuple[int, int, bytes]]:
        """The outbox records of up to ``limit`` raft indexes after ``after``."""
        with self._read() as txn:
            return outbox.pending(txn, self._dbs, after, limit)

    def outbox_size(self) -> int:
        with self._read() as txn:
            return int(txn.stat(self._dbs["outbox"])["entries"])

    def drained(self) -> set[str]:
        """The ids of the nodes drained for maintenance (the ``drains`` table)."""
        return set(self._all("drains", lambda k, _v: k))

    def nodes(self) -> list[NodeRecord]:
        """Every hub node's record, by node_id (ASCII, so key order)."""
        return self._all("nodes", r.unpack_node)

    def node(self, node_id: str) -> NodeRecord | None:
        return self._one("nodes", node_id, functools.partial(r.unpack_node, node_id))

    def user(self, name: str) -> e.User | None:
        return self._one("users", name, r.unpack_user)

    def users(self) -> list[e.User]:
        return self._all("users", lambda _, v: r.unpack_user(v))

    def revoked_tokens(self) -> tuple[list[tuple[str, int]], int]:
        """Revoked admin token ids with when each was revoked (ms), in id
        order, and the cut-off: tokens issued before it are revoked (0: none)."""
        with self._read() as txn:
            ids = [
                (k.decode(), r.unpack_revoked(v))
                for k, v in txn.cursor(db=self._dbs["revoked_tokens"])
            ]
            before = txn.get(r.META_TOKENS_BEFORE, db=self._dbs["meta"])
            return ids, 0 if before is None else r.seq_of(before)

    def token_revocation(self, token_id: str, issued_ms: int) -> str | None:
        """Why the admin token ``token_id`` issued at ``issued_ms`` is
        revoked, or None when it is not."""
        with self._read() as txn:
            if txn.get(token_id.encode(), db=self._dbs["revoked_tokens"]) is not None:
                return f"admin token {token_id} revoked"
            raw = txn.get(r.META_TOKENS_BEFORE, db=self._dbs["meta"])
            if raw is not None and issued_ms < r.seq_of(raw):
                return "admin token revoked: issued before the cut-off"
            return None

    def decision(self, decision_id: str) -> e.Decision | None:
        return self._one(
            "decisions", decision_id, functools.partial(r.unpack_decision, decision_id)
        )

    def alert_ack(self, decision_id: str) -> tuple[str, int] | None:
        """Who acknowledged the decision's alert, and when (ms)."""
        return self._one("alert_acks", decision_id, r.unpack_alert_ack)

    def decisions(self, device_id: str | None = None, limit: int = 100) -> list[e.Decision]:
        """Newest first: one device's decisions, or everyone's."""
        if device_id is None:
            rows = self._all("decisions", r.unpack_decision)
            rows.sort(key=lambda d: (d.at_ms, d.decision_id), reverse=True)
            return rows[:limit]
        out: list[e.Decision] = []
        prefix = r.dev_prefix(device_id)
        with self._read() as txn:
            cur = txn.cursor(db=self._dbs["decisions_by_device"])
            # Walk back from the end of this device's keys.
            found = cur.set_range(prefix[:-1] + b"\x01")
            found = cur.prev() if found else cur.last()
            db = self._dbs["decisions"]
            while found and cur.key().startswith(prefix) and len(out) < limit:
                did = cur.key()[len(prefix) + 8 :]
                raw = txn.get(did, db=db)
                if raw is not None:
                    out.append(r.unpack_decision(did.decode(), raw))
                found = cur.prev()
        return out

    # -- convergence and snapshots --

    def content_hash(self) -> str:
        """SHA-256 (hex) over every table's keys and values in key order,
        except the node-local meta keys (records.NODE_LOCAL_META) and the
        node table (records.UNHASHED_TABLES)."""
        with self._read() as txn:
            return r.content_hash(txn, self._dbs)

    def pin(self) -> PinnedView:
        """A consistent view of the store now, for a long read in any thread
        (close it: ``with store.pin() as view``). Cheap: it opens a read
        transaction. ViewClosed while a restore is under way."""
        with self._views_done:
            if self._closing:
                raise ViewClosed("the store is being replaced")
            self._views_done.wait_for(lambda: not self._growing)
            self._views += 1
        try:
            return PinnedView(self, self._env.begin(write=False))
        except BaseException:
            self._unpin()
            raise

    def _unpin(self) -> None:
        with self._views_done:
            self._views -= 1
            self._views_done.notify_all()

    def snapshot(self) -> Snapshot:
        with self._views_done:
            self._views_done.wait_for(lambda: not self._growing)
            self._snaps += 1
        try:
            return Snapshot(self._env, self._dbs, self._snapshot_closed)
        except BaseException:
            self._snapshot_closed()
            raise

    def _snapshot_closed(self) -> None:
        with self._views_done:
            self._snaps -= 1
            self._views_done.notify_all()

    def snapshot_to(self, out: BinaryIO) -> int:
        """Write a consistent snapshot; returns its applied index."""
        with self.snapshot() as snap:
            snap.write_to(out)
            return snap.applied_index

    @classmethod
    def install(
        cls, path: str | os.PathLike[str], snapshot: BinaryIO, map_size: int = DEFAULT_MAP_SIZE
    ) -> int:
        """Replace the store at ``path`` with a snapshot, atomically: a stream
        (``Snapshot.write_to``) or an image (``Snapshot.write_image``), told
        apart by their magic.

        A stream is verified (digest, order, format) while it is written to
        a new LMDB next to the old one; an image is copied there, its digest
        checked, and its meta (format, applied index) read back. Only then is
        the new file synced and renamed over the old. The store must not be open (in any process).
        Returns the snapshot's applied index. On SnapshotError the old store
        is untouched.
        """
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        tmp, data = root / INSTALL_FILE, root / DATA_FILE
        _unlink(tmp, _lock_of(tmp))
        magic = snapshot.read(len(SNAPSHOT_MAGIC))
        if magic == IMAGE_MAGIC:
            try:
                applied = restore_image(snapshot, tmp)
            except BaseException:
                _unlink(tmp, _lock_of(tmp))
                raise
        else:
            env = _open_env(tmp, map_size, durable=False)
            try:
                applied = restore_stream(env, snapshot, magic)
                env.sync(True)
            except BaseException:
                env.close()
                _unlink(tmp, _lock_of(tmp))
                raise
            env.close()
        fsync_path(tmp)
        # A lock file outlives its data file; the new file starts with a new one.
        _unlink(_lock_of(data))
        os.replace(tmp, data)
        _unlink(_lock_of(tmp))
        fsync_path(root, directory=True)
        return applied

    def restore(self, snapshot: BinaryIO) -> int:
        """Close, install the snapshot over this store, reopen. Read
        transactions of other threads must be finished."""
        with self._views_done:
            self._closing = True
            self._views_done.wait_for(lambda: self._views == 0)
        try:
            self.close()
            try:
                return Store.install(self.path, snapshot, self.map_size)
            finally:
                self._open()
        finally:
            with self._views_done:
                self._closing = False


class PinnedView(contextlib.AbstractContextManager["PinnedView"]):
    """A read transaction of a Store (``Store.pin``): a consistent view that
    needs no lock while it is read. A restore of the store cancels it: its
    reads then raise ViewClosed, and the restore waits until it is closed."""

    _CHECK_EVERY: Final = 1024  # records between two looks at a pending restore

    def __init__(self, store: Store, txn: Any) -> None:
        self._store = store
        self._txn = txn
        self._open = True

    def content_hash(self) -> str:
        """``Store.content_hash`` of this view."""
        return r.content_hash(_Cancellable(self._txn, self._cancelled), self._store._dbs)

    def _cancelled(self) -> bool:
        return self._store._closing

    def close(self) -> None:
        if self._open:
            self._open = False
            self._txn.abort()
            self._store._unpin()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Cancellable:
    """A read transaction whose cursors stop (ViewClosed) once ``cancelled()``."""

    def __init__(self, txn: Any, cancelled: Callable[[], bool]) -> None:
        self._txn = txn
        self._cancelled = cancelled

    def cursor(self, db: Any) -> Iterator[tuple[bytes, bytes]]:
        for i, kv in enumerate(self._txn.cursor(db=db)):
            if i % PinnedView._CHECK_EVERY == 0 and self._cancelled():
                raise ViewClosed("the store was replaced by a snapshot during the read")
            yield kv


# -- the file -----------------------------------------------------------------------


def _open_env(path: Path, map_size: int, durable: bool = True) -> Any:
    return lmdb.open(
        str(path),
        subdir=False,
        map_size=map_size,
        max_dbs=len(r.TABLES),
        sync=durable,
        metasync=durable,
        mode=0o600,
    )


def _unlink(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _lock_of(data: Path) -> Path:
    return data.with_name(data.name + "-lock")
