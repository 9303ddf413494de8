"""The durable Raft journal (hub/state/journal.py) on real files and real
pysyncobj: nothing acknowledges an entry, a term or a vote before the sync
that makes it durable; the files keep pysyncobj's own format."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pysyncobj import SyncObjConf, replicated
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal
from pysyncobj.transport import TCPTransport

from hub.core import config as c
from hub.ops.metrics import _HubCollector
from hub.state import entries as e
from hub.state.apply import ApplyResult, Outcome
from hub.state.journal import (
    META_SUFFIX,
    DurableJournal,
    DurableSyncObj,
    JournalError,
    SyncingTransport,
)
from hub.state.raft import JOURNAL_FILE, RaftNode, RaftTiming
from protocol import messages as m
from tests.support import free_port, wait_until

# pysyncobj's MetaStorer.getMeta opens the meta file and never closes it: a
# ResourceWarning when its FileJournal reads a journal here, not a bug of ours.
pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

SECRET = "journal-test-secret-0123456789"
ENTRIES = [(b"\x00", 1, 0), (b"first", 2, 1), (b"second", 3, 1), (b"x" * 5000, 4, 2)]


def stock(path: Path) -> Any:
    return FileJournal(str(path))


def written_by_stock(path: Path) -> None:
    j = stock(path)
    for entry in ENTRIES:
        j.add(*entry)
    j.setRaftCommitIndex(3)
    j.setCurrentTerm(7, "127.0.0.1:4000")  # also stores the commit index
    j._destroy()


def contents(j: Any) -> list[tuple[bytes, int, int]]:
    return [(bytes(cmd), idx, term) for cmd, idx, term in (j[i] for i in range(len(j)))]


# -- the file format -----------------------------------------------------------------------


def test_a_journal_written_by_pysyncobj_loads(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    written_by_stock(path)
    j = DurableJournal(path)
    try:
        assert contents(j) == ENTRIES
        assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (7, "127.0.0.1:4000")
        assert j.getRaftCommitIndex() == 3
        j.add(b"third", 5, 7)  # appends after pysyncobj's records
        j.sync()
    finally:
        j._destroy()
    again = stock(path)
    try:
        assert contents(again) == [*ENTRIES, (b"third", 5, 7)]
    finally:
        again._destroy()


def test_pysyncobj_reads_what_this_journal_wrote(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    j = DurableJournal(path)
    for entry in ENTRIES:
        j.add(*entry)
    j.setRaftCommitIndex(4)
    j.setCurrentTerm(9, None)
    j.deleteEntriesFrom(3)
    j._destroy()
    back = stock(path)
    try:
        assert contents(back) == ENTRIES[:3]
        assert (back.getCurrentTerm(), back.getVotedForNodeId(), back.getRaftCommitIndex()) == (
            9,
            None,
            4,
        )
    finally:
        back._destroy()


def test_term_and_vote_survive_a_reopen_without_a_clean_close(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    j = DurableJournal(path)
    j.setCurrentTerm(3, "127.0.0.1:4001")
    assert (j.synced_term, j.synced_vote) == (3, "127.0.0.1:4001")
    # No _destroy: what a killed process leaves.
    again = DurableJournal(path)
    try:
        assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (3, "127.0.0.1:4001")
    finally:
        again._destroy()
        j._destroy()
    assert not Path(str(path) + META_SUFFIX + ".tmp").exists()
    assert (Path(str(path) + META_SUFFIX).stat().st_mode & 0o077) == 0


def test_deletes_are_on_disk_when_they_return(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    j = DurableJournal(path)
    for entry in ENTRIES:
        j.add(*entry)
    j.sync()
    before = j.flushes
    j.deleteEntriesFrom(2)  # a follower dropping entries that conflict with its leader
    assert not j.dirty and j.synced_index == 2 and j.flushes == before + 1
    assert contents(DurableJournal(path)) == ENTRIES[:2]  # no sync, no close in between
    j.add(b"other", 3, 5)
    j.deleteEntriesTo(1)  # log compaction keeps the entries from the second on
    assert not j.dirty and j.synced_index == 3
    assert contents(DurableJournal(path)) == [ENTRIES[1], (b"other", 3, 5)]
    j.add(b"more", 4, 5)
    j.sync()
    j.clear()
    assert contents(DurableJournal(path)) == []
    j._destroy()
    assert not Path(str(path) + ".tmp").exists()


def test_entries_are_synced_in_groups(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / "raft.journal")
    try:
        start = j.flushes
        for i in range(1, 11):
            j.add(b"entry", i, 1)
        assert j.dirty and j.synced_index == 0
        j.sync()
        j.sync()  # clean: nothing to do
        assert j.flushes == start + 1 and j.synced_index == 10 and not j.dirty
        assert j.flush_seconds > 0
    finally:
        j._destroy()


def test_a_torn_tail_ends_the_journal_at_the_last_whole_record(tmp_path: Path) -> None:
    """pysyncobj's class never synced: after a cut the header can be on disk
    ahead of its records (here: a record cut short, then the header beyond the
    file's end). The journal keeps what is whole and says so."""
    path = tmp_path / "raft.journal"
    written_by_stock(path)
    raw = bytearray(path.read_bytes())
    (end,) = struct.unpack_from("<I", raw, LAST_RECORD_OFFSET_OFFSET)
    last_size = struct.unpack_from("<I", raw, end - 4)[0]
    struct.pack_into("<I", raw, end - 4, last_size + 1)  # the last record's trailing length
    path.write_bytes(bytes(raw))
    j = DurableJournal(path)
    try:
        assert contents(j) == ENTRIES[:3]
    finally:
        j._destroy()
    struct.pack_into("<I", raw, LAST_RECORD_OFFSET_OFFSET, len(raw) + 4096)
    path.write_bytes(bytes(raw[: end - 100]))
    j = DurableJournal(path)
    try:
        assert contents(j) == ENTRIES[:3]
        j.add(b"next", 4, 3)
        j.sync()
    finally:
        j._destroy()
    assert contents(DurableJournal(path)) == [*ENTRIES[:3], (b"next", 4, 3)]


def test_a_foreign_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    path.write_bytes(b"not a journal at all, but long enough to hold a header")
    with pytest.raises(JournalError) as err:
        DurableJournal(path)
    assert err.value.reason == "foreign" and str(path) in str(err.value)
    assert path.read_bytes().startswith(b"not a journal")


def test_a_garbled_meta_file_starts_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    written_by_stock(path)
    Path(str(path) + META_SUFFIX).write_bytes(b"")  # what an unsynced rename can leave
    j = DurableJournal(path)
    try:
        assert (j.getCurrentTerm(), j.getVotedForNodeId(), len(j)) == (0, None, len(ENTRIES))
    finally:
        j._destroy()


@pytest.mark.parametrize("durable", [True, False])
def test_the_switch_turns_every_sync_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counted(fd: int, _real: Callable[[int], None] = real, _name: str = name) -> None:
            calls.append(_name)
            _real(fd)

        monkeypatch.setattr(os, name, counted)
    path = tmp_path / "raft.journal"
    j = DurableJournal(path, durable=durable)
    for entry in ENTRIES:
        j.add(*entry)
    j.sync()
    j.setCurrentTerm(2, "a:1")
    j.setRaftCommitIndex(3)
    j.onOneSecondTimer()
    j.deleteEntriesFrom(3)
    j.deleteEntriesTo(1)
    j._destroy()
    if durable:
        assert "fdatasync" in calls and "fsync" in calls and j.flushes >= 5
    else:
        assert calls == [] and j.flushes == 0 and j.flush_seconds == 0
    back = stock(path)  # the same file either way
    try:
        assert contents(back) == ENTRIES[1:3]
        assert (back.getCurrentTerm(), back.getRaftCommitIndex()) == (2, 3)
    finally:
        back._destroy()


def test_the_config_switch(tmp_path: Path) -> None:
    good = """
[node]
id = "hub-1"
data_dir = "data"
[raft]
bind = "127.0.0.1:4321"
secret_env = "AIOT_TEST_SECRET"
{extra}
[broker]
bind = "127.0.0.1:1883"
[http]
bind = "127.0.0.1:8080"
[tls]
plain = true
"""
    path = tmp_path / "hub.toml"
    env = {"AIOT_TEST_SECRET": SECRET}
    path.write_text(good.format(extra=""))
    assert c.load(path, env=env).raft.durable_journal is True
    path.write_text(good.format(extra="durable_journal = false"))
    assert c.load(path, env=env).raft.durable_journal is False
    path.write_text(good.format(extra='durable_journal = "no"'))
    with pytest.raises(c.ConfigError) as err:
        c.load(path, env=env)
    assert "durable_journal" in str(err.value)


# -- a 3-node pysyncobj cluster in this process ------------------------------------------


class _Wire(TCPTransport):  # type: ignore[misc]
    """Below SyncingTransport: sees each message as it goes to the socket, and
    what the node's journal had made durable at that moment."""

    journal: Any
    seen: list[tuple[str, int, int]]  # (kind, what the message acknowledges, durable)
    self_id: str

    def send(self, node: Any, message: Any) -> bool:
        j, kind = self.journal, message.get("type")
        if kind == "next_node_idx" and message["success"]:
            self.seen.append(("ack", message["next_node_idx"] - 1, j.synced_index))
        elif kind == "append_entries" and message.get("entries"):
            self.seen.append(("append", message["entries"][-1][1], j.synced_index))
        elif kind == "response_vote":
            # The vote is durable: this term, for that candidate.
            ok = j.synced_term == message["term"] and j.synced_vote == node.id
            self.seen.append(("vote", message["term"], message["term"] if ok else -1))
        elif kind == "request_vote":
            ok = j.synced_term == message["term"] and j.synced_vote == self.self_id
            self.seen.append(("request_vote", message["term"], message["term"] if ok else -1))
        return bool(super().send(node, message))


class _Node(DurableSyncObj):
    def __init__(self, address: str, peers: list[str], journal: DurableJournal) -> None:
        self.values: list[int] = []
        seen: list[tuple[str, int, int]] = []
        self.seen = seen

        class Recording(SyncingTransport, _Wire):
            def __init__(self, *args: Any) -> None:
                self.seen, self.self_id = seen, address
                super().__init__(*args)

        conf = SyncObjConf(
            appendEntriesUseBatch=False,
            appendEntriesPeriod=0.05,
            raftMinTimeout=0.3,
            raftMaxTimeout=0.8,
            connectionTimeout=1.0,
            connectionRetryTime=0.2,
            autoTickPeriod=0.01,
        )
        super().__init__(address, peers, conf, journal, transport_class=Recording)

    @replicated  # type: ignore[untyped-decorator]
    def append(self, value: int) -> int:
        self.values.append(value)
        return len(self.values)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[_Node]]:
    durable: bool = request.param
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes: list[_Node] = []
    try:
        for i, a in enumerate(addrs):
            journal = DurableJournal(tmp_path / f"n{i}.journal", durable=durable)
            nodes.append(_Node(a, [p for p in addrs if p != a], journal))
        yield nodes
    finally:
        for n in nodes:
            n.destroy_synchronous()


