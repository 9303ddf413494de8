"""Backups of the replicated store, and restoring them into a new cluster.

    stream = backup.SnapshotStream(raft)   # hub/http/routes/backup.py: GET /v1/backup (admin)
    summary = backup.read_snapshot(open("store.snap", "rb"))   # verify, hash, registry
    backup.restore_node(cfg, Path("backup"), plan)             # one stopped, empty node

`aiot backup` and `aiot restore` (tools/cli/ops.py) drive these; the design,
with what a restore keeps and loses, is in hub/state/DESIGN.md ("Backup and
restore") and the operator's steps in docs/deploy-raspberry-pi.md.

**The stream.** ``GET /v1/backup`` (hub/http/routes/backup.py) answers the
store's snapshot stream (hub/state/DESIGN.md "Snapshots": the same bytes Raft
compaction writes and a lagging follower installs) from one LMDB read
transaction, so it is one consistent view whose ``meta/applied_index`` is the
Raft index it reflects. Headers give the node, that applied index and the
node's Raft term when the view was taken. The view is pinned under the
RaftNode's store lock, and the stream is written from a worker thread that
holds the lock while it walks LMDB and lets go of it while a chunk waits to be
sent: reads by the rest of the daemon (ingest's registry lookups) wait at most
one chunk, and a snapshot install, which closes the LMDB environment, can
never run while a cursor is in use; if one comes between two chunks the stream
ends early and the client sees a truncated stream (no digest), never a wrong
one.

**A restore** makes each node of a new cluster start as if it had just
installed a snapshot at Raft index ``L = max(applied_index, 2)``: its store
is the backup (applied index ``N``), its Raft journal holds two no-op
entries at ``L - 1`` and ``L`` in term ``T``, its journal meta says commit
index ``L``, current term ``T``, no vote, and its ``raft.dump`` is that
snapshot (the entries' header, then the stream). pysyncobj loads the dump at
start, keeps the journal (its two entries match the dump's), and sets its
applied index to ``L``; the store applies nothing at or below ``N``, and the
new log's first real entry is ``L + 1``. A node that later joins or falls
behind gets that dump, which carries the whole restored state: the new
cluster's log never needs entries below ``L``. ``T`` is the source's term
plus ``term_gap`` (1000 by default): commands carry the term as a fencing
token and devices refuse a term below the highest they have seen, so the
restored cluster's terms must pass whatever the source reached, also after
the backup was taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

from pysyncobj.journal import createJournal
from pysyncobj.node import TCPNode

from hub.core.config import HubConfig
from hub.core.fsutil import fsync_dir, make_private, private_dir, sha256_file
from hub.state import entries as e
from hub.state.errors import SnapshotError
from hub.state.raft import DUMP_FILE, JOURNAL_FILE, STORE_DIR, RaftNode, _write_dump_header
from hub.state.records import NODE_LOCAL_META, UNHASHED_TABLES
from hub.state.snapshot import SNAPSHOT_MAGIC, SNAPSHOT_VERSION, Snapshot
from hub.state.store import DATA_FILE, Store

log = logging.getLogger("hub.backup")

BACKUP_FORMAT: Final = 1
MANIFEST: Final = "manifest.json"
SNAPSHOT_FILE: Final = "store.snap"
REGISTRY_FILE: Final = "registry.json"
MODELS_DIR: Final = "models"
DEFAULT_TERM_GAP: Final = 1000
NO_OP: Final = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP: never applied, only indexed

_QUEUE_CHUNKS: Final = 8  # ~1 MiB each (Snapshot.write_to flushes at 1 MiB)
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class BackupError(Exception):
    """A backup that cannot be read or restored; the message says why."""


# -- the stream ------------------------------------------------------------------------------

_END: Final = object()


class _Cancelled(Exception):
    pass


def _stream_worker(
    raft: RaftNode, snap: Snapshot, out: queue.Queue[object], cancelled: threading.Event
) -> None:
    """Write the snapshot into ``out`` chunk by chunk (see the module doc)."""
    lock: threading.Lock = raft._store_lock  # the lock restore takes; see the module doc

    class Chunks:
        def write(self, b: bytes) -> int:
            lock.release()
            try:
                while True:
                    if cancelled.is_set():
                        raise _Cancelled()
                    try:
                        out.put(bytes(b), timeout=0.5)
                        return len(b)
                    except queue.Full:
                        continue
            finally:
                lock.acquire()

    lock.acquire()
    try:
        snap.write_to(Chunks())  # type: ignore[arg-type]  # only write() is used
        end: object = _END
    except _Cancelled:
        end = _END
    except BaseException as exc:  # the store closed under us (a snapshot install)
        log.warning("backup stream failed: %r", exc)
        end = exc
    finally:
        with contextlib.suppress(Exception):
            snap.close()
        lock.release()
    with contextlib.suppress(queue.Full):
        out.put(end, timeout=5)


def _next(out: queue.Queue[object], cancelled: threading.Event) -> object:
    while not cancelled.is_set():
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            continue
    return _END


class SnapshotStream:
    """One consistent view of the store, streamed chunk by chunk from a worker
    thread (see the module doc). Made on the event loop; ``chunks()`` yields
    the bytes, and ``cancel()`` (also at the end of ``chunks()``) lets the
    worker go."""

    def __init__(self, raft: RaftNode) -> None:
        self.term = raft.status().term
        snap = raft.read(lambda s: s.snapshot())
        self._out: queue.Queue[object] = queue.Queue(_QUEUE_CHUNKS)
        self._cancelled = threading.Event()
        worker = threading.Thread(
            target=_stream_worker,
            args=(raft, snap, self._out, self._cancelled),
            name="backup",
            daemon=True,
        )
        worker.start()
        self.index = snap.applied_index
        try:  # the LMDB file size, an upper bound of the stream's
            self.estimated_bytes = os.stat(raft.data_dir / STORE_DIR / DATA_FILE).st_size
        except OSError:
            self.estimated_bytes = 0
        log.info("backup of store index %d started", self.index)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The stream's bytes; it ends early (no digest) if the store closed."""
        try:
            while True:
                item = await asyncio.to_thread(_next, self._out, self._cancelled)
                if item is _END:
                    log.info("backup of store index %d streamed", self.index)
                    return
                if isinstance(item, BaseException):
                    return  # truncated: the client finds no digest and refuses it
                assert isinstance(item, bytes)
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._cancelled.set()


