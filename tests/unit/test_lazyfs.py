"""The lazy file system (tools/lab/lazyfs.py), mounted for real with FUSE:
what a power cut keeps and drops, and ENOSPC on command."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tools.lab.lazyfs import PAGE, LazyMount, mount_available


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyMount]:
    missing = mount_available()
    if missing is not None:
        pytest.skip(f"no lazy file system here: {missing}")
    with LazyMount(tmp_path / "back", tmp_path / "mnt") as mounted:
        yield mounted


def _write(path: Path, data: bytes, offset: int = 0, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_cut_keeps_synced_data_and_drops_the_rest(fs: LazyMount) -> None:
    m = fs.mountpoint
    _write(m / "f", b"a" * (3 * PAGE), sync=True)  # durable: 3 pages of "a"
    _fsync_dir(m)
    _write(m / "f", b"b" * 10, offset=PAGE + 5)  # inside page 1
    _write(m / "f", b"c" * PAGE, offset=3 * PAGE)  # grows the file
    _write(m / "g", b"never synced")
    assert (m / "f").read_bytes()[PAGE + 5 : PAGE + 15] == b"b" * 10
    undone = fs.cut()
    assert (m / "f").read_bytes() == b"a" * (3 * PAGE)
    assert not (m / "g").exists()  # its creation was never synced either
    assert undone["files"] >= 1 and undone["pages"] == 1 and undone["names"] == 1
    assert (fs.backing / "f").read_bytes() == b"a" * (3 * PAGE)  # on the "disk" itself


def test_fdatasync_and_o_dsync_writes_survive(fs: LazyMount) -> None:
    m = fs.mountpoint
    fd = os.open(m / "j", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"entry-1", 0)
    os.fdatasync(fd)
    os.pwrite(fd, b"entry-2", 7)  # not synced
    os.close(fd)
    fs.cut()
    assert (m / "j").read_bytes() == b"entry-1"
    fd = os.open(m / "j", os.O_WRONLY | os.O_DSYNC)  # as LMDB writes its meta page
    os.pwrite(fd, b"E", 0)  # synchronous: durable when it returns
    os.close(fd)
    fs.cut()
    assert (m / "j").read_bytes() == b"Entry-1"


def test_truncate_is_undone_to_the_synced_size_and_content(fs: LazyMount) -> None:
    m = fs.mountpoint
    _write(m / "t", bytes(range(256)) * 40, sync=True)
    os.truncate(m / "t", 100)
    _write(m / "t", b"z" * 50, offset=5000)
    fs.cut()
    assert (m / "t").read_bytes() == bytes(range(256)) * 40


def test_names_are_undone_in_reverse_until_a_sync(fs: LazyMount) -> None:
    m = fs.mountpoint
    (m / "d").mkdir()
    _write(m / "d" / "keep", b"old", sync=True)  # fsync: every name so far is durable
    _write(m / "d" / "new.tmp", b"new", sync=True)
    os.replace(m / "d" / "new.tmp", m / "d" / "keep")  # rename over, never synced
    os.unlink(m / "d" / "keep")
    (m / "e").mkdir()
    assert sorted(os.listdir(m)) == ["d", "e"]
    undone = fs.cut()
    assert undone["names"] == 3
    assert sorted(os.listdir(m)) == ["d"]
    assert sorted(os.listdir(m / "d")) == ["keep", "new.tmp"]
    assert (m / "d" / "keep").read_bytes() == b"old"
    assert (m / "d" / "new.tmp").read_bytes() == b"new"


def test_a_rename_made_durable_by_a_directory_fsync_stays(fs: LazyMount) -> None:
    m = fs.mountpoint
    _write(m / "meta.tmp", b"term 3", sync=True)
    os.replace(m / "meta.tmp", m / "meta")
    _fsync_dir(m)
    fs.cut()
    assert os.listdir(m) == ["meta"] and (m / "meta").read_bytes() == b"term 3"


def test_a_renamed_file_whose_data_was_never_synced_comes_back_empty(fs: LazyMount) -> None:
    """A rename made durable, the data not: the zero-length file of ext4
    without auto_da_alloc, what an unsynced meta file becomes."""
    m = fs.mountpoint
    _write(m / "meta.tmp", b"term 3")
    os.replace(m / "meta.tmp", m / "meta")
    _write(m / "other", b"x", sync=True)  # any fsync commits the names before it
    fs.cut()
    assert (m / "meta").read_bytes() == b""


def test_enospc_on_command_for_one_directory(fs: LazyMount) -> None:
    m = fs.mountpoint
    for d in ("hub-1", "hub-2"):
        (m / d).mkdir()
        _write(m / d / "f", b"x" * 100, sync=True)
    fs.full("hub-1")
    with pytest.raises(OSError) as grow:
        _write(m / "hub-1" / "f", b"y", offset=100)
    assert grow.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as create:
        _write(m / "hub-1" / "g", b"y")
    assert create.value.errno == errno.ENOSPC
    _write(m / "hub-1" / "f", b"y", offset=0)  # in place: no new space needed
    _write(m / "hub-2" / "f", b"y", offset=100)  # another node's disk is not full
    assert fs.ask("stats")["enospc"] == 2
    fs.unfull()
    _write(m / "hub-1" / "g", b"y")
    assert (m / "hub-1" / "f").read_bytes() == b"y" + b"x" * 99


def test_lmdb_commits_survive_a_cut_and_an_open_write_does_not(fs: LazyMount) -> None:
    """LMDB as the hub opens it (sync and metasync on, no writemap)."""
    path = str(fs.mountpoint / "data.mdb")
    env = lmdb.open(path, subdir=False, map_size=1 << 24, sync=True, metasync=True)
    with env.begin(write=True) as txn:
        for i in range(500):
            txn.put(b"k%05d" % i, b"v" * 200)
    env.close()
    nosync = lmdb.open(path, subdir=False, map_size=1 << 24, sync=False, metasync=False)
    with nosync.begin(write=True) as txn:
        txn.put(b"lost", b"never synced")
    with nosync.begin() as txn:
        assert txn.get(b"lost") == b"never synced"
    nosync.close()
    fs.cut()
    env = lmdb.open(path, subdir=False, map_size=1 << 24)
    with env.begin() as txn:
        assert txn.stat()["entries"] == 500
        assert txn.get(b"k00499") == b"v" * 200
        assert txn.get(b"lost") is None
    env.close()