def _propose(nodes: list[_Node], count: int) -> None:
    wait_until(lambda: any(n._isLeader() for n in nodes), 30, "a leader")
    for k in range(count):
        node = nodes[k % 3]  # followers forward to the leader
        assert node.append(k, sync=True, timeout=20) is not None
    wait_until(lambda: all(len(n.values) == count for n in nodes), 30, "every node applied")


@pytest.mark.parametrize("cluster", [True], indirect=True)
def test_no_message_acknowledges_what_is_not_durable(cluster: list[_Node]) -> None:
    _propose(cluster, 30)
    seen = [s for n in cluster for s in n.seen]
    kinds = {k for k, _, _ in seen}
    assert {"ack", "append", "vote", "request_vote"} <= kinds, kinds  # not vacuous
    late = [s for s in seen if s[1] > s[2]]
    assert late == [], f"sent before the sync that covers them: {late[:5]}"
    assert all(n.journal.flushes > 0 for n in cluster)


@pytest.mark.parametrize("cluster", [False], indirect=True)
def test_with_the_switch_off_acknowledgements_run_ahead_of_the_disk(
    cluster: list[_Node],
) -> None:
    """The same check sees the window when nothing is synced."""
    _propose(cluster, 10)
    seen = [s for n in cluster for s in n.seen]
    assert any(kind == "ack" and acked > durable for kind, acked, durable in seen)
    assert all(n.journal.flushes == 0 for n in cluster)