# -- reading a snapshot stream -------------------------------------------------------------


@dataclass(slots=True)
class SnapshotSummary:
    """What a verified snapshot stream holds."""

    applied_index: int
    content_hash: str  # as Store.content_hash() of a store holding it
    table_hashes: dict[str, str]  # per table, the same records (for comparisons)
    rows: dict[str, int]  # records per table
    registry: dict[str, Any] = field(default_factory=dict)  # for people: no secrets


class _Reader:
    """Reads the stream, hashing every byte before the digest."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.digest = hashlib.sha256()

    def take(self, n: int) -> bytes:
        b = self._f.read(n)
        if len(b) != n:
            raise SnapshotError("truncated", f"wanted {n} bytes, got {len(b)}")
        self.digest.update(b)
        return b

    def trailer(self) -> bytes:
        b = self._f.read(32)
        if len(b) != 32:
            raise SnapshotError("truncated", "no digest at the end")
        if self._f.read(1):
            raise SnapshotError("trailing_bytes", "bytes after the digest")
        return b


def records(f: IO[bytes]) -> Iterator[tuple[str, bytes, bytes]]:
    """(table, key, value) of a snapshot stream, in order; the digest and the
    framing are checked, and SnapshotError raised, by the end of iteration.
    The first item is ("", b"applied_index", u64) from the header."""
    r = _Reader(f)
    if r.take(8) != SNAPSHOT_MAGIC:
        raise SnapshotError("bad_magic", "not a store snapshot")
    version, applied = struct.unpack(">HQ", r.take(10))
    if version != SNAPSHOT_VERSION:
        raise SnapshotError("bad_version", f"snapshot version {version}")
    yield "", b"applied_index", _U64.pack(applied)
    tag = r.take(1)
    last = ""
    while tag == b"T":
        name = r.take(r.take(1)[0]).decode("ascii", "replace")
        if name <= last:
            raise SnapshotError("bad_table", f"{name!r} after {last!r}")
        last = name
        yield name, b"", b""  # the table starts (empty key: never a real record)
        tag = r.take(1)
        while tag == b"K":
            k = r.take(_U32.unpack(r.take(4))[0])
            v = r.take(_U32.unpack(r.take(4))[0])
            yield name, k, v
            tag = r.take(1)
    if tag != b"E":
        raise SnapshotError("bad_tag", repr(tag))
    if r.trailer() != r.digest.digest():
        raise SnapshotError("bad_digest", "snapshot digest does not match")


def read_snapshot(f: IO[bytes]) -> SnapshotSummary:
    """Verify a snapshot stream; its content hash, per-table hashes and counts,
    and the registry decoded for people (device keys and password hashes left
    out)."""
    total = hashlib.sha256()
    tables: dict[str, Any] = {}
    rows: dict[str, int] = {}
    applied = 0
    people = _Registry()
    for table, k, v in records(f):
        if not table:
            applied = _U64.unpack(v)[0]
            continue
        head = b"T" + bytes([len(table)]) + table.encode()
        hashed = table not in UNHASHED_TABLES  # as Store.content_hash
        if not k:
            if hashed:
                total.update(head)
            tables[table] = hashlib.sha256(head)
            rows[table] = 0
            continue
        if table == "meta" and k in NODE_LOCAL_META:
            continue
        rec = _U32.pack(len(k)) + k + _U32.pack(len(v)) + v
        if hashed:
            total.update(rec)
        tables[table].update(rec)
        rows[table] += 1
        people.add(table, k, v)
    return SnapshotSummary(
        applied,
        total.hexdigest(),
        {t: h.hexdigest() for t, h in tables.items()},
        rows,
        people.json(rows),
    )


class _Registry:
    """The registry tables decoded for registry.json."""

    def __init__(self) -> None:
        self.devices: list[dict[str, Any]] = []
        self.users: list[dict[str, Any]] = []
        self.models: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.readings: dict[str, int] = {}
        self.undecodable: dict[str, int] = {}

    def add(self, table: str, k: bytes, v: bytes) -> None:
        try:
            if table == "devices":
                d = e.unpack_device(e.Unpacker(v, 1))
                self.devices.append(
                    {
                        "device_id": d.device_id,
                        "owner": d.owner,
                        "limit_w": d.limit_w,
                        "capabilities": [c.action for c in d.capabilities],
                        "registered_at_ms": _U64.unpack(v[-8:])[0],
                    }
                )
            elif table == "users":
                u = e.unpack_user(e.Unpacker(v, 1))
                self.users.append(
                    {"name": u.name, "role": u.role.name.lower(), "devices": list(u.devices)}
                )
            elif table == "models":
                p = e.Unpacker(v, 1)
                version, sha, size, source, at = p.str8(), p.blob8(), p.u64(), p.str16(), p.u64()
                self.models.append(
                    {
                        "name": k.decode(),
                        "version": version,
                        "sha256": sha.hex(),
                        "size": size,
                        "source": source,
                        "at_ms": at,
                    }
                )
            elif table == "nodes":
                p = e.Unpacker(v, 1)
                raft, broker, http = e.unpack_node_addresses(p)
                self.nodes.append(
                    {"node_id": k.decode(), "raft": raft, "broker": broker, "http": http}
                )
            elif table == "readings":
                dev = k.split(b"\0", 1)[0].decode()
                self.readings[dev] = self.readings.get(dev, 0) + 1
        except (e.EntryError, ValueError, struct.error, UnicodeDecodeError):
            self.undecodable[table] = self.undecodable.get(table, 0) + 1

    def json(self, rows: dict[str, int]) -> dict[str, Any]:
        for d in self.devices:
            d["readings"] = self.readings.get(d["device_id"], 0)
        return {
            "devices": self.devices,
            "users": self.users,
            "models": self.models,
            "nodes": self.nodes,
            "commands": rows.get("ledger", 0),
            "decisions": rows.get("decisions", 0),
            **({"undecodable": self.undecodable} if self.undecodable else {}),
        }


# -- the backup directory ------------------------------------------------------------------


def manifest_files(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` but the manifest."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def load_manifest(root: Path) -> dict[str, Any]:
    """The manifest, once every file it lists matches its sha256 and size.
    Raises BackupError naming the first file that does not."""
    path = root / MANIFEST
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror}: not a backup directory") from None
    try:
        doc = json.loads(raw)  # bytes: a bad encoding is a ValueError here too
    except ValueError as exc:
        raise BackupError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{path}: not an aiot backup of format {BACKUP_FORMAT}")
    files = doc.get("files")
    if not isinstance(files, dict) or SNAPSHOT_FILE not in files:
        raise BackupError(f"{path}: lists no {SNAPSHOT_FILE}")
    for rel, want in files.items():
        file = root / rel
        if ".." in Path(rel).parts or not file.is_file():
            raise BackupError(f"{file}: missing (listed in the manifest)")
        got = sha256_file(file)
        if got != want.get("sha256"):
            raise BackupError(
                f"{file}: sha256 {got} does not match the manifest's {want.get('sha256')}: "
                "the backup was changed or damaged; refusing it"
            )
    return doc


# -- restore --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What every node of the new cluster gets (the same on each)."""

    store_index: int  # the snapshot's applied index N
    raft_index: int  # L = max(N, 2): the new log starts after it
    term: int  # T: the source's term plus the gap
    content_hash: str

    @classmethod
    def of(cls, manifest: dict[str, Any], term_gap: int = DEFAULT_TERM_GAP) -> RestorePlan:
        src = manifest["source"]
        n = int(src["applied_index"])
        return cls(n, max(n, 2), int(src["term"]) + term_gap, str(manifest["content_hash"]))


