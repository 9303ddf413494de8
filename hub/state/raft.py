"""The thin replicated state machine: hub/state/store.py behind pysyncobj.

One replicated method, ``_Machine.apply_entry(entry: bytes)``, hands the
committed entry and its Raft log index to ``Store.apply``; nothing else
changes replicated state. Journal replay, snapshot install and the unit tests
all go through that same ``Store.apply``. hub/state/DESIGN.md ("The replicated
class", "Snapshots and log compaction") explains how the index is known
inside the replicated method and how snapshots are taken and installed.

Threads: pysyncobj runs its own thread (it applies, takes snapshots and
installs them). The asyncio side crosses into it only through
``RaftNode.propose`` (and the membership calls), which put a command on
pysyncobj's queue; results come back in exactly one place, ``_resolve``,
scheduled with ``loop.call_soon_threadsafe``. Build the RaftNode on the
daemon's main thread: pysyncobj's thread stops when the thread that built it
ends.

Errors (the hierarchy, all defined here; every one carries ``reason``, a
machine-readable string for metrics)::

    RaftError(reason)
    ├── SecretError             no cluster secret, or one shorter than
    │                           MIN_SECRET_BYTES: refused before any socket
    │                           opens (pysyncobj unpickles what peers send)
    ├── NotLeader(reason, leader, maybe_applied)
    │                           the leader that took (or would take) the entry
    │                           lost its place: "not_leader", "discarded"
    │                           (maybe_applied False: retry) or
    │                           "leader_changed", "unknown_outcome"
    │                           (maybe_applied True). Entries are idempotent
    │                           (docs/ARCHITECTURE.md invariant 2): retrying is safe
    ├── NotReady(reason)        the node cannot take proposals now: "closed",
    │                           "halted" (apply failed: see Halted below),
    │                           "no_leader", "queue_full", "request_denied"
    │                           (a membership change while another is open)
    └── DeadlineExceeded(timeout_s)
                                no answer in time; the entry may still commit
                                (maybe_applied is True)

A failure of ``Store.apply`` itself (a full LMDB map, a disk error) is not one
of these: skipping an entry other replicas applied would diverge, so the node
stops (``status().halted`` names the error) and proposals fail with
``NotReady("halted")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import lmdb
from pysyncobj import FAIL_REASON, SERIALIZER_STATE, SyncObjConf, replicated
from pysyncobj.node import TCPNode

from hub.core.config import RaftConfig
from hub.core.fsutil import fsync_dir, make_private, private_dir, private_opener
from hub.state.apply import ApplyResult
from hub.state.errors import SnapshotError
from hub.state.journal import DurableJournal, DurableSyncObj
from hub.state.snapshot import Snapshot, peek_index
from hub.state.store import DEFAULT_MAP_SIZE, Store
from protocol.errors import ReasonError

log = logging.getLogger("hub.raft")
T = TypeVar("T")

MIN_SECRET_BYTES: Final = 16  # as hub/core/config.py
STORE_DIR: Final = "store"
JOURNAL_FILE: Final = "raft.journal"
DUMP_FILE: Final = "raft.dump"
DUMP_MAGIC: Final = b"AIOTRAFT"
DUMP_VERSION: Final = 1
_DUMP_HEADER = struct.Struct(">8sHI")  # magic, version, length of the JSON meta


# -- errors ----------------------------------------------------------------------------


class RaftError(ReasonError):
    """Base of the Raft bridge's errors; ``reason`` is machine-readable."""


class SecretError(RaftError):
    """No usable cluster secret: the node refuses to start."""


class NotLeader(RaftError):
    """The entry did not commit through the leader it went to."""

    def __init__(self, reason: str, leader: str | None, maybe_applied: bool) -> None:
        self.leader = leader
        self.maybe_applied = maybe_applied
        super().__init__(reason, f"leader={leader} maybe_applied={maybe_applied}")


class NotReady(RaftError):
    """The node cannot take proposals now."""


