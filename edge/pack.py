# Compact, lossless encoding of readings for flash records (edge/slots.py).
#
# A block starts with its base time (varint ms) and then holds readings, each
# a tag byte followed by what the tag announces:
#
#   tag bit 7      a zigzag varint time delta (ms) from the previous reading
#                  follows; clear: same timestamp as the previous reading
#   tag bits 4..6  the sensor id 0..6; 7: a varint sensor id follows
#   tag bits 0..3  how the value is stored:
#                  0..3   decimal with k = 0..3 digits: the value is the
#                         float32 nearest m / 10**k, and a zigzag varint of m
#                         minus this sensor's previous m (if that used the same
#                         k, else minus 0) follows
#                  4..14  float32 bits XOR this sensor's previous bits: n
#                         significant bytes after dropping tz trailing zero
#                         bytes, where _XOR_MODES[mode - 4] is n << 4 | tz
#
# Order after the tag: time delta, sensor id, value. Decoding reproduces the
# exact float32 the device stored. Meter readings with a fixed resolution
# (230.4 V, 1203.7 W, 4096.25 Wh) cost about three bytes each.
#
# Every block is self-contained (state starts from zero), so one corrupt
# record never spoils the next.

import struct

from edge import const

_T_FLAG = const(0x80)
_ESCAPE = const(7)
_POW10 = (1.0, 10.0, 100.0, 1000.0)
_MAX_M = const(0x3FFFFFFF)  # keeps m a small int on 32-bit ports
# n << 4 | tz (n significant bytes, tz dropped trailing bytes) for XOR modes 4..14
_XOR_MODES = (0x00, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x30, 0x31, 0x40)


class PackError(ValueError):
    pass


def _zz(n):
    return (n << 1) if n >= 0 else ((-n << 1) - 1)


def _unzz(n):
    return (n >> 1) if not n & 1 else -((n + 1) >> 1)


class Packer:
    # Encodes readings into one preallocated buffer. reset(t0) starts a
    # block; add() returns False when the reading does not fit.
    def __init__(self, size=1024):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self._f = bytearray(4)
        self.pos = 0
        self.count = 0
        self.t0 = 0
        self._ts = 0
        self._state = {}  # sensor -> [k or -1, m, bits]

    def reset(self, t0):
        self.pos = 0
        self.count = 0
        self.t0 = t0
        self._ts = t0
        self._state = {}
        self._varint(t0)

    def _varint(self, n):
        buf = self.buf
        p = self.pos
        while n > 0x7F:
            buf[p] = (n & 0x7F) | 0x80
            n >>= 7
            p += 1
        buf[p] = n
        self.pos = p + 1

    def add(self, sensor, ts, value):
        # Worst case: tag 1 + delta 10 + sensor 3 + value 5 bytes.
        if self.pos + 19 > len(self.buf):
            return False
        f = self._f
        struct.pack_into("<f", f, 0, value)
        st = self._state.get(sensor)
        if st is None:
            st = [-1, 0, 0]
            self._state[sensor] = st
        mode = -1
        m = 0
        # Decimal: prefer this sensor's previous k, then the smallest that works.
        k = st[0]
        if k >= 0:
            m = _decimal(value, k, f)
            if m is not None:
                mode = k
        if mode < 0:
            for k in range(4):
                m = _decimal(value, k, f)
                if m is not None:
                    mode = k
                    break
        bits = struct.unpack_from("<I", f, 0)[0]
        if mode >= 0:
            delta = m - st[1] if st[0] == mode else m
        else:
            x = bits ^ st[2]
            n = 4
            while n and not (x >> (8 * (n - 1))) & 0xFF:
                n -= 1
            tz = 0
            while tz < n and not (x >> (8 * tz)) & 0xFF:
                tz += 1
            n -= tz
            mode = 4 + _XOR_MODES.index(n << 4 | tz)
        dt = ts - self._ts
        tag = mode | ((sensor if sensor < _ESCAPE else _ESCAPE) << 4)
        if dt:
            tag |= _T_FLAG
        self.buf[self.pos] = tag
        self.pos += 1
        if dt:
            self._varint(_zz(dt))
        if sensor >= _ESCAPE:
            self._varint(sensor)
        if mode < 4:
            self._varint(_zz(delta))
            st[0] = mode
            st[1] = m
        else:
            n = _XOR_MODES[mode - 4] >> 4
            tz = _XOR_MODES[mode - 4] & 15
            x >>= 8 * tz
            for _ in range(n):
                self.buf[self.pos] = x & 0xFF
                x >>= 8
                self.pos += 1
            st[0] = -1
        st[2] = bits
        self._ts = ts
        self.count += 1
        return True


def _decimal(value, k, f):
    # m such that float32(m / 10**k) has the bits in f, or None.
    scaled = value * _POW10[k]
    if not -_MAX_M <= scaled <= _MAX_M:  # also false for NaN
        return None
    m = round(scaled)
    g = struct.pack("<f", m / _POW10[k])
    if g[0] == f[0] and g[1] == f[1] and g[2] == f[2] and g[3] == f[3]:
        return m
    return None


def _read_varint(buf, pos, end):
    n = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise PackError("varint runs past the block")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def unpack(buf, start, end, count, emit):
    # Decode `count` readings from buf[start:end], calling emit(sensor, ts,
    # value) for each (no list is built); PackError if the block is
    # inconsistent. Returns count.
    t, pos = _read_varint(buf, start, end)
    state = {}
    f = bytearray(4)
    for _ in range(count):
        if pos >= end:
            raise PackError("block ends early")
        tag = buf[pos]
        pos += 1
        if tag & _T_FLAG:
            dt, pos = _read_varint(buf, pos, end)
            t += _unzz(dt)
        sensor = (tag >> 4) & 7
        if sensor == _ESCAPE:
            sensor, pos = _read_varint(buf, pos, end)
        st = state.get(sensor)
        if st is None:
            st = [-1, 0, 0]
            state[sensor] = st
        mode = tag & 0x0F
        if mode < 4:
            d, pos = _read_varint(buf, pos, end)
            m = _unzz(d) + (st[1] if st[0] == mode else 0)
            struct.pack_into("<f", f, 0, m / _POW10[mode])
            st[0] = mode
            st[1] = m
            bits = struct.unpack_from("<I", f, 0)[0]
        elif mode < 15:
            n = _XOR_MODES[mode - 4] >> 4
            tz = _XOR_MODES[mode - 4] & 15
            if pos + n > end:
                raise PackError("value runs past the block")
            x = 0
            for i in range(n):
                x |= buf[pos + i] << (8 * i)
            pos += n
            bits = st[2] ^ (x << (8 * tz))
            struct.pack_into("<I", f, 0, bits)
            st[0] = -1
        else:
            raise PackError("reserved value mode")
        st[2] = bits
        emit(sensor, t, struct.unpack_from("<f", f, 0)[0])
    if pos != end:
        raise PackError("block has trailing bytes")
    return count
