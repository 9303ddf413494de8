# Power-cut torture of edge/slots.py, run under MicroPython.
#
#   micropython slots_torture.py BACKEND count           -> {"ops": W, "switches": .., ...}
#   micropython slots_torture.py BACKEND run FIRST LAST  -> {"tested": n, "failures": [...]}
#
# BACKEND is "lfs" (slot files on LittleFS) or "raw" (slots on a raw flash
# partition, edge/slotio.py BlockSlots; the metadata stays on LittleFS). Both
# devices share one power supply: one cut stops every write.
#
# `run` cuts power at every program/erase number N in FIRST..LAST, once with
# the interrupted write lost entirely and once torn (its first bytes landed),
# then reboots from the flash image and checks the store's promises:
# recovery succeeds; every record whose flush returned is present and intact
# unless the hub had acknowledged it; no sequence number is reused; the store
# keeps working.
import gc
import json
import struct
import sys

import vfs

from edge.meta import Meta
from edge.ramdisk import Power, RAMBlockDev
from edge.slotio import BlockSlots
from edge.slots import SlotStore

BLOCK = 512
BLOCKS = 48
MOUNT = "/flash"
DIR = "/flash"
KW = {"capacity": 1200, "record_bytes": 160, "cleanup_ratio": 0.5}
RAW_BLOCKS = 6  # two slots of 3 x 512 bytes
BACKEND = sys.argv[1]


class Rig:
    # The flash of one device: LittleFS (metadata, and slots for "lfs") and,
    # for "raw", a partition for the slots.
    def __init__(self, power, fs_image=None, raw_image=None):
        self.power = power
        self.fs = RAMBlockDev(BLOCK, BLOCKS, fs_image, power)
        if fs_image is None:
            vfs.VfsLfs2.mkfs(self.fs)
        self.raw = None
        if BACKEND == "raw":
            self.raw = RAMBlockDev(BLOCK, RAW_BLOCKS, raw_image, power)

    @property
    def dead(self):
        return self.power.dead

    @property
    def ops(self):
        return self.power.ops

    def reboot(self):
        raw = self.raw.image() if self.raw is not None else None
        return Rig(Power(), self.fs.image(), raw)

    def store(self):
        mount(self.fs)
        if self.raw is None:
            return SlotStore(DIR, Meta(DIR), **KW)
        return SlotStore(None, Meta(DIR), io=BlockSlots(self.raw), **KW)


FLUSHES = 44
PER_FLUSH = 12


class Run:
    def __init__(self):
        self.journal = []  # (seq, rows) for each flush that returned
        self.inflight = None  # (seq, rows) of the flush under way
        self.acked = 0
        self.switches = 0
        self.cleanups = 0
        self.store = None


def mount(dev):
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(dev), MOUNT)


def reading(i):
    # Smart-plug-like values with a fixed resolution; distinct per index.
    v = (1200.5 + i, 4096.25 + i / 4, 230.0 + (i % 20) / 10)[i % 3]
    v = struct.unpack("<f", struct.pack("<f", v))[0]  # what flash holds
    return (i % 3, 1763700000000 + 1000 * (i // 3), v)


def scenario(rig, run):
    store = rig.store()
    run.store = store
    i = 0
    for f in range(FLUSHES):
        rows = []
        for _ in range(PER_FLUSH):
            r = reading(i)
            store.add(r[0], r[1], r[2])
            rows.append(r)
            i += 1
        active = store.active
        run.inflight = (store.next_seq, rows)
        n = store.flush()
        assert n == PER_FLUSH
        run.journal.append((store.next_seq - n, rows))
        run.inflight = None
        if store.active != active:
            run.switches += 1
        if f % 3 == 2:
            # The hub acknowledges all but the newest record, then cleanup.
            w = run.journal[-2][0] + PER_FLUSH - 1
            store.ack(w)
            run.acked = max(run.acked, w)
            run.cleanups += store.cleanup()
    return store


def check(rig, run, torn):
    # Reboot from the flash images and check every promise.
    store = rig.reboot().store()  # recovery must not raise
    got = {}
    for seq, sensor, ts, value in store.read(1, 100000):
        got[seq] = (sensor, ts, value)
    top = 0
    for seq, rows in run.journal:
        for k in range(len(rows)):
            top = max(top, seq + k)
            if seq + k <= run.acked:
                continue
            have = got.get(seq + k)
            if have is None:
                return "lost seq %d" % (seq + k)
            if have != rows[k]:
                return "seq %d changed: %r != %r" % (seq + k, have, rows[k])
    if run.inflight is not None:
        seq, rows = run.inflight
        for k in range(len(rows)):
            if seq + k in got:
                top = max(top, seq + k)
                if got[seq + k] != rows[k]:
                    return "in-flight seq %d changed" % (seq + k)
    for seq in got:
        if seq > top:
            return "unknown seq %d after recovery" % seq
    if store.next_seq <= top:
        return "next_seq %d would reuse %d" % (store.next_seq, top)
    # The store keeps working: a new record gets fresh numbers and reads back.
    first = store.next_seq
    store.add(9, 1763800000000, 1.5)
    if store.flush() != 1:
        return "could not append after recovery"
    back = store.read(first, 5)
    if len(back) != 1 or back[0] != (first, 9, 1763800000000, 1.5):
        return "new record did not read back: %r" % (back,)
    return None


def fresh(cut_at=0, torn=None):
    # A formatted device; cut points count from the first write after that.
    rig = Rig(Power())
    rig.power.ops = 0
    rig.power.cut_at = cut_at
    rig.power.torn = torn
    return rig


mode = sys.argv[2]
if mode == "count":
    dev = fresh()
    run = Run()
    scenario(dev, run)
    err = check(dev, run, None)
    print(
        json.dumps(
            {"ops": dev.ops, "switches": run.switches, "cleanups": run.cleanups, "error": err}
        )
    )
else:
    first, last = int(sys.argv[3]), int(sys.argv[4])
    failures = []
    tested = 0
    for n in range(first, last + 1):
        for torn in (None, 100):
            dev = fresh(n, torn)
            run = Run()
            try:
                scenario(dev, run)
                failures.append([n, torn, "power was never cut"])
                continue
            except OSError:  # PowerCut, or the EIO of a dead device
                if not dev.dead:
                    raise
                if run.store is not None:
                    run.store._close()  # no finalizer runs on the dead device
            try:
                err = check(dev, run, torn)
            except Exception as e:  # recovery itself failed
                err = "recovery raised %s: %s" % (type(e).__name__, e)
            if err:
                failures.append([n, torn, err])
            tested += 1
            gc.collect()
    print(json.dumps({"tested": tested, "failures": failures[:20], "failed": len(failures)}))