def _empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _answers(host: str, port: int) -> bool:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host.strip("[]")
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def check_target(cfg: HubConfig) -> None:
    """Refuse a node that runs or whose data directory holds anything."""
    for what, addr in (("raft", cfg.raft.bind), ("http", cfg.http.bind)):
        if _answers(addr.host, addr.port):
            raise BackupError(
                f"{cfg.source}: something listens on {what} {addr}: stop {cfg.node_id} first"
            )
    if not _empty_or_missing(cfg.data_dir):
        raise BackupError(
            f"{cfg.source}: data directory {cfg.data_dir} is not empty: a restore builds a new "
            "cluster from empty nodes (move the old data away first)"
        )


def cluster_of(cfg: HubConfig) -> list[str]:
    """Every member's Raft address, as the node's config says."""
    return sorted({str(cfg.raft.bind), *(str(p) for p in cfg.raft.peers)})


class _Progress:
    """A read-only file that reports how far it was read."""

    def __init__(self, f: BinaryIO, advance: Any) -> None:
        self._f = f
        self._advance = advance

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        if self._advance is not None:
            self._advance(len(b))
        return b


def restore_node(cfg: HubConfig, root: Path, plan: RestorePlan, advance: Any = None) -> str:
    """Install the backup in ``root`` into the stopped, empty node of ``cfg``:
    store, journal, dump and models. Returns the installed store's content
    hash (checked against the plan's). ``advance(n)`` is called with bytes
    read, for a progress bar (two passes over the snapshot)."""
    check_target(cfg)
    snap = root / SNAPSHOT_FILE
    data = cfg.data_dir
    private_dir(data)
    try:
        with open(snap, "rb") as f:
            n = Store.install(data / STORE_DIR, _Progress(f, advance))  # type: ignore[arg-type]
        if n != plan.store_index:
            raise BackupError(f"{snap}: applied index {n}, the manifest says {plan.store_index}")
        with Store(data / STORE_DIR) as store:
            got = store.content_hash()
        if got != plan.content_hash:
            raise BackupError(f"{cfg.node_id}: restored content hash {got} != {plan.content_hash}")
        _write_journal(data / JOURNAL_FILE, plan)
        _write_dump(data / DUMP_FILE, snap, plan, cluster_of(cfg), advance)
        models = root / MODELS_DIR
        if models.is_dir():
            shutil.copytree(models, data / MODELS_DIR)
        make_private(data)
        fsync_dir(data)
    except BaseException:
        shutil.rmtree(data, ignore_errors=True)  # it was empty: leave it so
        raise
    return got


def _entries(plan: RestorePlan) -> tuple[tuple[bytes, int, int], tuple[bytes, int, int]]:
    prev = (NO_OP, plan.raft_index - 1, plan.term)
    last = (NO_OP, plan.raft_index, plan.term)
    return prev, last


def _write_journal(path: Path, plan: RestorePlan) -> None:
    """pysyncobj's own journal class writes the two entries and the meta
    (term, no vote, commit index), so the files are exactly its format."""
    prev, last = _entries(plan)
    journal = createJournal(str(path))
    try:
        if len(journal) != 0:
            raise BackupError(f"{path}: a journal already exists")
        journal.add(*prev)
        journal.add(*last)
        journal.setRaftCommitIndex(plan.raft_index)
        journal.setCurrentTerm(plan.term, None)  # stores the meta file synchronously
        journal.flush()
    finally:
        journal._destroy()
    for p in (path, Path(str(path) + ".meta")):
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _write_dump(
    path: Path, snap: Path, plan: RestorePlan, cluster: list[str], advance: Any
) -> None:
    prev, last = _entries(plan)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out, open(snap, "rb") as f:
        _write_dump_header(out, (last, prev, [TCPNode(a) for a in cluster]))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            out.write(chunk)
            if advance is not None:
                advance(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