# -- RaftNode: a single node commits with no message at all -------------------------------


def _batch(first: int, n: int) -> bytes:
    readings = tuple(m.Reading(1, i * 1000, float(first + i)) for i in range(n))
    msg = m.TelemetryBatch("plug-1", 1, first, 1_763_700_000_000 + first, readings, 0)
    return e.encode(e.Batch.from_message(msg, "hub-1"))


def _register() -> bytes:
    return e.encode(e.RegisterDevice(e.Device("plug-1", b"k" * 32, ()), 1))


def _run_node(data: Path, durable: bool) -> tuple[list[tuple[int, int]], int, int]:
    """Propose a registration and five batches on a single node; returns, for
    every entry Store.apply looked at (not the replayed ones), its index and
    the journal's durable index at that moment, then the journal's flush
    count and the one /metrics reports."""
    timing = RaftTiming(election_min=0.2, election_max=0.4)
    node = RaftNode(
        f"127.0.0.1:{free_port()}",
        [],
        data,
        SECRET,
        timing=timing,
        durable_journal=durable,
    )
    applied: list[tuple[int, int]] = []
    lock = threading.Lock()

    def on_applied(results: list[ApplyResult]) -> None:  # pysyncobj's thread
        with lock:
            applied.extend(
                (r.index, node.journal.synced_index)
                for r in results
                if r.outcome is not Outcome.SKIPPED  # replayed at start
            )

    node.on_applied = on_applied

    async def run() -> None:
        deadline = time.monotonic() + 30
        while not (node.is_ready and node.leader):
            assert time.monotonic() < deadline, "the node never led"
            await asyncio.sleep(0.05)
        await node.propose(_register(), timeout=20)
        for first in range(1, 26, 5):
            await node.propose(_batch(first, 5), timeout=20)

    try:
        asyncio.run(run())
        # What /metrics exposes (the collector's Raft part, as a scrape reads it).
        scraped = {
            sample.name: sample.value
            for family in _HubCollector._raft(
                cast(Any, None), cast(Any, SimpleNamespace(raft=node))
            )
            for sample in family.samples
        }
    finally:
        node.close()
    assert scraped["aiot_raft_journal_flush_seconds_total"] >= 0
    return applied, node.journal.flushes, int(scraped["aiot_raft_journal_flushes_total"])


