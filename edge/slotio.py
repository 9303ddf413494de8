# Where the two slots live: files on a file system (FileSlots, in
# edge/slots.py), or raw flash blocks (BlockSlots, here).
#
# edge/slots.py talks to either through the same small interface:
#
#   exists(i)          slot i holds anything at all
#   size(i)            bytes in use (physical end), -1 if the slot is absent
#   scan_limit(i)      how far recovery may look for records
#   set_end(i, end)    where the next append goes (the store's logical end)
#   reader(i)          an object with seek(pos), readinto(buf), read(n), close()
#   create(i, header)  erase slot i and write its header
#   append(i, data)    add data at the end, durably, before returning
#   erase(i)           forget slot i
#   truncate(i, end)   cut slot i back to `end` bytes; False if it cannot
#   programmed         bytes handed to the flash (or file system) so far
#
# FileSlots keeps each slot in a file (any MicroPython file system, or a host
# directory on CPython). On LittleFS every sync rewrites the file's partly
# filled last block, so small appends cost far more flash than their size. It
# is the store's default and lives with the store, so that a device that keeps
# its slots in files never loads this module.
#
# BlockSlots keeps each slot in a run of erase blocks of a raw block device
# (a flash partition: esp32.Partition, rp2.Flash, or edge/ramdisk.py):
# appends program erased bytes in place, nothing is copied, and erasing a
# slot erases its blocks. Flash cannot be un-programmed, so a torn tail stays
# where it is and appends continue after it; the store's scan skips it (CRC
# and the generation in every record keep stale or torn bytes out).


class _BlockReader:
    def __init__(self, io, i):
        self.io = io
        self.base = io.base(i)
        self.end = io.capacity
        self.pos = 0

    def seek(self, pos):
        self.pos = pos

    def readinto(self, buf):
        n = min(len(buf), self.end - self.pos)
        if n <= 0:
            return 0
        self.io.read_at(self.base + self.pos, memoryview(buf)[:n])
        self.pos += n
        return n

    def read(self, n):
        b = bytearray(n)
        got = self.readinto(b)
        return bytes(b[:got])

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BlockSlots:
    # Slot i occupies blocks [first + i * per_slot, first + (i + 1) * per_slot).
    def __init__(self, bdev, first_block=0, blocks_per_slot=None):
        self.dev = bdev
        self.bs = bdev.ioctl(5, 0)
        total = bdev.ioctl(4, 0) - first_block
        if blocks_per_slot is None:
            blocks_per_slot = total // 2
        if blocks_per_slot < 1 or 2 * blocks_per_slot > total:
            raise ValueError("the device has no room for two slots")
        self.first = first_block
        self.per_slot = blocks_per_slot
        self.capacity = blocks_per_slot * self.bs
        self.programmed = 0
        self.erased_blocks = 0
        self._ends = [self._find_end(0), self._find_end(1)]

    def base(self, i):
        return (self.first + i * self.per_slot) * self.bs

    def _per_block(self, op, addr, mv):
        # op(block, part of mv, offset in the block) for each block that the
        # bytes at addr..addr + len(mv) touch.
        bs = self.bs
        done = 0
        while done < len(mv):
            a = addr + done
            n = min(len(mv) - done, bs - a % bs)
            op(a // bs, mv[done : done + n], a % bs)
            done += n

    def read_at(self, addr, mv):
        # Reads may cross block boundaries; split them anyway, as some ports
        # want reads within one block.
        self._per_block(self.dev.readblocks, addr, mv)

    def _find_end(self, i):
        # One past the last programmed (non-0xFF) byte of the slot: appends
        # go there. Scans backwards a block at a time.
        buf = bytearray(min(self.bs, 512))
        mv = memoryview(buf)
        base = self.base(i)
        pos = self.capacity
        while pos > 0:
            n = min(len(buf), pos)
            pos -= n
            self.read_at(base + pos, mv[:n])
            for j in range(n - 1, -1, -1):
                if buf[j] != 0xFF:
                    return pos + j + 1
        return 0

    def exists(self, i):
        return self._ends[i] > 0

    def size(self, i):
        # A lower bound after boot: the last non-0xFF byte may be followed by
        # programmed 0xFF bytes (a CRC or a value can end in 0xFF), so the
        # store scans to scan_limit() and then calls set_end().
        return self._ends[i] if self._ends[i] > 0 else -1

    def scan_limit(self, i):
        return self.capacity if self._ends[i] > 0 else -1

    def set_end(self, i, end):
        self._ends[i] = end

    def reader(self, i):
        return _BlockReader(self, i)

    def close(self):
        pass

    def erase(self, i):
        first = self.first + i * self.per_slot
        for b in range(first, first + self.per_slot):
            self.dev.ioctl(6, b)
            self.erased_blocks += 1
        self._ends[i] = 0

    def create(self, i, header):
        if self._ends[i]:  # erased blocks read all 0xFF: nothing to erase
            self.erase(i)
        self._program(i, 0, header)

    def append(self, i, data):
        end = self._ends[i]
        if end + len(data) > self.capacity:
            raise OSError(28)  # ENOSPC: the store checks room before appending
        self._program(i, end, data)

    def _program(self, i, off, data):
        mv = memoryview(data)
        self._per_block(self.dev.writeblocks, self.base(i) + off, mv)
        self.programmed += len(mv)
        self._ends[i] = off + len(mv)
        sync = getattr(self.dev, "ioctl", None)
        if sync is not None:
            sync(3, 0)  # flush any write cache of the port

    def truncate(self, i, end, buf):
        return False  # flash cannot be un-programmed; appends go after the tail
