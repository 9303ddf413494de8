# A block device in RAM that can lose power, for tests, benchmarks and the
# unix-port profile (mount it with vfs.VfsLfs2 to get LittleFS as on boards).
#
#   dev = RAMBlockDev(512, 64)
#   vfs.VfsLfs2.mkfs(dev); vfs.mount(vfs.VfsLfs2(dev), "/flash")
#   dev.cut_at = 40          # the 40th program or erase never completes...
#   dev.torn = 100           # ...except its first 100 bytes (None: none)
#
# When power is cut, that operation raises PowerCut and every later one fails
# with -EIO (returned, not raised: LittleFS may call in from a finalizer,
# where raising is impossible). The device stays dead; make a new
# RAMBlockDev from dev.image() to boot again.
# Counters: programs, erases, bytes_programmed.


_EIO = -5


class PowerCut(OSError):
    pass


class Power:
    # One power supply shared by several block devices (say LittleFS for the
    # metadata and a raw partition for the slots): one cut kills them all.
    def __init__(self, cut_at=0, torn=None):
        self.ops = 0  # programs + erases so far, on every device
        self.cut_at = cut_at  # 0: never
        self.torn = torn
        self.dead = False


def _on_power(name):
    # A RAMBlockDev attribute that is its Power's attribute `name`.
    return property(
        lambda dev: getattr(dev.power, name), lambda dev, v: setattr(dev.power, name, v)
    )


class RAMBlockDev:
    # Programming behaves like NOR flash: it can only clear bits (new = old
    # AND data), so writing over unerased bytes shows up in the tests.
    def __init__(self, block_size=512, blocks=64, image=None, power=None):
        self.bs = block_size
        self.n = blocks
        size = block_size * blocks
        self.data = bytearray(image) if image is not None else bytearray(b"\xff" * size)
        self.power = power if power is not None else Power()
        self.programs = 0
        self.erases = 0
        self.bytes_programmed = 0

    # cut_at, torn, dead and ops live on the (possibly shared) power supply.
    cut_at = _on_power("cut_at")
    torn = _on_power("torn")
    dead = _on_power("dead")
    ops = property(lambda dev: dev.power.ops)

    def image(self):
        return bytes(self.data)

    def _op(self):
        p = self.power
        p.ops += 1
        return p.cut_at and p.ops >= p.cut_at

    def _program(self, a, buf):
        n = len(buf)
        d = self.data
        for i in range(n):
            if d[a + i] != 0xFF:
                break
        else:
            d[a : a + n] = buf  # all erased: a plain copy
            return
        for i in range(n):
            d[a + i] &= buf[i]

    def readblocks(self, block, buf, offset=0):
        if self.dead:
            return _EIO
        a = block * self.bs + offset
        buf[:] = memoryview(self.data)[a : a + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        if self.dead:
            return _EIO
        if offset is None:  # simple block interface: erase, then program
            self.ioctl(6, block)
            offset = 0
        a = block * self.bs + offset
        if self._op():
            self.dead = True
            if self.torn:
                k = min(self.torn, len(buf))
                self._program(a, memoryview(buf)[:k])
            raise PowerCut("power cut during a program")
        self._program(a, buf)
        self.programs += 1
        self.bytes_programmed += len(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            if self.dead:
                return _EIO
            a = arg * self.bs
            if self._op():
                self.dead = True
                if self.torn:  # a partly erased block
                    k = min(self.torn, self.bs)
                    for i in range(a, a + k):
                        self.data[i] = 0xFF
                raise PowerCut("power cut during an erase")
            for i in range(a, a + self.bs):
                self.data[i] = 0xFF
            self.erases += 1
            return 0
        return 0
