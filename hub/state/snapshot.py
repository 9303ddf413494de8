"""Snapshots of the store: the stream and the image, written and read back.

``Snapshot`` is a pinned read view of the store that writes itself as a
stream (every record, portable) or as an image (LMDB's compacting copy);
``restore_stream`` and ``restore_image`` verify one while they write it into
a new LMDB file, for ``Store.install``. hub/state/DESIGN.md ("Snapshots")
gives both formats.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Final

import lmdb

from hub.state import records as r
from hub.state.errors import SnapshotError

SNAPSHOT_MAGIC: Final = b"AIOTSNAP"
SNAPSHOT_VERSION: Final = 1
# The same view as a compacted LMDB file (Snapshot.write_image): what a Raft
# dump holds. Its header starts as the stream's does (magic, version, index).
IMAGE_MAGIC: Final = b"AIOTLMDB"
IMAGE_VERSION: Final = 1
# How a stream and an image both start: magic, version, applied index.
_HEAD: Final = struct.Struct(">8sHQ")
_STREAM_HEAD: Final = struct.Struct(">HQ")  # after the magic: version, applied index
_IMAGE_HEADER: Final = struct.Struct(">8sHQQ")  # magic, version, applied index, image bytes
_CHUNK: Final = 1 << 20
_INSTALL_COMMIT_EVERY: Final = 65536


class Snapshot(contextlib.AbstractContextManager["Snapshot"]):
    """A pinned, consistent read view of the store (an LMDB read transaction).

    Take it where nothing is applying (in pysyncobj's serializer), so its
    ``applied_index`` matches the Raft state; then ``write_to`` may run in a
    background thread while apply goes on. Close it promptly: LMDB cannot
    reuse pages freed after the view was taken while it is open.
    """

    def __init__(
        self, env: Any, dbs: dict[str, Any], on_close: Callable[[], None] | None = None
    ) -> None:
        self._env = env
        self._txn = env.begin(write=False)
        self._dbs = dbs
        self._on_close = on_close  # the store counts its open views (Store.pin)
        self.applied_index = r.applied_index(self._txn, dbs)

    def content_hash(self) -> str:
        return r.content_hash(self._txn, self._dbs)

    def write_to(self, out: BinaryIO) -> int:
        """Stream the view (format in hub/state/DESIGN.md); returns the bytes written."""
        h = hashlib.sha256()
        buf = bytearray()
        total = 0

        def emit(b: bytes) -> None:
            buf.extend(b)
            if len(buf) >= _CHUNK:
                flush()

        def flush() -> None:
            nonlocal total
            h.update(buf)
            out.write(bytes(buf))
            total += len(buf)
            buf.clear()

        emit(SNAPSHOT_MAGIC + _STREAM_HEAD.pack(SNAPSHOT_VERSION, self.applied_index))
        for name in r.TABLES:
            emit(b"T" + bytes([len(name)]) + name.encode())
            for k, v in self._txn.cursor(db=self._dbs[name]):
                emit(b"K" + r.U32.pack(len(k)) + k + r.U32.pack(len(v)) + v)
        emit(b"E")
        flush()
        digest = h.digest()
        out.write(digest)
        return total + len(digest)

    def write_image(self, out: BinaryIO) -> int:
        """Write the view as a compacted LMDB file: a header (IMAGE_MAGIC,
        version, applied index, image length), the image, its SHA-256.

        LMDB copies it (mdb_env_copyfd2 with MDB_CP_COMPACT, on this read
        transaction) in C with the GIL released, about fifty times faster
        than ``write_to`` walks the records in Python; the digest is read
        back from the file in 1 MiB chunks. ``out`` must be a regular file
        opened for reading and writing ("w+b"). Returns the bytes written.
        Raises lmdb.Error when LMDB cannot copy (the file is then cut back to
        where it started; ``write_to`` still works)."""
        out.flush()
        fd = out.fileno()
        start = out.tell()
        out.write(_IMAGE_HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, self.applied_index, 0))
        out.flush()
        body = out.tell()
        try:
            self._env.copyfd(fd, compact=True, txn=self._txn)
        except lmdb.Error:
            out.seek(start)
            out.truncate()
            raise
        end = os.lseek(fd, 0, os.SEEK_END)
        h = hashlib.sha256()
        pos = body
        while pos < end:
            chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
            if not chunk:
                raise OSError(f"snapshot image: short read at {pos} of {end}")
            h.update(chunk)
            pos += len(chunk)
        out.seek(start)
        out.write(_IMAGE_HEADER.pack(IMAGE_MAGIC, IMAGE_VERSION, self.applied_index, end - body))
        out.seek(end)
        out.write(h.digest())
        out.flush()
        return end + len(h.digest()) - start

    def close(self) -> None:
        self._txn.abort()
        done, self._on_close = self._on_close, None
        if done is not None:
            done()

    def __exit__(self, *exc: object) -> None:
        self.close()


def peek_index(f: BinaryIO) -> int | None:
    """The applied index of the snapshot (a stream or an image) that starts
    at ``f``'s position, or None when none starts there. ``f`` is left where
    it was."""
    start = f.tell()
    head = f.read(_HEAD.size)
    f.seek(start)
    if len(head) != _HEAD.size or head[:8] not in (IMAGE_MAGIC, SNAPSHOT_MAGIC):
        return None
    applied: int = _HEAD.unpack(head)[2]
    return applied


class _HashingReader:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.h = hashlib.sha256()

    def read(self, n: int, hashed: bool = True) -> bytes:
        b = self._f.read(n)
        if len(b) != n:
            raise SnapshotError("truncated", f"wanted {n} bytes, got {len(b)}")
        if hashed:
            self.h.update(b)
        return b


def _check_meta(fmt: bytes | None, got: bytes, applied: int) -> None:
    """A snapshot's meta table against its header: the store format, and
    the applied index it holds (``got``)."""
    if fmt not in [r.U32.pack(f) for f in r.READABLE_FORMATS]:
        raise SnapshotError("bad_format", f"store format {fmt!r}")
    if got != r.U64.pack(applied):
        raise SnapshotError("bad_index", "header and meta disagree on the applied index")


def restore_image(f: BinaryIO, tmp: Path) -> int:
    """An image (Snapshot.write_image) from ``f``, after its magic, into the
    new file ``tmp``: copied, digest checked, synced; then its meta is
    checked. Returns its applied index."""
    head = f.read(_IMAGE_HEADER.size - len(IMAGE_MAGIC))
    if len(head) != _IMAGE_HEADER.size - len(IMAGE_MAGIC):
        raise SnapshotError("truncated", "snapshot image header")
    _, version, applied, length = _IMAGE_HEADER.unpack(IMAGE_MAGIC + head)
    if version != IMAGE_VERSION:
        raise SnapshotError("bad_version", f"snapshot image version {version}")
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise SnapshotError("truncated", f"image: {length - left} of {length} bytes")
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    if f.read(32) != h.digest():
        raise SnapshotError("bad_digest", "snapshot image digest does not match")
    try:
        env = lmdb.open(str(tmp), subdir=False, readonly=True, lock=False, max_dbs=len(r.TABLES))
    except lmdb.Error as exc:
        raise SnapshotError(
            "bad_image",
            f"LMDB cannot open the snapshot image ({exc}); an image made on a machine "
            "with another word size or byte order needs raft.snapshot_format = "
            '"stream" on every node',
        ) from None
    try:
        with env.begin() as txn:
            meta_db = env.open_db(b"meta", txn=txn, create=False)
            fmt = txn.get(r.META_FORMAT, db=meta_db)
            got = txn.get(r.META_APPLIED, db=meta_db)
    except lmdb.Error as exc:
        raise SnapshotError("bad_image", str(exc)) from None
    finally:
        env.close()
    _check_meta(fmt, got or r.U64.pack(0), applied)
    return int(applied)


def restore_stream(env: Any, f: BinaryIO, magic: bytes) -> int:
    """A snapshot stream (Snapshot.write_to) from ``f``, after its magic,
    into the empty LMDB ``env``. Returns its applied index."""
    rd = _HashingReader(f)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("bad_magic", "not a store snapshot")
    rd.h.update(magic)
    version, applied = _STREAM_HEAD.unpack(rd.read(_STREAM_HEAD.size))
    if version != SNAPSHOT_VERSION:
        raise SnapshotError("bad_version", f"snapshot version {version}")
    dbs: dict[str, Any] = {}
    with env.begin(write=True) as txn:
        for name in r.TABLES:
            dbs[name] = env.open_db(name.encode(), txn=txn)
    txn = env.begin(write=True)
    try:
        tag = rd.read(1)
        last_table = ""
        pending = 0
        meta: dict[bytes, bytes] = {}
        while tag == b"T":
            name = rd.read(rd.read(1)[0]).decode("ascii", "replace")
            if name not in dbs or name <= last_table:
                raise SnapshotError("bad_table", repr(name))
            last_table, db, last_key = name, dbs[name], b""
            tag = rd.read(1)
            while tag == b"K":
                k = rd.read(r.U32.unpack(rd.read(4))[0])
                v = rd.read(r.U32.unpack(rd.read(4))[0])
                if k <= last_key:
                    raise SnapshotError("bad_order", f"{name}: keys out of order")
                last_key = k
                if name == "meta":
                    meta[k] = v
                txn.put(k, v, db=db, append=True)
                pending += 1
                if pending >= _INSTALL_COMMIT_EVERY:
                    txn.commit()
                    txn, pending = env.begin(write=True), 0
                tag = rd.read(1)
        if tag != b"E":
            raise SnapshotError("bad_tag", repr(tag))
        if rd.read(32, hashed=False) != rd.h.digest():
            raise SnapshotError("bad_digest", "snapshot digest does not match")
        _check_meta(meta.get(r.META_FORMAT), meta.get(r.META_APPLIED, r.U64.pack(0)), applied)
        txn.commit()
    except BaseException:
        txn.abort()
        raise
    return int(applied)