def test_a_single_node_applies_only_synced_entries(tmp_path: Path) -> None:
    applied, flushes, reported = _run_node(tmp_path / "n", durable=True)
    assert len(applied) == 6
    assert [(i, d) for i, d in applied if i > d] == []
    assert flushes > 0 and reported > 0


def test_a_single_node_with_the_switch_off_never_syncs(tmp_path: Path) -> None:
    applied, flushes, reported = _run_node(tmp_path / "n", durable=False)
    assert len(applied) == 6
    assert any(i > d for i, d in applied)  # applied ahead of the disk
    assert flushes == 0 and reported == 0


def test_a_node_restarts_on_its_durable_journal(tmp_path: Path) -> None:
    data = tmp_path / "n"
    first, _, _ = _run_node(data, durable=True)
    j = DurableJournal(data / JOURNAL_FILE)
    try:
        last = j[len(j) - 1][1]
        term = j.getCurrentTerm()
    finally:
        j._destroy()
    assert last >= max(i for i, _ in first) and term >= 1
    # A second run appends to the same log, in a later term.
    second, _, _ = _run_node(data, durable=True)
    assert min(i for i, _ in second) > last


def test_the_header_is_the_commit_point(tmp_path: Path) -> None:
    """Records added but not synced are past the header's end on disk: a
    reader of the file (pysyncobj's own class) does not see them yet."""
    path = tmp_path / "raft.journal"
    j = DurableJournal(path)
    try:
        j.add(b"a", 1, 1)
        j.sync()
        j.add(b"b", 2, 1)
        (end,) = struct.unpack_from("<I", path.read_bytes(), LAST_RECORD_OFFSET_OFFSET)
        assert end > FIRST_RECORD_OFFSET
        back = stock(path)
        try:
            assert contents(back) == [(b"a", 1, 1)]
        finally:
            back._destroy()
        j.sync()
        back = stock(path)
        try:
            assert contents(back) == [(b"a", 1, 1), (b"b", 2, 1)]
        finally:
            back._destroy()
    finally:
        j._destroy()


def test_the_ingest_bench_can_turn_the_syncs_off(tmp_path: Path) -> None:
    """`aiot bench ingest --journal-baseline` runs its second cluster on
    configs that the hub reads as durable_journal = false."""
    from tools.bench import rig
    from tools.lab.cluster import LocalCluster

    cluster = LocalCluster(tmp_path / "cluster", rig.NODES, election_ms=rig.election_ms())
    assert all(c.load(p).raft.durable_journal for p in cluster.configs)
    rig.journal_off(cluster)
    assert not any(c.load(p).raft.durable_journal for p in cluster.configs)


def test_after_a_failed_sync_the_journal_refuses_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed fsync may have dropped the pages: a retry that succeeds would
    acknowledge what is not on disk. The journal stops instead."""
    j = DurableJournal(tmp_path / "raft.journal")
    j.add(b"a", 1, 1)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    with monkeypatch.context() as mp:
        mp.setattr(os, "fdatasync", broken)
        with pytest.raises(JournalError) as err:
            j.sync()
    assert err.value.reason == "sync_failed" and j.synced_index == 0
    with pytest.raises(JournalError):
        j.sync()  # the disk works again; the journal still refuses
    with pytest.raises(JournalError):
        j.add(b"b", 2, 1)
    j._destroy()