class DeadlineExceeded(RaftError):
    """No outcome within the deadline; the entry may still commit."""

    maybe_applied = True

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__("deadline_exceeded", f"no outcome within {timeout_s}s")


def _failure(err: int, leader: str | None) -> RaftError:
    if err == FAIL_REASON.NOT_LEADER:
        return NotLeader("not_leader", leader, maybe_applied=False)
    if err == FAIL_REASON.DISCARDED:
        return NotLeader("discarded", leader, maybe_applied=False)
    if err == FAIL_REASON.LEADER_CHANGED:
        return NotLeader("leader_changed", leader, maybe_applied=True)
    if err == FAIL_REASON.UNKNOWN_OUTCOME:
        return NotLeader("unknown_outcome", leader, maybe_applied=True)
    if err == FAIL_REASON.MISSING_LEADER:
        return NotReady("no_leader")
    if err == FAIL_REASON.QUEUE_FULL:
        return NotReady("queue_full")
    if err == FAIL_REASON.REQUEST_DENIED:
        return NotReady("request_denied")
    return NotReady("unknown_failure", f"pysyncobj fail reason {err}")


# -- settings and status -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftTiming:
    """pysyncobj's timers (seconds). Defaults suit a LAN of Raspberry Pis."""

    append_entries_period: float = 0.05
    election_min: float = 0.4
    election_max: float = 1.4
    connection_timeout: float = 3.5
    connection_retry: float = 1.0
    leader_fallback: float = 5.0
    tick: float = 0.01


@dataclass(frozen=True, slots=True)
class RaftStatus:
    address: str
    ready: bool  # caught up with the leader's commit index once since start
    leader: str | None
    is_leader: bool
    term: int
    commit_index: int
    applied_index: int  # pysyncobj's (counts no-op and membership entries)
    store_applied_index: int  # the last index Store.apply recorded
    snapshots_taken: int
    snapshots_installed: int
    halted: str  # "" or the error that stopped apply
    journal_behind_store: int = 0  # > 0: the journal lost entries LMDB applied
    journal_flushes: int = 0  # journal syncs (hub/state/journal.py)
    journal_flush_seconds: float = 0.0  # their total time
    journal_room: bool = True  # False while a journal write waits for disk space
    disk_full_step_downs: int = 0  # times this node stepped down as leader for want of room


# -- the dump file (pysyncobj's fullDumpFile) --------------------------------------------
#
#   "AIOTRAFT" | u16 version | u32 n | n bytes of JSON: pysyncobj's raft data
#   (the last applied entry, the one before it, the cluster's addresses)
#   then the store's snapshot stream (hub/state/DESIGN.md "Snapshots").

RaftEntry = tuple[bytes, int, int]  # pysyncobj's (command, index, term)


def _entry_json(entry: Any) -> list[Any]:
    command, index, term = entry
    return [bytes(command).hex(), int(index), int(term)]


def _entry_of(raw: Any) -> RaftEntry:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise SnapshotError("bad_raft_meta", repr(raw)[:80])
    return bytes.fromhex(raw[0]), int(raw[1]), int(raw[2])


def _write_dump_header(out: BinaryIO, raft_data: Sequence[Any]) -> None:
    last, prev, cluster = raft_data
    meta = json.dumps(
        {
            "last": _entry_json(last),
            "prev": _entry_json(prev),
            "cluster": sorted(str(node.id) for node in cluster),
        }
    ).encode()
    out.write(_DUMP_HEADER.pack(DUMP_MAGIC, DUMP_VERSION, len(meta)) + meta)


