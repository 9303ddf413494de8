# The A/B slot store: every reading on flash until the hub has committed it.
#
#   store = SlotStore("/flash/aiot", meta, capacity=512 * 1024)
#   store.add(sensor, ts_ms, value)   # buffered in RAM, packed (edge/pack.py)
#   store.flush()                     # one record appended to the active slot
#   readings = store.read(seq, 32)    # [(seq, sensor, ts_ms, value), ...]
#   store.ack(watermark)              # from the hub's CommitAck
#   store.cleanup()                   # erase a fully acknowledged slot
#
# Two slot files, slot.a and slot.b, of at most `capacity` bytes each. A slot
# file is a 16-byte header (magic "AIS1", version, generation u32, CRC32)
# followed by records, only ever appended:
#
#   magic 0xA7 | generation u16 | count u8 | length u16 | first seq u64 | CRC32
#   then `length` bytes of packed readings (edge/pack.py)
#
# The CRC covers the first 14 header bytes and the payload. The generation in
# every record is the low 16 bits of its slot's generation, so a record left
# over from an erased slot can never be taken for a live one. edge/DESIGN.md
# gives the switching, cleanup, overflow and recovery rules.

import binascii
import os
import struct

from edge import const
from edge.pack import Packer, PackError, unpack

_SLOT_MAGIC = b"AIS1"
_SLOT_VERSION = const(1)
_SLOT_HEAD = "<4sBxxxI"  # + CRC32 of these 12 bytes
_SLOT_HEAD_SIZE = const(16)
_REC_MAGIC = const(0xA7)
_REC_HEAD = "<BHBHQ"  # magic, gen16, count, length, first seq; + CRC32
_REC_HEAD_SIZE = const(18)
_MAX_COUNT = const(255)
# Sequence numbers are reserved on flash this many at a time, before any is
# handed out: after a power cut, numbering resumes past everything that may
# have been used, whatever recovery finds (one metadata save per 4096).
_RESERVE = const(4096)

DROP_OLDEST = "drop_oldest"
STOP_SAMPLING = "stop_sampling"


class FileSlots:
    # The slots as the files slot.a and slot.b in `directory`: the store's
    # default io (edge/slotio.py describes the interface, and BlockSlots).
    def __init__(self, directory):
        self.dir = directory
        self.programmed = 0
        self._wf = None  # append handle of the slot last appended to
        self._wi = -1

    def _path(self, i):
        name = "slot." + "ab"[i]
        return self.dir + "/" + name if self.dir else name

    def exists(self, i):
        return self.size(i) >= 0

    def size(self, i):
        try:
            return os.stat(self._path(i))[6]
        except OSError:
            return -1

    def scan_limit(self, i):
        return self.size(i)

    def set_end(self, i, end):
        pass  # the file's size is its end

    def reader(self, i):
        return open(self._path(i), "rb")

    def close(self):
        if self._wf is not None:
            try:
                self._wf.close()
            except OSError:
                pass
            self._wf = None
            self._wi = -1

    def create(self, i, header):
        if i == self._wi:
            self.close()
        with open(self._path(i), "wb") as f:
            f.write(header)
        self.programmed += len(header)

    def append(self, i, data):
        if self._wi != i:
            self.close()
            self._wf = open(self._path(i), "ab")  # noqa: SIM115 - kept open between appends
            self._wi = i
        self._wf.write(data)
        self._wf.flush()  # on LittleFS: a sync, so the record survives a power cut
        self.programmed += len(data)

    def erase(self, i):
        if i == self._wi:
            self.close()
        try:
            os.remove(self._path(i))
        except OSError:
            pass  # already gone

    def truncate(self, i, end, buf):
        # Copy the good prefix to a new file and rename it over the slot:
        # atomic on LittleFS, and on a host file system.
        if i == self._wi:
            self.close()
        path = self._path(i)
        tmp = path + ".tmp"
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            left = end
            while left:
                n = src.readinto(memoryview(buf)[: min(left, len(buf))])
                if not n:
                    break
                dst.write(memoryview(buf)[:n])
                left -= n
        os.rename(tmp, path)
        return True


