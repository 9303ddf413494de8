# Named scenarios for edge/slots.py and edge/meta.py, run under MicroPython
# on LittleFS in RAM (or, with a second argument, in a host directory).
#
#   micropython slots_cases.py CASE [DIR]   -> one JSON line of findings
import json
import os
import struct
import sys

from edge.meta import Meta
from edge.slots import STOP_SAMPLING, SlotStore

T0 = 1763700000000


def setup():
    if len(sys.argv) > 2:
        return sys.argv[2]
    import vfs

    from edge.ramdisk import RAMBlockDev

    dev = RAMBlockDev(512, 96)
    vfs.VfsLfs2.mkfs(dev)
    vfs.mount(vfs.VfsLfs2(dev), "/flash")
    return "/flash"


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def fill(store, first, n, per_record):
    # Add n readings (index first..), flushing every per_record; returns rows.
    rows = []
    for i in range(first, first + n):
        r = (i % 3, T0 + 1000 * (i // 3), f32(230.0 + (i % 50) / 10))
        if not store.add(r[0], r[1], r[2]):
            break
        rows.append(r)
        if len(rows) % per_record == 0:
            store.flush()
    store.flush()
    return rows


def stored(store):
    return {seq: (s, t, v) for seq, s, t, v in store.read(1, 100000)}


def case_torn_tail(d):
    store = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    rows = fill(store, 0, 90, 15)
    store.checkpoint()
    path = store.io._path(store.active)
    with open(path, "rb") as f:
        f.seek(16)
        head = f.read(40)
    store._close()
    with open(path, "ab") as f:  # a record cut short, as a torn append leaves it
        f.write(head)
    store2 = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    got = stored(store2)
    intact = all(got.get(i + 1) == rows[i] for i in range(len(rows)))
    more = fill(store2, 90, 6, 6)
    after = stored(store2)
    return {
        "truncated_bytes": store2.truncated_bytes,
        "intact": intact,
        "count": len(got),
        "next_seq": store2.next_seq,
        "appended_after": all(after.get(91 + i) == more[i] for i in range(len(more))),
    }


def case_bit_flip(d):
    store = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    rows = fill(store, 0, 90, 15)  # six records of 15 readings
    store.checkpoint()
    path = store.io._path(store.active)
    # Flip one bit inside the third record's payload.
    offsets = []
    store._records(store.active, visit=lambda pos, seq, c, ln: offsets.append((pos, seq, ln)))
    pos, seq, ln = offsets[2]
    store._close()
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[pos + 18 + ln // 2] ^= 0x10
    with open(path, "wb") as f:
        f.write(data)
    store2 = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    got = stored(store2)
    # read() stops at the gap; read past it too.
    rest = store2.read(seq + 15, 1000)
    for s, a, b, c in rest:
        got[s] = (a, b, c)
    missing = [i + 1 for i in range(len(rows)) if got.get(i + 1) != rows[i]]
    return {
        "corrupt_records": store2.corrupt_records,
        "missing": missing,
        "flipped_seq": seq,
        "next_seq": store2.next_seq,
    }


def case_meta_torn(d):
    m = Meta(d)
    m.watermark = 10
    m.next_seq = 20
    m.save()  # -> meta.a
    m.watermark = 11
    m.next_seq = 21
    m.cmd_id = "c-1"
    m.save()  # -> meta.b
    with open(d + "/meta.b", "rb") as f:
        b = bytearray(f.read())
    with open(d + "/meta.b", "wb") as f:  # torn: only the first half landed
        f.write(b[: len(b) // 2])
    m2 = Meta(d)
    fell_back = (m2.watermark, m2.next_seq, m2.loaded_from, m2.rejected)
    m2.watermark = 12
    m2.save()  # must overwrite the torn copy, not the good one
    m3 = Meta(d)
    with open(d + "/meta.a", "rb") as f:
        a = bytearray(f.read())
    a[20] ^= 1
    with open(d + "/meta.a", "wb") as f:  # a bit flip in the older copy
        f.write(a)
    m4 = Meta(d)
    return {
        "fell_back": list(fell_back),
        "after_save": [m3.watermark, m3.loaded_from, m3.cmd_id],
        "flip": [m4.watermark, m4.loaded_from, m4.rejected],
    }


def case_meta_utf8(d):
    m = Meta(d)
    m.watermark = 5
    m.save()  # meta.a: the older, valid copy
    m.watermark = 6
    m.cmd_detail = "\u00e9" * 150  # 300 bytes of two-byte characters
    m.save()  # meta.b
    clipped = Meta(d)
    # A CRC-valid copy that does not decode (foreign firmware): fall back.
    import binascii

    with open(d + "/meta.b", "rb") as f:
        b = bytearray(f.read())
    pos = 11 + 60  # length of cmd_id
    struct.pack_into("<H", b, pos, 60000)
    struct.pack_into("<I", b, len(b) - 4, binascii.crc32(memoryview(b)[:-4]) & 0xFFFFFFFF)
    with open(d + "/meta.b", "wb") as f:
        f.write(b)
    fallback = Meta(d)
    return {
        "clipped_len": len(clipped.cmd_detail.encode()),
        "clipped_ok": clipped.cmd_detail == "\u00e9" * 100,
        "watermark": clipped.watermark,
        "fallback": [fallback.watermark, fallback.loaded_from, fallback.rejected],
    }


def case_drop_oldest(d):
    store = SlotStore(d, Meta(d), capacity=1024, record_bytes=200)
    rows = fill(store, 0, 1500, 20)  # far more than two slots hold, no acks
    got = stored(store)
    newest_kept = all(got.get(i + 1) == rows[i] for i in range(len(rows)) if i + 1 in got)
    return {
        "accepted": len(rows),
        "dropped": store.meta.dropped,
        "floor": store.meta.floor,
        "stored": len(got),
        "first_stored": min(got) if got else 0,
        "last_stored": max(got) if got else 0,
        "next_seq": store.next_seq,
        "unacked": store.unacked(),
        "values_match": newest_kept,
    }


def case_stop_sampling(d):
    store = SlotStore(d, Meta(d), capacity=1024, record_bytes=200, policy=STOP_SAMPLING)
    rows = fill(store, 0, 1500, 20)
    refused = not store.add(0, T0, 1.0)
    stopped = store.stopped
    got = stored(store)
    store.ack(max(got))
    erased = store.cleanup()
    resumed = store.add(0, T0 + 10**6, 2.0)
    return {
        "accepted": len(rows),
        "refused": refused,
        "stopped_before": stopped,
        "erased": erased,
        "resumed": resumed,
        "stopped_after": store.stopped,
        "dropped": store.meta.dropped,
        "contiguous": sorted(got) == list(range(1, len(got) + 1)),
    }


def case_cleanup_ratio(d):
    # Acks flowing: the store switches at the ratio and erases behind itself.
    store = SlotStore(d, Meta(d), capacity=2048, record_bytes=200, cleanup_ratio=0.5)
    switches_at = []
    i = 0
    erased = 0
    for _ in range(40):
        active = store.active
        fill(store, i, 20, 20)
        i += 20
        if active is not None and store.active != active:
            switches_at.append(store.slots[active].size)
        store.ack(store.next_seq - 1)
        erased += store.cleanup()
    online = {"switch_sizes": switches_at, "erased": erased}
    # Offline: no acks; the active slot fills to capacity before switching.
    d2 = d + "/offline"
    os.mkdir(d2)
    store = SlotStore(d2, Meta(d2), capacity=2048, record_bytes=200, cleanup_ratio=0.5)
    sizes = []
    i = 0
    for _ in range(40):
        active = store.active
        fill(store, i, 20, 20)
        i += 20
        if active is not None and store.active != active:
            sizes.append(store.slots[active].size)
    return {"online": online, "offline_switch_sizes": sizes, "capacity": 2048}


def case_reboots_never_reuse(d):
    seen = []
    i = 0
    for _ in range(5):
        store = SlotStore(d, Meta(d), capacity=2048, record_bytes=200)
        store.meta.boot_epoch += 1
        store.meta.save()
        first = store.next_seq
        fill(store, i, 30, 10)
        i += 30
        seen.append([first, store.next_seq])
        store.ack(store.next_seq - 1)
        store.cleanup()
        # no close(): every boot ends in a power cut
    return {"ranges": seen}


def _raw(d, dev, per_slot=None):
    from edge.slotio import BlockSlots

    return SlotStore(d, Meta(d), record_bytes=256, io=BlockSlots(dev, blocks_per_slot=per_slot))


def case_raw_record_ending_in_ff(d):
    # A programmed 0xFF at a record's end must not look like erased flash.
    from edge.ramdisk import RAMBlockDev

    dev = RAMBlockDev(512, 16)
    st = _raw(d, dev)
    for i in range(5):
        st.add(0, T0 + i, float(i))
    st.flush()
    st.add(1, T0 + 9, f32(1.2345678))  # XOR of these two ends in 0xFF
    st.add(1, T0 + 9, f32(-2.3456789))
    st.flush()
    before = st.read(1, 100)
    st2 = _raw(d, RAMBlockDev(512, 16, dev.image()))
    after = st2.read(1, 100)
    st2.add(2, T0 + 20, 7.0)
    st2.flush()
    return {
        "same": before == after,
        "count": len(after),
        "corrupt": st2.corrupt_records,
        "next_seq_fresh": st2.next_seq > 8,
        "new_reads_back": st2.read(st2.next_seq - 1, 5)[0][1:] == (2, T0 + 20, 7.0),
    }


def case_raw_header_crc_ending_in_ff(d):
    # Generation 6's header CRC ends in 0xFF; an empty slot with that header
    # must survive a reboot and take appends after its header.
    from edge.ramdisk import RAMBlockDev

    dev = RAMBlockDev(512, 4)
    st = _raw(d, dev, 2)
    t = T0
    while not (
        st.active is not None and st.slots[st.active].gen == 6 and not st.slots[st.active].last_seq
    ):
        for k in range(40):
            st.add(0, t, float(k))
            t += 1
        st.flush()
        st.ack(st.next_seq - 1)
        st.cleanup()
    st2 = _raw(d, RAMBlockDev(512, 4, dev.image()), 2)
    first = st2.next_seq
    for k in range(10):
        st2.add(0, t + k, float(k))
    st2.flush()
    st3 = _raw(d, RAMBlockDev(512, 4, st2.io.dev.image()), 2)
    got = st3.read(first, 100)
    return {"reread": len(got), "first": got[0][0] if got else 0, "want_first": first}


def case_recovery_never_below_watermark(d):
    # The last record is lost at boot (a flip under the file system) after the
    # metadata already holds a higher watermark: numbering resumes above it.
    store = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    fill(store, 0, 30, 10)
    store.ack(30)
    store.meta.save()  # as the executor's saves do, with the watermark
    path = store.io._path(store.active)
    store._close()
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[-3] ^= 0x01  # the last record fails its CRC
    with open(path, "wb") as f:
        f.write(data)
    st2 = SlotStore(d, Meta(d), capacity=4096, record_bytes=200)
    return {"watermark": st2.meta.watermark, "next_seq": st2.next_seq}


result = globals()["case_" + sys.argv[1]](setup())
print(json.dumps(result))