def _read_dump_header(f: BinaryIO) -> tuple[RaftEntry, RaftEntry, list[str], int]:
    """Raft data and the store snapshot's applied index; leaves ``f`` at the
    start of the store stream."""
    head = f.read(_DUMP_HEADER.size)
    if len(head) != _DUMP_HEADER.size:
        raise SnapshotError("truncated", "raft dump header")
    magic, version, n = _DUMP_HEADER.unpack(head)
    if magic != DUMP_MAGIC or version != DUMP_VERSION:
        raise SnapshotError("bad_magic", f"not a raft dump (version {version})")
    try:
        meta = json.loads(f.read(n))
        last, prev = _entry_of(meta["last"]), _entry_of(meta["prev"])
        cluster = [str(a) for a in meta["cluster"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError("bad_raft_meta", str(exc)) from None
    snap_index = peek_index(f)
    if snap_index is None:
        raise SnapshotError("bad_magic", "no store snapshot after the raft data")
    return last, prev, cluster, snap_index


# -- the replicated class ----------------------------------------------------------------


class _Machine(DurableSyncObj):
    """The SyncObj: one replicated method, nothing else replicated; its
    journal is synced before it is acted on (hub/state/journal.py)."""

    def __init__(
        self,
        owner: RaftNode,
        address: str,
        peers: Sequence[str],
        conf: SyncObjConf,
        journal: DurableJournal,
    ) -> None:
        self._owner = owner
        super().__init__(address, peers, conf, journal)

    @replicated  # type: ignore[untyped-decorator]
    def apply_entry(self, entry: bytes) -> list[ApplyResult]:
        # pysyncobj applies committed entries in order, from its applied
        # index + 1, and increments the applied index after this returns
        # (hub/state/DESIGN.md "The replicated class").
        return self._owner._apply(self, self.raftLastApplied + 1, entry)


class RaftNode:
    """One hub replica: the store in ``data_dir/store``, pysyncobj's journal
    and dump beside it, and the asyncio bridge."""

    def __init__(
        self,
        address: str,
        peers: Sequence[str],
        data_dir: str | os.PathLike[str],
        secret: str | None,
        *,
        snapshot_min_entries: int = 10_000,
        snapshot_min_time_s: float = 3600.0,
        snapshot_format: str = "image",
        timing: RaftTiming | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        durable_journal: bool = True,
    ) -> None:
        if not secret:
            raise SecretError(
                "missing_secret",
                "a cluster secret is mandatory: pysyncobj unpickles what peers send",
            )
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise SecretError("short_secret", f"at least {MIN_SECRET_BYTES} bytes")
        if snapshot_format not in ("image", "stream"):
            raise ValueError(f"snapshot_format: expected image or stream, not {snapshot_format!r}")
        timing = timing or RaftTiming()
        self.address = address
        # The store, journal and dump hold device keys and password hashes:
        # 0600 files in a 0700 folder (hub/core/fsutil.py).
        self.data_dir = private_dir(Path(data_dir))
        self._dump = self.data_dir / DUMP_FILE
        self._partial = self.data_dir / (DUMP_FILE + ".partial")
        self._cleanup_dump_files()
        self.store = Store(self.data_dir / STORE_DIR, map_size)
        try:
            # durable_journal off: pysyncobj's own behaviour, no fsync (for
            # measuring the cost only; hub/state/DESIGN.md, the power-loss window).
            self.journal = DurableJournal(self.data_dir / JOURNAL_FILE, durable=durable_journal)
        except BaseException:
            self.store.close()
            raise
        self._store_lock = threading.Lock()  # held by restore and by read()
        self._halted: BaseException | None = None
        self._closed = False
        self._snap_lock = threading.Lock()
        self._snap_worker: threading.Thread | None = None
        self._snap_state = SERIALIZER_STATE.NOT_SERIALIZING
        self._snap_error: BaseException | None = None
        self._snap_cancelled = False
        self.snapshot_format = snapshot_format
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        # Called on pysyncobj's thread after each apply, and with an empty
        # list after a snapshot install (everything may have changed). It must
        # not block or raise: hand the results to the event loop.
        self.on_applied: Callable[[list[ApplyResult]], None] | None = None
        conf = SyncObjConf(
            password=secret,
            fullDumpFile=str(self._dump),
            serializer=self._serialize,
            deserializer=self._deserialize,
            serializeChecker=self._serialize_state,
            dynamicMembershipChange=True,
            logCompactionMinEntries=snapshot_min_entries,
            logCompactionMinTime=snapshot_min_time_s,
            appendEntriesPeriod=timing.append_entries_period,
            raftMinTimeout=timing.election_min,
            raftMaxTimeout=timing.election_max,
            connectionTimeout=timing.connection_timeout,
            connectionRetryTime=timing.connection_retry,
            leaderFallbackTimeout=timing.leader_fallback,
            autoTickPeriod=timing.tick,
            # Send append_entries as soon as a command is queued or applied,
            # instead of at the next appendEntriesPeriod (up to 50 ms, twice per
            # commit seen by a follower). Ingest already groups uplink batches
            # into one entry, so pysyncobj's own batching only added latency.
            appendEntriesUseBatch=False,
        )
        try:
            self._machine = _Machine(self, address, peers, conf, self.journal)
        except ImportError as exc:  # pysyncobj needs `cryptography` for password=
            self.journal._destroy()
            self.store.close()
            raise SecretError("no_crypto", f"{exc}: pip install cryptography") from exc
        except BaseException:
            self.journal._destroy()
            self.store.close()
            raise
        # Apply waiting for space (a full map or disk, under the daemon's full
        # policy) holds pysyncobj's thread: a leader steps down first.
        self.store.on_full = self._store_full
        make_private(self.data_dir)  # what older releases or pysyncobj made 0644
        self.journal_behind_store = self._check_journal()

    def _check_journal(self) -> int:
        """The power-loss window (hub/state/DESIGN.md): LMDB applied entries that
        the journal no longer holds (a journal written without syncs, before
        durable_journal or with it off). Detected and reported, not repaired."""
        try:
            last = int(self.journal[-1][1])
        except IndexError:
            return 0
        applied = self.store.applied_index()
        if applied <= last:
            return 0
        log.critical(
            "raft journal ends at index %d but the store applied up to %d: the journal lost "
            "writes (a power cut?). This node may diverge; restore it from a healthy replica "
            "(hub/state/DESIGN.md, the power-loss window)",
            last,
            applied,
        )
        return applied - last

    # -- apply (pysyncobj's thread) --

    def _apply(self, machine: _Machine, index: int, entry: bytes) -> list[ApplyResult]:
        if self._halted is not None:
            raise self._halted
        try:
            # The tick already synced; this keeps LMDB from ever holding an
            # entry the journal could lose, whatever pysyncobj's order.
            self.journal.sync()
            results = self.store.apply([(index, entry)])
        except BaseException as exc:
            # Skipping this entry would diverge from the replicas that applied
            # it: stop applying, leave the node (hub/state/DESIGN.md).
            self._halted = exc
            log.critical("apply of raft index %d failed, node stops: %r", index, exc)
            machine.destroy()
            raise
        self._notify(results)
        return results

    def _store_full(self, why: str) -> None:
        self._machine.step_down(why)

    def _notify(self, results: list[ApplyResult]) -> None:
        hook = self.on_applied
        if hook is not None:
            try:
                hook(results)
            except Exception:  # a listener's bug must not stop the replica
                log.exception("on_applied hook failed")

    # -- snapshots (pysyncobj's thread, except the writer) --

    def _cleanup_dump_files(self) -> None:
        """Leftovers of a snapshot that did not finish (see _serialize)."""
        for p in (self._partial, self.data_dir / (DUMP_FILE + ".tmp")):
            p.unlink(missing_ok=True)
        if self._dump.exists() and self._dump.stat().st_size == 0:
            self._dump.unlink()  # the first snapshot's placeholder

    def _serialize(self, tmp_name: str, raft_data: Sequence[Any]) -> None:
        """pysyncobj's serializer: pin the store's view here, where nothing
        applies, and write it from a thread. pysyncobj renames ``tmp_name``
        over the dump as soon as this returns, so ``tmp_name`` is made a hard
        link of the current dump (the rename is then a no-op) or, before the
        first snapshot, an empty placeholder; the real dump replaces it in
        _serialize_state, once it is complete and synced."""
        tmp = Path(tmp_name)
        tmp.unlink(missing_ok=True)
        if self._dump.exists():
            os.link(self._dump, tmp)
        else:
            tmp.touch()
        snap = self.store.snapshot()
        with self._snap_lock:
            self._snap_state = SERIALIZER_STATE.SERIALIZING
            self._snap_error = None
            self._snap_cancelled = False
            self._snap_worker = threading.Thread(
                target=self._write_dump, args=(snap, list(raft_data)), name="raft-snapshot"
            )
            self._snap_worker.start()

    def _write_dump(self, snap: Snapshot, raft_data: list[Any]) -> None:
        try:
            with snap, open(self._partial, "w+b", opener=private_opener) as out:
                _write_dump_header(out, raft_data)
                if self.snapshot_format == "stream":
                    snap.write_to(out)
                else:
                    try:
                        snap.write_image(out)  # LMDB's compacting copy, off the GIL
                    except lmdb.Error as exc:
                        log.warning("raft snapshot: LMDB could not copy (%s); a stream", exc)
                        snap.write_to(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException as exc:
            log.exception("raft snapshot failed")
            self._snap_error = exc

    def _serialize_state(self) -> int:
        """pysyncobj's serializeChecker: SUCCESS or FAILED once per snapshot."""
        with self._snap_lock:
            worker = self._snap_worker
            if worker is None or worker.is_alive():
                return int(self._snap_state)
            self._snap_worker = None
            self._snap_state = SERIALIZER_STATE.NOT_SERIALIZING
            tmp = self.data_dir / (DUMP_FILE + ".tmp")
            tmp.unlink(missing_ok=True)
            if self._snap_error is None and not self._snap_cancelled:
                os.replace(self._partial, self._dump)
                fsync_dir(self.data_dir)
                self.snapshots_taken += 1
                return int(SERIALIZER_STATE.SUCCESS)
            self._partial.unlink(missing_ok=True)
            if self._dump.exists() and self._dump.stat().st_size == 0:
                self._dump.unlink()
            return int(SERIALIZER_STATE.FAILED)

    def _deserialize(self, name: str) -> tuple[RaftEntry, RaftEntry, list[TCPNode]]:
        """pysyncobj's deserializer: at startup (the node's own dump) and
        when a leader sent one. Installs the store snapshot unless the store
        already holds that index (then it is at least as new)."""
        with self._snap_lock:
            worker = self._snap_worker
            if worker is not None:
                self._snap_cancelled = True
        if worker is not None:
            worker.join()  # its read transaction must end before a restore
        with open(name, "rb") as f:
            last, prev, cluster, snap_index = _read_dump_header(f)
            if self.store.applied_index() < snap_index:
                with self._store_lock:
                    self.store.restore(f)
                self.snapshots_installed += 1
                log.info("installed snapshot at store index %d (raft %d)", snap_index, last[1])
                self._notify([])
        return last, prev, [TCPNode(a) for a in cluster]

    # -- reads (any thread) --

    def read(self, fn: Callable[[Store], T]) -> T:
        """Run a read on the store, never during a snapshot install."""
        with self._store_lock:
            return fn(self.store)

    def status(self) -> RaftStatus:
        m = self._machine
        leader = m._getLeader()
        return RaftStatus(
            address=self.address,
            ready=bool(m.isReady()),
            leader=None if leader is None else str(leader.id),
            is_leader=bool(m._isLeader()),
            term=int(m.raftCurrentTerm),
            commit_index=int(m.raftCommitIndex),
            applied_index=int(m.raftLastApplied),
            store_applied_index=self.read(Store.applied_index),
            snapshots_taken=self.snapshots_taken,
            snapshots_installed=self.snapshots_installed,
            halted="" if self._halted is None else repr(self._halted),
            journal_behind_store=self.journal_behind_store,
            journal_flushes=self.journal.flushes,
            journal_flush_seconds=self.journal.flush_seconds,
            journal_room=self.journal.room,
            disk_full_step_downs=m.disk_full_step_downs,
        )

    @property
    def is_ready(self) -> bool:
        return bool(self._machine.isReady())

    @property
    def leader(self) -> str | None:
        node = self._machine._getLeader()
        return None if node is None else str(node.id)

    def raft_status(self) -> dict[str, Any]:
        """pysyncobj's own status dict, nodes as addresses. It is read from
        pysyncobj's fields while its thread runs: retried if a dict changed
        size under it."""
        for _ in range(5):
            with contextlib.suppress(RuntimeError):
                raw = self._machine.getStatus()
                return {k: (str(v.id) if isinstance(v, TCPNode) else v) for k, v in raw.items()}
        raise NotReady("busy", "raft status kept changing")

    def compact_now(self) -> None:
        """Take a snapshot and compact the log at the next tick."""
        self._machine.forceLogCompaction()

    # -- the asyncio bridge --

    async def propose(self, entry: bytes, timeout: float = 5.0) -> tuple[ApplyResult, ...]:
        """Commit ``entry`` (hub/state/entries.py) and return what apply did on
        this node: one ApplyResult, or one per part of a GROUP entry. Any node
        may propose; pysyncobj forwards to the leader."""
        res = await self._call(
            lambda cb: self._machine.apply_entry(bytes(entry), callback=cb), timeout
        )
        return tuple(res)

    async def add_node(self, address: str, timeout: float = 10.0) -> None:
        await self._call(lambda cb: self._machine.addNodeToCluster(address, callback=cb), timeout)

    async def remove_node(self, address: str, timeout: float = 10.0) -> None:
        await self._call(
            lambda cb: self._machine.removeNodeFromCluster(address, callback=cb), timeout
        )

    async def _call(
        self, start: Callable[[Callable[[Any, int], None]], None], timeout: float
    ) -> Any:
        if self._closed:
            raise NotReady("closed")
        if self._halted is not None:
            raise NotReady("halted", repr(self._halted))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, err: int) -> None:  # pysyncobj's thread
            # Never raise here: pysyncobj calls this inside its apply loop.
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve, fut, result, err)

        start(done)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise DeadlineExceeded(timeout) from None

    def _resolve(self, fut: asyncio.Future[Any], result: Any, err: int) -> None:
        """The one place where pysyncobj's results enter the event loop."""
        if fut.done():
            return
        if err == FAIL_REASON.SUCCESS:
            fut.set_result(result)
        else:
            fut.set_exception(_failure(err, self.leader))

    # -- lifecycle --

    def close(self) -> None:
        """Stop pysyncobj (joins its thread), then close the store."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._machine.destroy_synchronous()
        worker = self._snap_worker
        if worker is not None:
            worker.join()
        self.store.close()


def raft_timing(cfg: RaftConfig) -> RaftTiming:
    """pysyncobj's timers from the configured election timeout."""
    lo, hi = cfg.election_min_ms / 1000, cfg.election_max_ms / 1000
    return RaftTiming(
        append_entries_period=min(0.05, lo / 4),
        election_min=lo,
        election_max=hi,
        connection_timeout=max(1.0, hi * 2.5),
        connection_retry=min(1.0, lo),
        leader_fallback=max(2.0, hi * 3.5),
    )


def staggered(entries: int, node_id: str) -> int:
    """This node's log compaction threshold: the configured one plus up to
    half again, fixed per node id. Nodes that commit the same log would
    otherwise all copy their store in the same second (bench ingest saw the
    p99 commit latency jump there)."""
    if entries < 1000:  # small logs (tests): compact exactly where configured
        return entries
    return entries + zlib.crc32(node_id.encode()) % (entries // 2 + 1)
