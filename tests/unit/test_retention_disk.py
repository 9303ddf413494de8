"""A really full disk under the store and the Raft journal: a 4 MiB tmpfs,
mounted in a user and mount namespace of its own (``unshare``), filled with
a file. Store.apply (the daemon's full policy) and DurableJournal.add wait
for room, then finish what they were doing once the file is removed: no
entry skipped, no error raised, nothing lost (the journal read back)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.base.paths import ROOT

pytestmark = pytest.mark.unit

SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path
from hub.state import entries as e
from hub.state.journal import DurableJournal
from hub.state.store import Store
from protocol import messages as m

root = Path(sys.argv[1])
filler = root / "filler"


def fill(leave):
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)


def free_after(s):
    time.sleep(s)
    os.unlink(filler)


store = Store(root / "store", map_size=64 << 20)
store.set_full_policy(wait=True)
journal = DurableJournal(root / "journal.bin")
cap = m.Capability("relay.set", (m.ParamSpec("on", m.ParamKind.Bool, 0.0, 1.0),))
device = e.Device("plug-1", b"k" * 32, (cap,), None, "")
store.apply([(1, e.encode(e.RegisterDevice(device, 1)))])
fill(200_000)
threading.Thread(target=free_after, args=(2,)).start()
stored = 0
for i in range(2, 300):
    first = 1 + (i - 2) * 60
    rs = tuple(m.Reading(k % 3, k * 10, float(k)) for k in range(60))
    msg = m.TelemetryBatch("plug-1", 1, first, 1_763_700_000_000 + first * 10, rs)
    stored += store.apply([(i, e.encode(e.Batch.from_message(msg, "hub-1")))])[0].stored
out = {"stored": stored, "watermark": store.watermark("plug-1"), "waits": store.full_waits}
store.close()
fill(0)
threading.Thread(target=free_after, args=(2,)).start()
for i in range(1, 200):
    journal.add(bytes([i % 256]) * 2000, i, 1)
    journal.sync()
again = DurableJournal(root / "journal.bin")
out["journal"] = [(int(x[1]), bytes(x[0]) == bytes([x[1] % 256]) * 2000) for x in again]
print(json.dumps(out))
"""


def _on_tiny_disk(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Run ``source`` with a 4 MiB tmpfs of its own as its argument."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare not found: apt-get install util-linux")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(source)
    shell = f'mount -t tmpfs -o size=4m tmpfs "{mnt}" && exec "{sys.executable}" "{script}" "{mnt}"'
    argv = [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", shell]
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(
            f"no user namespaces here ({probe.stderr.decode().strip()}): a small "
            "filesystem needs `unshare --user --map-root-user --mount` (util-linux)"
        )
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_full_disk_makes_apply_and_the_journal_wait_then_finish(tmp_path: Path) -> None:
    proc = _on_tiny_disk(tmp_path, SCRIPT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["waits"] >= 1, "the disk never filled: the test proves nothing"
    assert out["stored"] == out["watermark"] == 298 * 60
    assert out["journal"] == [[i, True] for i in range(1, 200)]
    assert "apply waits for space" in proc.stderr
    assert "disk full, write retried" in proc.stderr


ROOM_SCRIPT = r"""
import json, os, sys, threading, time
from pathlib import Path
from hub.state.journal import DurableJournal

root = Path(sys.argv[1])
filler = root / "filler"
journal = DurableJournal(root / "journal.bin")
seen = []
journal.on_no_room = lambda: seen.append(("no_room", journal.room, len(journal)))
journal.on_room = lambda: seen.append(("room", journal.room, len(journal)))


def fill():
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.close(fd)


def free_after(s):
    time.sleep(s)
    seen.append(("freed", journal.room, len(journal)))
    os.unlink(filler)


journal.add(b"a" * 100, 1, 1)
journal.sync()
fill()
threading.Thread(target=free_after, args=(1.5,)).start()
journal.add(b"b" * 8000, 2, 1)  # waits for room
journal.sync()
fill()
threading.Thread(target=free_after, args=(1.5,)).start()
journal.setCurrentTerm(2, "node-b")  # the meta waits for room too
journal._destroy()
again = DurableJournal(root / "journal.bin")
print(json.dumps({
    "seen": seen,
    "entries": [(int(x[1]), len(bytes(x[0]))) for x in again],
    "term": [again.getCurrentTerm(), again.getVotedForNodeId()],
    "waits": journal.room_waits,
}))
"""


def test_a_write_that_finds_no_room_calls_the_hooks_and_waits(tmp_path: Path) -> None:
    """The journal tells its SyncObj (DurableSyncObj: a leader steps down)
    before a write waits for room, and once it went through; the entry and
    the term and vote are written then, not skipped."""
    proc = _on_tiny_disk(tmp_path, ROOM_SCRIPT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    hooks = [["no_room", False, 1], ["freed", False, 1], ["room", True, 1]]
    meta = [["no_room", False, 2], ["freed", False, 2], ["room", True, 2]]
    assert out["seen"] == hooks + meta
    assert out["waits"] == 2
    assert out["entries"] == [[1, 100], [2, 8000]]
    assert out["term"] == [2, "node-b"]
    assert "disk full, write retried until there is room" in proc.stderr
    assert "room again, written after" in proc.stderr
