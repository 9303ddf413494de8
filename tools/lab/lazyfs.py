"""A FUSE file system that loses what was not synced when the power is cut.

After Jepsen's LazyFS: a pass-through to a backing directory that remembers,
for every change since the last sync, how to take it back. On command it
"cuts the power": every write, truncate, create, unlink, rename and mkdir
that no sync made durable is undone in the backing directory, which is then
what a disk would hold after the cut. It can also answer ``ENOSPC`` on
command, for a full disk. Built on mfusepy (libfuse 3 through ctypes)::

    python -m tools.lab.lazyfs BACKING MOUNTPOINT --control SOCKET   # until unmounted

    with LazyMount(backing, mountpoint) as fs:    # the process, from Python
        ...                                       # write under mountpoint
        fs.cut()        # power cut: unsynced changes gone, mounted afresh
        fs.full("hub-2")   # ENOSPC under hub-2/ ("" for everything)
        fs.unfull()

What it models (``docs/chaos.md``, "Power cuts on a lazy file system"):

- **File data and size**, per file: a write or truncate is durable once
  ``fsync`` or ``fdatasync`` of that file returns. A cut restores every page
  (4 KiB) changed since then to its content at the last sync and the size to
  the size then; a file never synced is cut back to nothing. Nothing is
  written back on its own: no page cache flush every 30 s, the worst case.
  Writes through a shared writable mmap reach it as the kernel writes the
  pages back, so they count from then. A write to a file opened with
  ``O_DSYNC`` or ``O_SYNC`` (LMDB's meta page) is followed by an fsync from
  the kernel, which FUSE sends without a range: it syncs the whole file.
- **Names** (create, mknod, mkdir, unlink, rmdir, rename, symlink, link), in
  one ordered log, as ext4's journal keeps them: the next ``fsync``,
  ``fdatasync`` or directory fsync of anything on the mount makes every name
  operation before it durable. A cut undoes the rest in reverse order (an
  unlinked or replaced file waits in a hidden trash until then).
- **Not modelled**: torn writes inside a page (a page is restored whole or
  kept whole), reordering of writes inside a file between two syncs (all or
  none of them survive, which is what a journal that syncs before acting
  must cope with anyway), attributes (mode, times, xattrs: kept as they are).

The backing directory itself is never fsynced: it is not what is being cut.
Every cut unmounts and mounts again, so that no page the kernel cached from
before the cut is read afterwards (as after a reboot).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tools.base.paths import ROOT

PAGE: Final = 4096
TRASH: Final = ".lazyfs-trash"
# Flags the kernel has already acted on (truncation is sent as its own call,
# O_APPEND's offset is the kernel's) or that would bypass the model.
_OPEN_DROP: Final = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND
_STAT_KEYS: Final = (
    "st_mode",
    "st_ino",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_blocks",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
)


@dataclass
class FileUndo:
    """What a cut restores of one file (by inode): its size and the pages
    changed since its last sync, as they were then."""

    size: int
    pages: dict[int, bytes] = field(default_factory=dict)


@dataclass
class Counters:
    writes: int = 0
    syncs: int = 0
    cuts: int = 0
    pages_restored: int = 0
    names_undone: int = 0
    files_cut: int = 0
    enospc: int = 0


class LazyState:
    """The model: undo information for file data and names, and the cut.

    Paths here are backing paths. Every method runs under ``lock``."""

    def __init__(self, backing: Path) -> None:
        self.root = backing
        self.trash = backing / TRASH
        shutil.rmtree(self.trash, ignore_errors=True)
        self.trash.mkdir()
        self.files: dict[int, FileUndo] = {}
        self.names: list[tuple[str, ...]] = []  # the undo log of name operations
        self.full: set[str] = set()  # relative prefixes that answer ENOSPC ("" = all)
        self.counters = Counters()
        self.lock = threading.RLock()
        self._trash_n = 0

    # -- data

    def before_change(self, fd: int, start: int, stop: int) -> None:
        """Keep the pages of [start, stop) of the file open as ``fd`` as they
        were at its last sync, before they change."""
        st = os.fstat(fd)
        undo = self.files.get(st.st_ino)
        if undo is None:
            undo = self.files[st.st_ino] = FileUndo(st.st_size)
        for p in range(start // PAGE, (max(stop, start + 1) - 1) // PAGE + 1):
            if p in undo.pages or p * PAGE >= undo.size:
                continue
            undo.pages[p] = os.pread(fd, min(PAGE, undo.size - p * PAGE), p * PAGE)

    def synced(self, fd: int) -> None:
        """fsync or fdatasync of this file: its data and every name operation so far."""
        self.files.pop(os.fstat(fd).st_ino, None)
        self.names_synced()
        self.counters.syncs += 1

    def created(self, path: str) -> None:
        self.files[os.lstat(path).st_ino] = FileUndo(0)
        self.names.append(("create", path))

    # -- names

    def names_synced(self) -> None:
        self.names.clear()
        for entry in os.scandir(self.trash):
            with contextlib.suppress(OSError):
                ino = entry.inode()
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                self.files.pop(ino, None)

    def to_trash(self, path: str) -> str:
        """Move ``path`` aside (an unlink or a replaced file) so a cut can bring it back."""
        self._trash_n += 1
        kept = str(self.trash / str(self._trash_n))
        os.rename(path, kept)
        return kept

    def full_at(self, path: str) -> bool:
        """Whether ``path`` (a backing path) is under a full prefix."""
        rel = os.path.relpath(path, self.root)
        return any(p == "" or rel == p or rel.startswith(p.rstrip("/") + "/") for p in self.full)

    def check_space(self, path: str) -> None:
        if self.full_at(path):
            self.counters.enospc += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # -- the cut

    def cut(self) -> dict[str, int]:
        """Undo every change no sync made durable; what was undone."""
        by_ino = self._inodes()
        pages = cut_files = 0
        for ino, undo in self.files.items():
            path = by_ino.get(ino)
            if path is None:
                continue
            fd = os.open(path, os.O_WRONLY)
            try:
                for p, data in undo.pages.items():
                    os.pwrite(fd, data, p * PAGE)
                os.ftruncate(fd, undo.size)
            finally:
                os.close(fd)
            pages += len(undo.pages)
            cut_files += 1
        names = len(self.names)
        for op in reversed(self.names):
            _undo_name(op)
        self.names.clear()
        self.files.clear()
        shutil.rmtree(self.trash, ignore_errors=True)
        self.trash.mkdir()
        c = self.counters
        c.cuts += 1
        c.pages_restored += pages
        c.files_cut += cut_files
        c.names_undone += names
        return {"files": cut_files, "pages": pages, "names": names}

    def _inodes(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for top, _dirs, names in os.walk(self.root):
            for name in names:
                path = os.path.join(top, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):
                        out[st.st_ino] = path
        return out


def _undo_name(op: tuple[str, ...]) -> None:
    kind = op[0]
    with contextlib.suppress(FileNotFoundError):
        if kind in ("create", "symlink", "link"):
            os.unlink(op[1])
        elif kind == "mkdir":
            os.rmdir(op[1])
        elif kind == "rmdir":
            os.mkdir(op[1])
        elif kind == "unlink":
            os.rename(op[2], op[1])  # back from the trash
        elif kind == "rename":
            _, old, new, replaced = op
            os.rename(new, old)
            if replaced:
                os.rename(replaced, new)


class LazyOps:
    """The file system's operations, as mfusepy calls them (by name; an
    error is an OSError with its errno)."""

    use_ns = True  # times in nanoseconds

    def __init__(self, state: LazyState) -> None:
        self.s = state

    def _p(self, path: str) -> str:
        if path.lstrip("/").split("/")[0] == TRASH:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return str(self.s.root) + path

    # -- reading

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        out = {k: getattr(st, k) for k in _STAT_KEYS}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            out[k] = out.pop(k + "_ns")
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        names = os.listdir(self._p(path))
        return [".", "..", *(n for n in names if not (path == "/" and n == TRASH))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._p(path))
        out = {k: getattr(sv, k) for k in dir(sv) if k.startswith("f_")}
        if self.s.full_at(self._p(path)):  # one hub's disk, not its neighbours'
            out["f_bfree"] = out["f_bavail"] = 0
        return out

    def open(self, path: str, flags: int) -> int:
        flags &= ~_OPEN_DROP
        if flags & os.O_ACCMODE == os.O_WRONLY:  # the model reads before it writes
            flags = flags & ~os.O_ACCMODE | os.O_RDWR
        return os.open(self._p(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def opendir(self, path: str) -> int:
        self._p(path)
        return 0

    # -- data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.s.lock:
            if offset + len(data) > os.fstat(fh).st_size:
                self.s.check_space(self._p(path))
            self.s.before_change(fh, offset, offset + len(data))
            self.s.counters.writes += 1
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.s.lock:
            fd = fh if fh is not None else os.open(self._p(path), os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if length > size:
                    self.s.check_space(self._p(path))
                self.s.before_change(fd, min(length, size), max(length, size))
                os.ftruncate(fd, length)
            finally:
                if fh is None:
                    os.close(fd)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        with self.s.lock:
            self.s.check_space(self._p(path))
            self.s.before_change(fh, offset, offset + size)
            os.posix_fallocate(fh, offset, size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.s.lock:
            self.s.synced(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.s.lock:
            self.s.names_synced()
            self.s.counters.syncs += 1
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    # -- names

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        p = self._p(path)
        with self.s.lock:
            self.s.check_space(p)
            existed = os.path.lexists(p)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, mode)
            if not existed:
                self.s.created(p)
            return fd

    def mknod(self, path: str, mode: int, dev: int) -> int:
        p = self._p(path)
        with self.s.lock:
            self.s.check_space(p)
            os.mknod(p, mode, dev)
            self.s.names.append(("create", p))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        p = self._p(path)
        with self.s.lock:
            self.s.check_space(p)
            os.mkdir(p, mode)
            self.s.names.append(("mkdir", p))
        return 0

    def rmdir(self, path: str) -> int:
        p = self._p(path)
        with self.s.lock:
            os.rmdir(p)
            self.s.names.append(("rmdir", p))
        return 0

    def unlink(self, path: str) -> int:
        p = self._p(path)
        with self.s.lock:
            self.s.names.append(("unlink", p, self.s.to_trash(p)))
        return 0

    def rename(self, old: str, new: str) -> int:
        po, pn = self._p(old), self._p(new)
        with self.s.lock:
            replaced = ""
            if os.path.lexists(pn) and not os.path.isdir(pn):
                replaced = self.s.to_trash(pn)
            try:
                os.rename(po, pn)
            except OSError:
                if replaced:
                    os.rename(replaced, pn)
                raise
            self.s.names.append(("rename", po, pn, replaced))
        return 0

    def symlink(self, target: str, source: str) -> int:
        p = self._p(target)
        with self.s.lock:
            self.s.check_space(p)
            os.symlink(source, p)
            self.s.names.append(("symlink", p))
        return 0

    def link(self, target: str, source: str) -> int:
        p = self._p(target)
        with self.s.lock:
            os.link(self._p(source), p)
            self.s.names.append(("link", p))
        return 0

    # -- attributes (not modelled: kept as they are)

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._p(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._p(path), follow_symlinks=False)
        else:
            os.utime(self._p(path), ns=times, follow_symlinks=False)
        return 0

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._p(path), amode):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0


# -- the control socket -------------------------------------------------------------------


def _serve_control(state: LazyState, sock_path: Path) -> None:
    """One command a connection, one JSON answer: ``cut``, ``sync``, ``full
    PREFIX`` (``full`` alone: everything), ``unfull``, ``stats``."""
    sock_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            line = conn.makefile("r").readline().strip()
            try:
                answer = _command(state, line)
            except Exception as exc:  # a control client gets every failure in words
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            conn.sendall((json.dumps(answer) + "\n").encode())


def _command(state: LazyState, line: str) -> dict[str, Any]:
    verb, _, arg = line.partition(" ")
    with state.lock:
        if verb == "cut":
            return {"cut": state.cut()}
        if verb == "sync":
            state.files.clear()
            state.names_synced()
            return {"ok": True}
        if verb == "full":
            state.full.add(arg.strip().strip("/"))
            return {"full": sorted(state.full)}
        if verb == "unfull":
            state.full.clear()
            return {"full": []}
        if verb == "stats":
            return {
                "unsynced_files": len(state.files),
                "unsynced_names": len(state.names),
                **vars(state.counters),
            }
    return {"error": f"unknown command {line!r}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.lab.lazyfs", description=__doc__)
    ap.add_argument("backing", type=Path)
    ap.add_argument("mountpoint", type=Path)
    ap.add_argument("--control", type=Path, required=True, help="the control socket's path")
    args = ap.parse_args(argv)
    import mfusepy  # lazy: libfuse3 is loaded only in the file system's own process

    state = LazyState(args.backing.resolve())
    threading.Thread(
        target=_serve_control, args=(state, args.control), name="control", daemon=True
    ).start()
    mfusepy.FUSE(
        LazyOps(state),
        str(args.mountpoint),
        foreground=True,
        # No attribute or name cached in the kernel: what a cut undid is
        # never seen from before it.
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
    )
    return 0


# -- the process, from Python ---------------------------------------------------------------


class LazyFSError(RuntimeError):
    """The file system could not be mounted or did not answer."""


def mount_available() -> str | None:
    """None if a lazy file system can be mounted here, else what is missing."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing (a container without FUSE)"
    try:
        import mfusepy  # noqa: F401  # lazy: only to tell whether FUSE can work here
    except (ImportError, OSError) as exc:
        return f"mfusepy or libfuse3 is missing ({exc}): apt-get install fuse3; pip install mfusepy"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing: apt-get install fuse3"
    return None