class StoreError(OSError):
    pass


class _Slot:
    # What the store knows about one slot file, rebuilt by recovery.
    def __init__(self, name):
        self.name = name
        self.clear()

    def clear(self):
        self.gen = 0  # 0: no valid header (empty)
        self.size = 0  # bytes in use, header included
        self.first_seq = 0
        self.last_seq = 0  # 0: no records
        self.readings = 0
        self.records = 0


class SlotStore:
    def __init__(
        self,
        directory,
        meta,
        capacity=512 * 1024,
        cleanup_ratio=0.5,
        policy=DROP_OLDEST,
        record_bytes=1024,
        io=None,
    ):
        # io: where the slots live (edge/slotio.py); default: files in
        # `directory`. With BlockSlots the slots are raw flash blocks and
        # `capacity` is the size of each slot's block run.
        if policy not in (DROP_OLDEST, STOP_SAMPLING):
            raise ValueError("policy must be drop_oldest or stop_sampling")
        if not 0 < cleanup_ratio <= 1:
            raise ValueError("cleanup_ratio must be in (0, 1]")
        self.io = io if io is not None else FileSlots(directory)
        if getattr(self.io, "capacity", None):
            capacity = self.io.capacity
        if capacity < _SLOT_HEAD_SIZE + record_bytes:
            raise ValueError("capacity must hold at least one full record")
        self.dir = directory
        self.meta = meta
        self.capacity = capacity
        self.cleanup_ratio = cleanup_ratio
        self.policy = policy
        self.packer = Packer(record_bytes - _REC_HEAD_SIZE)
        self._hdr = bytearray(_REC_HEAD_SIZE)
        self._pay = bytearray(record_bytes)
        self.slots = (_Slot("a"), _Slot("b"))
        self.active = None  # index of the slot appended to
        self.next_seq = 1
        self.stopped = False  # stop_sampling policy engaged
        self.corrupt_records = 0  # invalid records skipped by recovery
        self.truncated_bytes = 0  # torn tails cut by recovery
        self.torn_tails = 0  # torn tails left in place (raw flash) and skipped
        self.bytes_written = 0  # record and header bytes appended
        self.flash_writes = 0
        self._cursor = None  # (slot index, gen, offset, seq) of a recent read
        self.recover()

    # -- paths and headers ---------------------------------------------------

    def _read_slot_header(self, f):
        h = f.read(_SLOT_HEAD_SIZE)
        if len(h) != _SLOT_HEAD_SIZE:
            return 0
        magic, version, gen = struct.unpack_from(_SLOT_HEAD, h, 0)
        crc = struct.unpack_from("<I", h, 12)[0]
        if magic != _SLOT_MAGIC or version != _SLOT_VERSION or gen == 0:
            return 0
        if binascii.crc32(memoryview(h)[:12]) & 0xFFFFFFFF != crc:
            return 0
        return gen

    # -- scanning --------------------------------------------------------------

    def _record_at(self, f, pos, end, gen16):
        # The valid record at pos -> (seq, count, length), or None. Leaves the
        # payload in self._pay.
        if pos + _REC_HEAD_SIZE > end:
            return None
        f.seek(pos)
        h = self._hdr
        if f.readinto(h) != _REC_HEAD_SIZE:
            return None
        magic, g, count, length, seq = struct.unpack_from(_REC_HEAD, h, 0)
        if magic != _REC_MAGIC or g != gen16 or count == 0 or seq == 0:
            return None
        if length == 0 or length > len(self._pay) or pos + _REC_HEAD_SIZE + length > end:
            return None
        mv = memoryview(self._pay)[:length]
        if f.readinto(mv) != length:
            return None
        crc = binascii.crc32(memoryview(h)[:14])
        crc = binascii.crc32(mv, crc) & 0xFFFFFFFF
        if crc != struct.unpack_from("<I", h, 14)[0]:
            return None
        return seq, count, length

    def _next_candidate(self, f, pos, end):
        # Position of the next record magic byte after pos, or end. A chunk
        # of nothing but 0xFF is erased flash: nothing follows.
        buf = self._pay
        pos += 1
        while pos < end:
            f.seek(pos)
            n = f.readinto(memoryview(buf)[: min(len(buf), end - pos)])
            if not n:
                return end
            erased = True
            for j in range(n):
                b = buf[j]
                if b == _REC_MAGIC:
                    return pos + j
                if b != 0xFF:
                    erased = False
            if erased:
                return end
            pos += n
        return end

    def _erased(self, f, pos, end):
        # Does an erased (all 0xFF) record header start at pos?
        n = min(_REC_HEAD_SIZE, end - pos)
        f.seek(pos)
        got = f.readinto(memoryview(self._hdr)[:n])
        for j in range(got):
            if self._hdr[j] != 0xFF:
                return False
        return got > 0

    def _records(self, i, start=None, visit=None, limit=None):
        # Walk the valid records of slot i up to `limit` (default: the slot's
        # size), calling visit(pos, seq, count, length) for each (the payload
        # is in self._pay). Returns (end of the last valid record, invalid
        # records skipped, limit).
        s = self.slots[i]
        size = s.size if limit is None else limit
        if size < _SLOT_HEAD_SIZE or not s.gen:
            return _SLOT_HEAD_SIZE, 0, size
        gen16 = s.gen & 0xFFFF
        good_end = _SLOT_HEAD_SIZE
        skipped = 0
        with self.io.reader(i) as f:
            pos = _SLOT_HEAD_SIZE if start is None else start
            while pos < size:
                rec = self._record_at(f, pos, size, gen16)
                if rec is None:
                    if self._erased(f, pos, size):
                        break  # erased flash: the slot ends here
                    skipped += 1
                    pos = self._next_candidate(f, pos, size)
                    continue
                seq, count, length = rec
                if visit is not None and visit(pos, seq, count, length) is False:
                    return pos, skipped, size
                pos += _REC_HEAD_SIZE + length
                good_end = pos
        return good_end, skipped, size

    # -- recovery ----------------------------------------------------------------

    def recover(self):
        # Rebuild the slot table from flash: validate headers and CRCs,
        # truncate torn tails, restore next_seq. Safe to call at any time.
        self._close()
        self._cursor = None
        top = 0
        for i in range(2):
            s = self.slots[i]
            s.clear()
            if not self.io.exists(i):
                continue
            with self.io.reader(i) as f:
                s.gen = self._read_slot_header(f)
            if not s.gen:
                self.io.erase(i)  # a torn or foreign header: nothing to keep
                continue

            def visit(pos, seq, count, length, s=s):
                if not s.first_seq or seq < s.first_seq:
                    s.first_seq = seq
                if seq + count - 1 > s.last_seq:
                    s.last_seq = seq + count - 1
                s.readings += count
                s.records += 1

            s.size = _SLOT_HEAD_SIZE
            good_end, skipped, _ = self._records(i, visit=visit, limit=self.io.scan_limit(i))
            if skipped:
                self.corrupt_records += skipped
            size = max(self.io.size(i), good_end)
            s.size = good_end
            if good_end < size:
                # Nothing valid after good_end: a torn tail. Cut it so that
                # appends continue from a clean record boundary; raw flash
                # cannot be cut, so there appends go after it, and scans skip it.
                if self.io.truncate(i, good_end, self._pay):
                    self.truncated_bytes += size - good_end
                else:
                    s.size = size
                    self.torn_tails += 1
            self.io.set_end(i, s.size)
            if s.last_seq > top:
                top = s.last_seq
        # Never below what was reserved, stored, acknowledged or dropped: a
        # record cut at boot must not give its numbers to new readings.
        m = self.meta
        self.next_seq = max(m.next_seq, top + 1, m.watermark + 1, m.floor + 1)
        a, b = self.slots
        if a.gen or b.gen:
            self.active = 0 if a.gen > b.gen else 1
        else:
            self.active = None

    # -- writing ------------------------------------------------------------------

    def _close(self):
        self.io.close()

    def _start_slot(self, i):
        # Make slot i the active one, with a fresh generation.
        self._close()
        other = self.slots[1 - i]
        gen = max(self.slots[0].gen, self.slots[1].gen, other.gen) + 1
        h = bytearray(_SLOT_HEAD_SIZE)
        struct.pack_into(_SLOT_HEAD, h, 0, _SLOT_MAGIC, _SLOT_VERSION, gen)
        struct.pack_into("<I", h, 12, binascii.crc32(memoryview(h)[:12]) & 0xFFFFFFFF)
        self.io.create(i, h)
        self.bytes_written += _SLOT_HEAD_SIZE
        self.flash_writes += 1
        s = self.slots[i]
        s.clear()
        s.gen = gen
        s.size = _SLOT_HEAD_SIZE
        self.active = i

    def _erase(self, i):
        # Persist the counters first, so that a sequence number stored only in
        # this slot can never be handed out again.
        self.meta.next_seq = self.next_seq
        self.meta.save()
        self.io.erase(i)
        self.slots[i].clear()
        if self._cursor is not None and self._cursor[0] == i:
            self._cursor = None

    def ack_floor(self):
        return max(self.meta.watermark, self.meta.floor)

    def _acked(self, i):
        s = self.slots[i]
        return s.last_seq <= self.ack_floor()

    def _room(self, need):
        # Make room for a record of `need` bytes; False if sampling must stop.
        if self.active is None:
            self._start_slot(0)
        act = self.slots[self.active]
        if act.size + need <= self.capacity:
            return True
        o = 1 - self.active
        other = self.slots[o]
        if other.gen and not self._acked(o):
            if self.policy == STOP_SAMPLING:
                self.stopped = True
                return False
            # drop_oldest: the other slot is the older one.
            lost = max(0, other.last_seq - max(self.ack_floor(), other.first_seq - 1))
            self.meta.dropped += lost
            self.meta.floor = max(self.meta.floor, other.last_seq)
        if other.gen:
            self._erase(o)
        self._start_slot(o)
        return True

    def add(self, sensor, ts, value):
        # Buffer one reading; False (reading refused) while sampling is stopped.
        if self.stopped:
            return False
        p = self.packer
        if not p.count:
            p.reset(ts)
        elif p.count >= _MAX_COUNT or not p.add(sensor, ts, value):
            if not self.flush():
                return False
            p.reset(ts)
        else:
            return True
        if not p.add(sensor, ts, value):
            raise StoreError("a single reading does not fit in a record")
        return True

    @property
    def pending(self):
        return self.packer.count

    def flush(self):
        # Append the buffered readings as one record. Returns the number of
        # readings written (0: nothing pending, or sampling stopped).
        p = self.packer
        count = p.count
        if not count:
            return 0
        length = p.pos
        if not self._room(_REC_HEAD_SIZE + length):
            return 0
        s = self.slots[self.active]
        seq = self.next_seq
        if seq + count > self.meta.next_seq:
            self.meta.next_seq = seq + count + _RESERVE
            self.meta.save()
        h = self._hdr
        struct.pack_into(_REC_HEAD, h, 0, _REC_MAGIC, s.gen & 0xFFFF, count, length, seq)
        payload = memoryview(p.buf)[:length]
        crc = binascii.crc32(memoryview(h)[:14])
        crc = binascii.crc32(payload, crc) & 0xFFFFFFFF
        struct.pack_into("<I", h, 14, crc)
        # One write of header and payload, then a sync: the record is on
        # flash when flush returns.
        rec = memoryview(self._pay)[: _REC_HEAD_SIZE + length]
        rec[:_REC_HEAD_SIZE] = h
        rec[_REC_HEAD_SIZE:] = payload
        self.io.append(self.active, rec)
        self.bytes_written += _REC_HEAD_SIZE + length
        self.flash_writes += 1
        self.next_seq = seq + count
        if not s.first_seq:
            s.first_seq = seq
        s.last_seq = seq + count - 1
        s.readings += count
        s.records += 1
        s.size += _REC_HEAD_SIZE + length
        p.count = 0
        p.pos = 0
        # Switch early when the other slot is clean and the hub is acking this
        # one, so this one can be erased outside the sampling path once it is
        # all acknowledged. Offline (no acks reach this slot), fill it up:
        # both slots' whole capacity then buffers readings.
        o = 1 - self.active
        if (
            not self.slots[o].gen
            and s.size >= self.cleanup_ratio * self.capacity
            and self.ack_floor() >= s.first_seq
        ):
            self._start_slot(o)
        return count

    # -- acknowledgement and cleanup ---------------------------------------------

    def ack(self, watermark):
        # Apply a commit-ack watermark (never moves backwards).
        if watermark > self.meta.watermark:
            self.meta.watermark = min(watermark, self.next_seq - 1)

    def cleanup(self):
        # Erase every sealed slot whose records are all acknowledged. Call it
        # outside the sampling path. Returns the number of slots erased.
        erased = 0
        for i in range(2):
            s = self.slots[i]
            if i != self.active and s.gen and self._acked(i):
                self._erase(i)
                erased += 1
        if self.stopped:
            o = None if self.active is None else 1 - self.active
            if o is None or not self.slots[o].gen:
                self.stopped = False
        return erased

    def checkpoint(self):
        # Persist watermark and counters (call now and then, and at shutdown).
        self.meta.next_seq = self.next_seq
        self.meta.save()

    # -- reading --------------------------------------------------------------------

    def _order(self):
        # Slot indexes with records, oldest generation first.
        a, b = self.slots
        order = (0, 1) if a.gen <= b.gen else (1, 0)
        return [i for i in order if self.slots[i].gen and self.slots[i].last_seq]

    def read(self, from_seq, max_n):
        # Up to max_n stored readings with contiguous sequence numbers, the
        # first at or after from_seq: [(seq, sensor, ts_ms, value), ...].
        out = []
        self.scan(from_seq, max_n, lambda seq, s, t, v: out.append((seq, s, t, v)))
        return out

    def scan(self, from_seq, max_n, emit):
        # Like read(), without building a list: emit(seq, sensor, ts_ms,
        # value) for each reading; emit may return False to stop. Returns the
        # number of readings emitted.
        st = [0, 0, 0, 0]  # emitted, next seq expected, record seq, stop flag

        def one(sensor, t, v):
            # Called for every reading of a record, in order.
            seq = st[2]
            st[2] = seq + 1
            if st[3] or seq < from_seq or st[0] >= max_n:
                return
            if emit(seq, sensor, t, v) is False:
                st[3] = 1
                return
            st[0] += 1

        for i in self._order():
            s = self.slots[i]
            if s.last_seq < from_seq:
                continue
            start = None
            c = self._cursor
            if c is not None and c[0] == i and c[1] == s.gen and c[3] <= from_seq:
                start = c[2]

            def visit(pos, seq, count, length, i=i, gen=s.gen):
                if seq + count - 1 < from_seq:
                    self._cursor = (i, gen, pos + _REC_HEAD_SIZE + length, seq + count)
                    return True
                if st[1] and seq != st[1]:
                    return False  # a gap: the readings returned end before it
                st[2] = seq
                before = st[0]
                try:
                    unpack(self._pay, 0, length, count, one)
                except PackError:
                    # A CRC-valid record that does not decode. If some of it
                    # went out, stop there; if none did, skip the record (the
                    # uplink then declares its numbers lost).
                    self.corrupt_records += 1
                    if st[0] > before or st[1]:
                        st[3] = 1
                        return False
                    return True
                st[1] = seq + count
                self._cursor = (i, gen, pos, seq)
                return not st[3] and st[0] < max_n

            self._records(i, start, visit)
            if st[3] or st[0] >= max_n:
                break
        return st[0]

    # -- figures for the status message ------------------------------------------------

    def unacked(self):
        floor = self.ack_floor()
        n = 0
        for s in self.slots:
            if s.gen and s.last_seq > floor:
                n += s.last_seq - max(floor, s.first_seq - 1)
        return n + self.packer.count

    def fill_permille(self):
        used = 0
        for s in self.slots:
            if s.gen:
                used += s.size
        return min(1000, used * 1000 // (2 * self.capacity))

    def close(self):
        self.flush()
        self.checkpoint()
        self._close()
