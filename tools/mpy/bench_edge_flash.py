# Flash cost of the slot store, run by `aiot bench edge` under MicroPython.
#
#   micropython bench_edge_flash.py SECONDS MODE [PROGSIZE] [RECORD_BYTES]
#
# The reference scenario: one smart plug (edge.sensors.SimulatedPlug, three
# channels) sampled at 1 Hz in simulated time (timestamps 1000 ms apart, no
# waiting), offline: records are flushed only when full, as SlotStore.add()
# does. The store runs with its defaults (capacity, record size; RECORD_BYTES
# overrides the record size for experiments) on edge/ramdisk.py's
# RAMBlockDev with 4096-byte blocks, as on ESP32 and Pico W. MODE says where
# the slots live:
#   lfs  slot files on LittleFS (vfs.VfsLfs2; PROGSIZE 0 or absent: the
#        VfsLfs2 default, 32), the store's default storage
#   raw  slots on a raw partition of their own (edge/slotio.py BlockSlots),
#        the metadata on LittleFS on another device, as boards do when their
#        config names a slot partition
# It runs SECONDS simulated seconds, or with SECONDS 0 until the store has to
# drop a reading because both slots are full ("filled": the figures then
# cover the whole buffer).
#
# Counted from the node's boot-time metadata save up to the last flush of a
# full record (the partial record a shutdown would flush is left out, so the
# figures are the steady state of a long offline stretch):
#   readings        readings in the flushed records
#   payload_bytes   packed reading bytes (edge/pack.py), the "encoded" bytes
#   store_bytes     what the store wrote: record headers, payloads and slot
#                   headers (SlotStore.bytes_written), plus every metadata save
#   flash_bytes     RAMBlockDev.bytes_programmed of every device involved
#
# Prints one JSON line.
import json
import sys

import vfs

from edge.meta import Meta
from edge.ramdisk import RAMBlockDev
from edge.sensors import SimulatedPlug
from edge.slots import SlotStore

MOUNT = "/flash"
BLOCK = 4096
_MAX_SECONDS = 90 * 86400  # SECONDS 0 runs until both slots are full, or this
T0 = 1763700000000  # ms since the epoch; any fixed start will do

seconds = int(sys.argv[1])
mode = sys.argv[2]
progsize = int(sys.argv[3]) if len(sys.argv) > 3 else 0
record_bytes = int(sys.argv[4]) if len(sys.argv) > 4 else 0
if mode not in ("lfs", "raw"):
    raise SystemExit("MODE must be lfs or raw")


class CountingMeta(Meta):
    # Meta whose saves are counted (Meta.save returns the bytes written).
    saved = 0
    saves = 0

    def save(self):
        n = super().save()
        CountingMeta.saved += n
        CountingMeta.saves += 1
        return n


class CountingStore(SlotStore):
    # SlotStore that counts the payload bytes and readings of each flush.
    def __init__(self, *args, **kw):
        self.payload_bytes = 0
        self.readings = 0
        self.records = 0
        super().__init__(*args, **kw)

    def flush(self):
        length = self.packer.pos
        n = super().flush()
        if n:
            self.payload_bytes += length
            self.readings += n
            self.records += 1
        return n


def mount(dev):
    if progsize:
        vfs.VfsLfs2.mkfs(dev, progsize=progsize)
        vfs.mount(vfs.VfsLfs2(dev, progsize=progsize), MOUNT)
    else:
        vfs.VfsLfs2.mkfs(dev)
        vfs.mount(vfs.VfsLfs2(dev), MOUNT)


# The store's defaults, from a store on a scratch disk.
mount(RAMBlockDev(BLOCK, 8))
probe = SlotStore(MOUNT, Meta(MOUNT))
capacity = probe.capacity
default_record_bytes = len(probe._pay)
probe = None
vfs.umount(MOUNT)
kw = {"record_bytes": record_bytes} if record_bytes else {}
record_bytes = record_bytes or default_record_bytes

if mode == "lfs":
    # Both slots at full capacity, the metadata and LittleFS's own blocks.
    devs = [RAMBlockDev(BLOCK, (2 * capacity) // BLOCK + 24)]
    mount(devs[0])
else:
    from edge.slotio import BlockSlots

    devs = [RAMBlockDev(BLOCK, 16), RAMBlockDev(BLOCK, (2 * capacity) // BLOCK)]
    mount(devs[0])  # the metadata's file system
    kw["io"] = BlockSlots(devs[1])
for d in devs:
    d.programs = d.erases = d.bytes_programmed = 0

meta = CountingMeta(MOUNT)
meta.boot_epoch += 1  # what edge/node.py does at every boot
meta.save()
store = CountingStore(MOUNT, meta, **kw)
plug = SimulatedPlug(seed=7)


def snapshot():
    return (
        store.readings,
        store.records,
        store.payload_bytes,
        store.bytes_written + CountingMeta.saved,
        sum(d.bytes_programmed for d in devs),
        sum(d.programs for d in devs),
        sum(d.erases for d in devs),
        CountingMeta.saves,
    )


last = snapshot()
channels = 0
filled = False  # the store had to drop a reading: both slots were full
t = T0
elapsed = 0
while not filled and elapsed < (seconds or _MAX_SECONDS):
    rows = plug.sample(t)
    channels = len(rows)
    for sensor, value in rows:
        records = store.records
        if not store.add(sensor, t, value):
            raise SystemExit("the store refused a reading")
        if meta.dropped:
            filled = True
            break
        if store.records != records:  # add() flushed a full record
            last = snapshot()
    t += 1000
    elapsed += 1

readings, records, payload, store_bytes, flash, programs, erases, saves = last
print(
    json.dumps(
        {
            "mode": mode,
            "seconds": elapsed,
            "channels": channels,
            "filled": filled,
            "readings": readings,
            "records": records,
            "payload_bytes": payload,
            "store_bytes": store_bytes,
            "flash_bytes": flash,
            "programs": programs,
            "erases": erases,
            "meta_saves": saves,
            "record_bytes": record_bytes,
            "capacity": store.capacity,
            "block_size": BLOCK,
            "progsize": progsize or 32,
        }
    )
)