class LazyMount:
    """``python -m tools.lab.lazyfs`` as a child process, mounted at
    ``mountpoint`` over ``backing``; its output goes to ``log``."""

    def __init__(self, backing: Path, mountpoint: Path, log: Path | None = None) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.control = backing.parent / f".{backing.name}.lazyfs.sock"
        self.log_path = log or backing.parent / f"{backing.name}.lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts: list[dict[str, int]] = []

    def mount(self, timeout: float = 20.0) -> LazyMount:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)  # the last mount's: not an answer from this one
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "tools.lab.lazyfs", str(self.backing), str(self.mountpoint)),
                    *("--control", str(self.control)),
                ],
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LazyFSError(f"lazyfs exited with {self.proc.returncode}: {self._tail()}")
            if os.path.ismount(self.mountpoint) and self.control.exists():
                return self
            time.sleep(0.05)
        self.unmount()
        raise LazyFSError(f"lazyfs did not mount {self.mountpoint} in {timeout:g} s")

    def ask(self, line: str, timeout: float = 60.0) -> dict[str, Any]:
        """One control command (``stats``, ``sync``, ``full P``, ``unfull``, ``cut``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(self.control))
                s.sendall(line.encode() + b"\n")
                out: dict[str, Any] = json.loads(s.makefile("r").readline())
            except (OSError, ValueError) as exc:
                raise LazyFSError(f"lazyfs control {line!r}: {exc}") from None
        if "error" in out:
            raise LazyFSError(f"lazyfs control {line!r}: {out['error']}")
        return out

    def cut(self) -> dict[str, int]:
        """The power cut: every unsynced change undone, then unmounted and
        mounted afresh (no page cached from before). Every process writing
        here must be dead first."""
        undone: dict[str, int] = self.ask("cut")["cut"]
        self.cuts.append(undone)
        self.unmount()
        self.mount()
        return undone

    def full(self, prefix: str = "") -> None:
        """ENOSPC for growth under ``prefix`` (relative; "" for all)."""
        self.ask(f"full {prefix}")

    def unfull(self) -> None:
        self.ask("unfull")

    def unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            r = subprocess.run(
                ["fusermount3", "-u", str(self.mountpoint)], capture_output=True, check=False
            )
            if r.returncode != 0:  # something still holds it: detach it lazily
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-800:]
        return ""

    def __enter__(self) -> LazyMount:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()


if __name__ == "__main__":
    sys.exit(main())
