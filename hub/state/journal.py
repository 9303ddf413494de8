"""pysyncobj's Raft journal, made durable before anything acts on it.

pysyncobj 0.3.17's ``FileJournal`` writes entries through an mmap it never
syncs, and its ``MetaStorer`` renames the term and vote into place without an
fsync. A power cut of a majority could then lose entries the cluster had
committed and acknowledged, or let a node vote twice in one term
(hub/state/DESIGN.md, "Durability and the power-loss window").
``DurableJournal`` keeps pysyncobj's file format (``raft.journal`` and its
``.meta``; files written by either class load in the other) and adds:

- **Entries in groups.** ``add`` writes the record into the page cache and
  marks the journal dirty; ``sync`` (one ``fdatasync`` of the records, then
  the header's end offset, then a second ``fdatasync``) makes every entry
  added so far durable. The header is the commit point: a cut in the middle
  of a sync leaves the old end, and the records behind it intact.
- **Deletes at once.** ``deleteEntriesFrom`` and ``clear`` move the end back
  and sync before returning (later records overwrite what the durable header
  still covers otherwise); ``deleteEntriesTo`` (log compaction) writes the
  kept entries to a new file, syncs it and renames it over the journal.
- **Term and vote at once.** ``setCurrentTerm`` writes the meta to a
  temporary file, fsyncs it, renames it and fsyncs the directory before it
  returns; so does the once-a-second save of the commit index, because a meta
  file that did not reach the disk would take the term and vote with it.
- **A failed sync is final** (``JournalError("sync_failed")``): after a
  failed fsync the kernel may have dropped the pages, and a retry could
  succeed without them; so the node sends nothing more and its apply halts.
- **A full disk waits** (``ENOSPC``, ``EDQUOT``, a short write): the record
  or the meta is written again until there is room, never skipped, while
  pysyncobj's thread waits (so the node sends and acknowledges nothing).
  ``on_no_room`` runs before the wait and ``on_room`` after it:
  ``DurableSyncObj`` steps down as leader in the first, so the nodes with
  room elect another and keep committing, and restarts its election timer
  in the second (hub/state/DESIGN.md, "A full store").

Records are written with ``pwrite``, not through a memory map: an ``msync``
is a ranged ``fdatasync`` anyway, and plain writes let the header reach the
disk only after the records it covers.

**When ``sync`` runs** (``DurableSyncObj``). Every Raft message pysyncobj
sends goes through its transport's ``send``; ``SyncingTransport.send`` syncs
first. So no message leaves while an entry is unsynced: not a follower's
``next_node_idx`` (its AppendEntries reply, the only message by which a
follower acknowledges entries), not the leader's ``append_entries`` (the
leader counts its own copy in the commit quorum, and no follower can
acknowledge an entry before receiving it), not a ``response_vote`` or
``request_vote`` (whose last log index and term describe the journal), nor
``apply_command_response``. Hooking pysyncobj's tick instead would not do:
a follower answers ``append_entries`` inside the poll, in the same call that
added the entries, before any later tick. A tick does matter for what
happens without a message: a single-node cluster commits its own entries
with no message at all. So ``_onTick`` syncs first, before pysyncobj's
commit and apply steps, and ``RaftNode`` syncs again before ``Store.apply``
(a no-op when clean), so LMDB never holds an entry the journal could lose,
and a commit-ack, which goes out only after apply, never acknowledges one.
What is not synced first: pysyncobj's connection handshake (an address) and
utility answers (status; add and remove answer after the change applied).
None acknowledges an entry.

The term and vote are synced inside ``setCurrentTerm``, which pysyncobj calls
before it sends the vote request or reply of that term.

``durable=False`` keeps the format and drops every fsync (pysyncobj's own
behaviour): for measuring the cost, and for checking that a fault campaign
notices the difference. ``flushes`` and ``flush_seconds`` count the syncs
(entry groups, deletes and meta writes) and their time; plain numbers written
by pysyncobj's thread only.

pysyncobj builds its journal with ``createJournal(conf.journalFile)`` inside
``SyncObj.__init__``, before anything can be swapped in. This module wraps
that one function, once, so that a ``Journal`` object passed as
``journalFile`` is used as it is; any other value goes to pysyncobj's own
``createJournal`` unchanged.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import pysyncobj.syncobj as _syncobj
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import (
    APP_NAME,
    APP_VERSION,
    FIRST_RECORD_OFFSET,
    JOURNAL_FORMAT_VERSION,
    NAME_SIZE,
    VERSION_SIZE,
    Journal,
)
from pysyncobj.pickle import dumps, loads, to_bytes
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.transport import TCPTransport

from hub.core.fsutil import fsync_dir
from protocol.errors import ReasonError

log = logging.getLogger("hub.raft.journal")

META_SUFFIX: Final = ".meta"
_HEADER_TAIL = struct.Struct("<II")  # format version, end of the last record
_SIZE = struct.Struct("<I")
_INDEX_TERM = struct.Struct("<QQ")
_RECORD_MIN: Final = _INDEX_TERM.size  # a record holds index, term, then the command

Entry = tuple[Any, int, int]  # pysyncobj's (command, index, term)


class JournalError(ReasonError):
    """A journal file this class cannot read: "foreign" (not pysyncobj's
    format) or "unreadable" (an I/O error); or "sync_failed": a sync failed
    once, and the journal refuses every later one (after a failed fsync the
    kernel may have dropped the pages, and a retry can succeed without them),
    so the node sends nothing more and its apply halts."""

    reasons = ("foreign", "unreadable", "sync_failed")


def _header(end: int) -> bytes:
    name = APP_NAME + b"\0" * (NAME_SIZE - len(APP_NAME))
    version = APP_VERSION + b"\0" * (VERSION_SIZE - len(APP_VERSION))
    head = bytes(name + version + _HEADER_TAIL.pack(JOURNAL_FORMAT_VERSION, end))
    assert len(head) == FIRST_RECORD_OFFSET
    return head


def _record(command: Any, index: int, term: int) -> bytes:
    body = _INDEX_TERM.pack(index, term) + bytes(to_bytes(command))
    size = _SIZE.pack(len(body))
    return size + body + size


class DurableJournal(Journal):  # type: ignore[misc]  # pysyncobj has no type hints
    """pysyncobj's journal interface over its file format, synced on demand."""

    def __init__(self, path: str | os.PathLike[str], durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self.flushes = 0
        self.flush_seconds = 0.0
        self._meta_path = Path(str(self.path) + META_SUFFIX)
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # where each entry's record starts
        self._end = FIRST_RECORD_OFFSET
        self._dirty = False
        self._meta_saved = True
        self._fd: int | None = None
        self._failed: OSError | None = None
        # A full disk (see _when_room): False while a write waits for room.
        self.room = True
        self.room_waits = 0  # writes that found the disk full
        # Called on pysyncobj's thread, inside the write: when it finds the
        # disk full (before it waits) and when it got written after waiting.
        self.on_no_room: Callable[[], None] | None = None
        self.on_room: Callable[[], None] | None = None
        self._open()
        self._meta = self._read_meta()
        # What the last sync made durable (as opened, when not durable).
        self.synced_index = self._last_index()
        self.synced_term: int = self.getCurrentTerm()
        self.synced_vote: Any = self.getVotedForNodeId()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> None:
        created = not self.path.exists()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError("unreadable", f"{self.path}: {exc}") from None
        self._fd = fd
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.pwrite(fd, _header(FIRST_RECORD_OFFSET), 0)
                if self.durable:
                    os.fsync(fd)
                    if created:
                        fsync_dir(self.path.parent)
                return
            data = os.pread(fd, size, 0)
            self._load(data)
        except BaseException:
            os.close(fd)
            self._fd = None
            raise

    def _load(self, data: bytes) -> None:
        """Read the records up to the header's end. A record that is cut short
        or does not follow its predecessor ends the journal there: a file
        written without syncs (pysyncobj's own class) can hold a header that
        got to disk ahead of its records."""
        if len(data) < FIRST_RECORD_OFFSET or not data.startswith(APP_NAME + b"\0"):
            raise JournalError("foreign", f"{self.path}: not a pysyncobj journal")
        version, end = _HEADER_TAIL.unpack_from(data, NAME_SIZE + VERSION_SIZE)
        if version != JOURNAL_FORMAT_VERSION:
            raise JournalError("foreign", f"{self.path}: journal format {version}, expected 1")
        pos = FIRST_RECORD_OFFSET
        problem = ""
        while pos < end:
            if pos + _SIZE.size + _RECORD_MIN + _SIZE.size > len(data):
                problem = "the file ends inside a record"
                break
            (size,) = _SIZE.unpack_from(data, pos)
            stop = pos + _SIZE.size + size
            if size < _RECORD_MIN or stop + _SIZE.size > len(data) or stop > end:
                problem = f"a record of {size} bytes does not fit"
                break
            if _SIZE.unpack_from(data, stop)[0] != size:
                problem = "a record's two lengths differ"
                break
            index, term = _INDEX_TERM.unpack_from(data, pos + _SIZE.size)
            if self._entries and index != self._entries[-1][1] + 1:
                problem = f"index {index} after {self._entries[-1][1]}"
                break
            command = data[pos + _SIZE.size + _RECORD_MIN : stop]
            self._entries.append((command, index, term))
            self._offsets.append(pos)
            pos = stop + _SIZE.size
        self._end = pos
        if problem:
            log.critical(
                "%s: %s at offset %d; the journal ends at index %s (%d bytes dropped). "
                "Entries past that point were never synced, so this node never "
                "acknowledged them if they were written with durable_journal on",
                self.path,
                problem,
                pos,
                self._last_index(),
                end - pos,
            )
            self._commit()

    def _read_meta(self) -> dict[str, Any]:
        try:
            raw = self._meta_path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise JournalError("unreadable", f"{self._meta_path}: {exc}") from None
        try:
            meta = loads(raw)
        except Exception:  # pysyncobj's pickle raises anything on garbage
            meta = None
        if not isinstance(meta, dict):
            # pysyncobj's own MetaStorer had no fsync: a cut can leave this.
            log.critical(
                "%s is unreadable (%d bytes): term and vote start from the journal's last "
                "entry; this node may vote twice in that term",
                self._meta_path,
                len(raw),
            )
            return {}
        return meta

    def _last_index(self) -> int:
        return int(self._entries[-1][1]) if self._entries else 0

    # -- syncing -------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Entries added since the last sync."""
        return self._dirty

    def sync(self) -> None:
        """Make every entry added so far durable (nothing when clean or when
        not durable)."""
        if self._dirty:
            self._commit()

    flush = sync  # the name pysyncobj's FileJournal gives it

    def _commit(self) -> None:
        """Records, then the header that covers them."""
        fd = self._require_fd()
        t0 = time.perf_counter()
        try:
            if self.durable:
                os.fdatasync(fd)
            os.pwrite(fd, _header(self._end), 0)
            if self.durable:
                os.fdatasync(fd)
        except OSError as exc:
            self._failed = exc
            log.critical("%s: sync failed, the node stops acknowledging: %s", self.path, exc)
            raise JournalError("sync_failed", f"{self.path}: {exc}") from exc
        if self.durable:
            self._count(t0)
            self.synced_index = self._last_index()
        self._dirty = False

    def _count(self, t0: float) -> None:
        self.flushes += 1
        self.flush_seconds += time.perf_counter() - t0

    def _require_fd(self) -> int:
        if self._failed is not None:
            raise JournalError("sync_failed", f"{self.path}: {self._failed}")
        if self._fd is None:
            raise JournalError("unreadable", f"{self.path}: the journal is closed")
        return self._fd

    # -- pysyncobj's Journal interface ---------------------------------------------------

    def add(self, command: Any, idx: int, term: int) -> None:
        record = _record(command, idx, term)
        fd, at = self._require_fd(), self._end

        def write() -> None:
            if os.pwrite(fd, record, at) != len(record):  # a short write: the disk filled
                raise OSError(errno.ENOSPC, "short write")

        self._when_room(write, self.path)
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        if self.durable:
            self._dirty = True
        else:
            self._commit()  # the header now, as pysyncobj's class does

    def clear(self) -> None:
        self.deleteEntriesFrom(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom < len(self._entries):
            self._end = self._offsets[max(entryFrom, 0)]
            del self._entries[entryFrom:]
            del self._offsets[entryFrom:]
        self._commit()

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Keep the entries from ``entryTo`` on: a new file renamed in."""
        self._require_fd()
        kept = self._entries[entryTo:]
        tmp = Path(str(self.path) + ".tmp")
        t0 = time.perf_counter()
        offsets: list[int] = []
        out = bytearray(_header(FIRST_RECORD_OFFSET))
        for command, index, term in kept:
            offsets.append(len(out))
            out += _record(command, index, term)
        end = len(out)
        out[:FIRST_RECORD_OFFSET] = _header(end)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, out)
            if self.durable:
                os.fsync(fd)
            os.replace(tmp, self.path)
            if self.durable:
                fsync_dir(self.path.parent)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self._entries, self._offsets, self._end = kept, offsets, end
        self._dirty = False
        if self.durable:
            self._count(t0)
            self.synced_index = self._last_index()

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd is None:
            return
        try:
            if self._failed is not None:
                return  # nothing more can be made durable
            self.sync()
            if not self._meta_saved:
                self._store_meta()
        finally:
            os.close(self._fd)
            self._fd = None

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_saved = False

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._store_meta()
        if votedForNodeId is not None:  # the observable of every vote (tools/chaos/votes.py)
            log.info("raft vote persisted: term %d for %s", term, votedForNodeId)

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("votedForNodeId", None)

    def onOneSecondTimer(self) -> None:
        if not self._meta_saved:
            self._store_meta()

    def _store_meta(self) -> None:
        """The meta whole or not at all: a temporary file, fsynced, renamed
        in, then the directory fsynced."""
        t0 = time.perf_counter()
        tmp = Path(str(self._meta_path) + ".tmp")
        data = dumps(self._meta)

        def write() -> None:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                if self.durable:
                    os.fsync(fd)  # a new file: a failure here leaves the old meta
            finally:
                os.close(fd)

        self._when_room(write, tmp)
        os.replace(tmp, self._meta_path)
        self._meta_saved = True
        if self.durable:
            fsync_dir(self._meta_path.parent)
            self._count(t0)
            self.synced_term = self.getCurrentTerm()
            self.synced_vote = self.getVotedForNodeId()

    # -- a full disk -------------------------------------------------------------------

    def _when_room(self, write: Callable[[], object], path: Path) -> None:
        """Run ``write`` until it finds room: a record or the meta that cannot
        be written yet (``ENOSPC``, ``EDQUOT``, a short write) is written when
        there is room again, never skipped. Pysyncobj's thread waits meanwhile,
        so the node sends nothing and acknowledges nothing it does not hold;
        ``on_no_room`` runs first (DurableSyncObj: a leader steps down),
        ``on_room`` once the write went through."""
        delay, tries = ROOM_FIRST_WAIT_S, 0
        while True:
            try:
                write()
                break
            except OSError as exc:
                if exc.errno not in ROOM_ERRNOS:
                    raise
                if tries == 0:
                    self.room = False
                    self.room_waits += 1
                    log.critical("%s: disk full, write retried until there is room: %s", path, exc)
                    self._call(self.on_no_room)
                elif tries % ROOM_LOG_EVERY == 0:
                    log.critical("%s: disk full, write retried %d times: %s", path, tries, exc)
            tries += 1
            time.sleep(delay)
            delay = min(delay * 2, MAX_ROOM_WAIT_S)
        if tries:
            self.room = True
            log.warning("%s: room again, written after %d retries", path, tries)
            self._call(self.on_room)

    @staticmethod
    def _call(hook: Callable[[], None] | None) -> None:
        if hook is None:
            return
        try:
            hook()
        except Exception:  # the write must still be retried, whatever the hook did
            log.exception("journal room hook failed")


ROOM_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
ROOM_FIRST_WAIT_S: Final = 0.25
# A retry is one write: cheap, so the node rejoins within a second of room.
MAX_ROOM_WAIT_S: Final = 1.0
ROOM_LOG_EVERY: Final = 60  # retries between two log lines while the disk stays full


# -- wiring into pysyncobj ---------------------------------------------------------------


class SyncingTransport(TCPTransport):  # type: ignore[misc]  # pysyncobj has no type hints
    """pysyncobj's TCP transport; every message waits for the journal's sync,
    and only a leader sends ``append_entries``."""

    def __init__(self, journal: Journal, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self.journal = journal
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        # A leader that stepped down for a full disk returns, once the record
        # it waited on is written, into pysyncobj code that goes on sending
        # as the leader it was: dropped, as a lost message would be.
        if _kind(message) == "append_entries" and not self._syncObj._isLeader():
            return False
        self.journal.sync()
        return bool(super().send(node, message))


def _kind(message: Any) -> Any:
    return message.get("type") if isinstance(message, dict) else None


class DurableSyncObj(SyncObj):  # type: ignore[misc]  # pysyncobj has no type hints
    """A SyncObj over ``journal``: it syncs before every message it sends
    (``transport_class``, a SyncingTransport) and at the start of every tick.

    A full disk: when a journal write finds no room, a leader hands over
    (pysyncobj's ``transferLeadership``: the most caught-up follower stands
    at once) and steps down before its thread waits for room; a follower or
    candidate just waits (it can neither store entries nor persist a term
    or vote, so it acknowledges nothing and wins nothing). Once the write
    went through, the node hears from the leader before it may stand: its
    election timer restarts."""

    def __init__(
        self,
        address: str,
        peers: Sequence[str],
        conf: SyncObjConf,
        journal: Journal,
        transport_class: Callable[..., TCPTransport] = SyncingTransport,
    ) -> None:
        self.journal = journal
        self.disk_full_step_downs = 0
        conf.journalFile = journal  # taken as it is by _create_journal below
        super().__init__(
            address, list(peers), conf, transportClass=functools.partial(transport_class, journal)
        )
        if isinstance(journal, DurableJournal):
            journal.on_no_room = self._no_room
            journal.on_room = self._room_again

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self.journal.sync()
        super()._onTick(timeToWait)

    def _no_room(self) -> None:
        """pysyncobj's thread, before the journal waits for room."""
        if not self.step_down("the journal cannot write"):
            log.critical("disk full: this node stores and acknowledges nothing until there is room")

    def step_down(self, why: str) -> bool:
        """On pysyncobj's thread only, before it waits for room (here, or in
        the store's apply): a leader hands over and becomes a follower. False
        when it did not lead."""
        if not self._isLeader():
            return False
        self.transferLeadership()  # denied (silently) when no follower is caught up
        self._SyncObj__setState(_RAFT_STATE.FOLLOWER)
        self._SyncObj__raftLeader = None
        self.disk_full_step_downs += 1
        log.critical(
            "no room (%s): the leader steps down in term %d; the others elect one with room",
            why,
            self.raftCurrentTerm,
        )
        return True

    def _room_again(self) -> None:
        """pysyncobj's thread, once the write that waited went through. The
        node may have waited past its election timeout: standing at once
        would depose the leader the others elected meanwhile (a higher term),
        with a log that cannot win."""
        self._SyncObj__raftElectionDeadline = (
            time.monotonic() + self._SyncObj__generateRaftTimeout()
        )


_stock_create_journal: Callable[[Any], Any] = _syncobj.createJournal


def _create_journal(journal_file: Any) -> Any:
    if isinstance(journal_file, Journal):
        return journal_file
    return _stock_create_journal(journal_file)


_syncobj.createJournal = _create_journal
