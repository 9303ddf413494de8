# A FlatBuffers codec for exactly the aiot v1 messages (protocol/aiot.fbs).
#
# Runs on MicroPython and CPython. The official flatbuffers runtime does not
# import on MicroPython, so this file writes and reads the format directly:
#
#   enc = Encoder(512)                 # one buffer, allocated once
#   hm = Hmac(device_key)
#   enc.batch("plug-1", epoch, first_seq, ts_ms, readings)
#   frame = enc.seal(hm)               # memoryview into enc's buffer
#   kind, fields = decode(frame, hm)   # CodecError on anything wrong
#
# Layout written here: [root uoffset][b"AIO1"][vtable][table][out-of-line
# objects in field order]..., every offset pointing forward, every scalar
# aligned to its size from the buffer start. Tests hold the bytes to the
# official runtime and to `flatc --json`.
#
# Comments instead of docstrings: they cost nothing once compiled to .mpy.

import hashlib
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # stubs: MicroPython's const
        return x


_IDENT = b"AIO1"
_TAG = const(32)
# Devices refuse larger frames outright: commands and acks are a few hundred bytes.
MAX_FRAME = 4096

# Field kinds. Scalar kinds index _FMT and _SIZE.
_U8 = const(0)
_U16 = const(1)
_U32 = const(2)
_U64 = const(3)
_I64 = const(4)
_F64 = const(5)
_STR = const(6)  # uoffset to a string
_READINGS = const(7)  # uoffset to a vector of 8-byte Reading structs
_TABLES = const(8)  # uoffset to a vector of tables (sub-spec)
_UNION = const(9)  # uoffset to the payload table (type in the slot before)

_FMT = ("<B", "<H", "<I", "<Q", "<q", "<d")
_SIZE = (1, 2, 4, 8, 8, 8, 4, 4, 4, 4)
_MAX = (0xFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)

# Enum ranges (number of values) for validated u8/u16 fields.
_N_KIND = const(4)
_N_STATUS = const(5)
_N_REASON = const(13)
_N_STATE = const(2)

# Specs: one (name, kind, required, sub) per slot, in aiot.fbs order.
# sub is the enum size for enum scalars, the sub-spec for _TABLES.
PARAM = (
    ("name", _STR, True, None),
    ("kind", _U8, False, _N_KIND),
    ("int_value", _I64, False, None),
    ("float_value", _F64, False, None),
    ("text_value", _STR, False, None),
)
PARAM_SPEC = (
    ("name", _STR, True, None),
    ("kind", _U8, False, _N_KIND),
    ("min", _F64, False, None),
    ("max", _F64, False, None),
)
CAPABILITY = (
    ("action", _STR, True, None),
    ("params", _TABLES, False, PARAM_SPEC),
)
TELEMETRY_BATCH = (
    ("device_id", _STR, True, None),
    ("boot_epoch", _U32, False, None),
    ("first_seq", _U64, False, None),
    ("base_ts_ms", _U64, False, None),
    ("readings", _READINGS, True, None),
    ("lost_before", _U64, False, None),
)
COMMIT_ACK = (
    ("device_id", _STR, True, None),
    ("watermark", _U64, False, None),
    ("hub_time_ms", _U64, False, None),
)
COMMAND = (
    ("command_id", _STR, True, None),
    ("device_id", _STR, True, None),
    ("seq", _U64, False, None),
    ("term", _U64, False, None),
    ("action", _STR, True, None),
    ("params", _TABLES, False, PARAM),
    ("issued_at_ms", _U64, False, None),
    ("deadline_ms", _U64, False, None),
)
COMMAND_RESULT = (
    ("command_id", _STR, True, None),
    ("device_id", _STR, True, None),
    ("seq", _U64, False, None),
    ("status", _U8, False, _N_STATUS),
    ("reason", _U16, False, _N_REASON),
    ("detail", _STR, False, None),
    ("executed_at_ms", _U64, False, None),
)
DEVICE_STATUS = (
    ("device_id", _STR, True, None),
    ("state", _U8, False, _N_STATE),
    ("firmware", _STR, False, None),
    ("boot_epoch", _U32, False, None),
    ("uptime_s", _U32, False, None),
    ("free_heap", _U32, False, None),
    ("buffer_fill_permille", _U16, False, None),
    ("unacked", _U32, False, None),
    ("dropped", _U32, False, None),
    ("reconnects", _U32, False, None),
    ("hub_index", _U8, False, None),
    ("capabilities", _TABLES, False, CAPABILITY),
)
ENVELOPE = (
    ("payload_type", _U8, False, None),
    ("payload", _UNION, True, None),
)

# Union tags (index + 1) and their specs.
TYPES = ("TelemetryBatch", "CommitAck", "Command", "CommandResult", "DeviceStatus")
_SPECS = (TELEMETRY_BATCH, COMMIT_ACK, COMMAND, COMMAND_RESULT, DEVICE_STATUS)

# Enum names, for tools and tests (index = wire value).
PARAM_KINDS = ("Int", "Float", "Bool", "Text")
STATUSES = ("ACCEPTED", "DONE", "FAILED", "REJECTED", "EXPIRED")
REASONS = (
    "NONE",
    "BAD_SIGNATURE",
    "STALE_TERM",
    "DUPLICATE",
    "OUT_OF_ORDER",
    "DEADLINE_PASSED",
    "UNKNOWN_ACTION",
    "BAD_PARAM",
    "PARAM_OUT_OF_BOUNDS",
    "EXECUTION_ERROR",
    "BUSY",
    "WRONG_DEVICE",
    "MALFORMED",
)
LINK_STATES = ("OFFLINE", "ONLINE")


class CodecError(ValueError):
    # reason: one of the strings in protocol/errors.py REASONS.
    def __init__(self, reason, detail=""):
        super().__init__(reason + ": " + detail if detail else reason)
        self.reason = reason
        self.detail = detail


# -- HMAC-SHA256 on top of hashlib.sha256 (MicroPython has no hmac module) -----


class Hmac:
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        k = bytearray(64)
        k[: len(key)] = key
        self._ipad = bytes(b ^ 0x36 for b in k)
        self._opad = bytes(b ^ 0x5C for b in k)

    def digest(self, data):
        h = hashlib.sha256(self._ipad)
        h.update(data)
        inner = h.digest()
        h = hashlib.sha256(self._opad)
        h.update(inner)
        return h.digest()

    def verify(self, data, tag):
        # Constant-time comparison.
        mine = self.digest(data)
        if len(tag) != len(mine):
            return False
        diff = 0
        for i in range(len(mine)):
            diff |= mine[i] ^ tag[i]
        return diff == 0


# -- encoder ----------------------------------------------------------------------


def _order(spec):
    # Inline field order inside a table: widest first, so that with the table
    # start at 4 mod 8 every field lands on its natural alignment.
    idx = list(range(len(spec)))
    idx.sort(
        key=lambda i: i - 64 * _SIZE[spec[i][1]]
    )  # unique keys: MicroPython sort is not stable
    return idx


_ORDERS = {}
for _s in _SPECS + (ENVELOPE, PARAM, PARAM_SPEC, CAPABILITY):
    _ORDERS[id(_s)] = _order(_s)


def _range(v, lo, hi, name):
    if not isinstance(v, int) or v < lo or v > hi:
        raise CodecError("bad_value", "%s=%r out of range" % (name, v))


class Encoder:
    def __init__(self, size=1024):
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.pos = 0
        self._readings = 0  # position of the first Reading struct
        self._count = 0

    def _need(self, end):
        if end > len(self.buf):
            raise CodecError("oversized", "message needs more than %d bytes" % len(self.buf))

    def _pad(self, align):
        # Zero-fill up to the next multiple of align (the buffer is reused).
        p = self.pos
        q = (p + align - 1) & -align
        self._need(q)
        while p < q:
            self.buf[p] = 0
            p += 1
        self.pos = q

    def _begin(self):
        self.pos = 0
        self._need(8)
        struct.pack_into("<I", self.buf, 0, 0)  # patched in _root
        self.buf[4:8] = _IDENT
        self.pos = 8

    def _str(self, s):
        data = s.encode() if isinstance(s, str) else s
        self._pad(4)
        p = self.pos
        end = p + 4 + len(data) + 1
        self._need(end)
        struct.pack_into("<I", self.buf, p, len(data))
        self.buf[p + 4 : end - 1] = data
        self.buf[end - 1] = 0
        self.pos = end
        return p

    def _table(self, spec, values):
        # Write a vtable and its table at self.pos, then their out-of-line
        # objects; return the table's position. values: one per slot, None
        # for absent.
        n = len(spec)
        # Scalars equal to their default (0) are left out, as the official
        # builder does; readers return the default for absent fields.
        values = [None if spec[i][1] <= _F64 and values[i] == 0 else values[i] for i in range(n)]
        last = -1
        wide = False
        for i in range(n):
            v = values[i]
            kind = spec[i][1]
            if v is None:
                if spec[i][2]:
                    raise CodecError("missing_field", spec[i][0])
                continue
            last = i
            if _SIZE[kind] == 8:
                wide = True
        self._pad(2)
        vt = self.pos
        vt_size = 4 + 2 * (last + 1)
        tbl = (vt + vt_size + 3) & -4
        if wide and tbl % 8 == 0:
            tbl += 4
        # Inline offsets, widest first.
        cur = tbl + 4
        offs = [0] * n
        for i in _ORDERS[id(spec)]:
            if values[i] is not None:
                offs[i] = cur - tbl
                cur += _SIZE[spec[i][1]]
        self._need(cur)
        self.pos = vt
        while self.pos < cur:  # zero vtable, padding and table
            self.buf[self.pos] = 0
            self.pos += 1
        struct.pack_into("<HH", self.buf, vt, vt_size, cur - tbl)
        for i in range(last + 1):
            struct.pack_into("<H", self.buf, vt + 4 + 2 * i, offs[i])
        struct.pack_into("<i", self.buf, tbl, tbl - vt)
        refs = None
        for i in range(n):
            v = values[i]
            if v is None:
                continue
            name, kind, _req, sub = spec[i]
            at = tbl + offs[i]
            if kind <= _U64:
                _range(v, 0, _MAX[kind], name)
                if sub is not None and v >= sub:
                    raise CodecError("bad_value", "%s=%d not in enum" % (name, v))
                struct.pack_into(_FMT[kind], self.buf, at, v)
            elif kind == _I64:
                _range(v, -0x8000000000000000, 0x7FFFFFFFFFFFFFFF, name)
                struct.pack_into("<q", self.buf, at, v)
            elif kind == _F64:
                struct.pack_into("<d", self.buf, at, v)
            else:
                if refs is None:
                    refs = []
                refs.append(i)
        if refs:
            for i in refs:
                at = tbl + offs[i]
                kind = spec[i][1]
                v = values[i]
                if kind == _STR:
                    p = self._str(v)
                elif kind == _READINGS:
                    p = self._reading_vector(v)
                elif kind == _UNION:
                    p = self._table(v[0], v[1])
                else:
                    p = self._table_vector(spec[i][3], v)
                struct.pack_into("<I", self.buf, at, p - at)
        return tbl

    def _reading_vector(self, count):
        _range(count, 0, 0xFFFFFFFF, "readings")
        self._pad(4)
        p = self.pos
        self._need(p + 4 + 8 * count)
        struct.pack_into("<I", self.buf, p, count)
        self._readings = p + 4
        self._count = count
        self.pos = p + 4 + 8 * count
        return p

    def _table_vector(self, spec, items):
        self._pad(4)
        p = self.pos
        n = len(items)
        self._need(p + 4 + 4 * n)
        struct.pack_into("<I", self.buf, p, n)
        self.pos = p + 4 + 4 * n
        for j in range(n):
            t = self._table(spec, _values(spec, items[j]))
            at = p + 4 + 4 * j
            struct.pack_into("<I", self.buf, at, t - at)
        return p

    def _root(self, tag, spec, values):
        self._begin()
        root = self._table(ENVELOPE, (tag, (spec, values)))
        struct.pack_into("<I", self.buf, 0, root)
        self._sealed = False
        return self.mv[: self.pos]

    # -- public API --

    def begin_batch(self, device_id, boot_epoch, first_seq, base_ts_ms, count, lost_before=0):
        # Lay out a TelemetryBatch with room for `count` readings; fill them
        # with set_reading(i, ...) before seal(). Nothing is allocated per
        # reading, so the uplink can stream records straight from flash.
        return self._root(
            1, TELEMETRY_BATCH, (device_id, boot_epoch, first_seq, base_ts_ms, count, lost_before)
        )

    def set_reading(self, i, sensor, offset_ms, value):
        if i < 0 or i >= self._count:
            raise CodecError("bad_value", "reading index %d of %d" % (i, self._count))
        if sensor < 0 or sensor > 0xFFFF or offset_ms < 0 or offset_ms > 0xFFFF:
            raise CodecError(
                "bad_value", "sensor %r / offset_ms %r out of u16" % (sensor, offset_ms)
            )
        struct.pack_into("<HHf", self.buf, self._readings + 8 * i, sensor, offset_ms, value)

    def end_batch(self, n):
        # Shorten a batch begun with room for more readings to the first n.
        # The readings vector is the last object in the buffer, so the frame
        # simply ends earlier.
        if n < 0 or n > self._count:
            raise CodecError("bad_value", "reading count %d of %d" % (n, self._count))
        struct.pack_into("<I", self.buf, self._readings - 4, n)
        self._count = n
        self.pos = self._readings + 8 * n
        return self.mv[: self.pos]

    def batch(self, device_id, boot_epoch, first_seq, base_ts_ms, readings):
        # readings: sequence of (sensor, offset_ms, value). Returns the
        # envelope (a memoryview valid until the next call).
        env = self.begin_batch(device_id, boot_epoch, first_seq, base_ts_ms, len(readings))
        for i in range(len(readings)):
            r = readings[i]
            self.set_reading(i, r[0], r[1], r[2])
        return env

    def message(self, type_name, fields):
        # Any of the five payloads from a dict keyed like aiot.fbs; absent or
        # None optional fields are left out. Returns the envelope.
        tag = TYPES.index(type_name) + 1
        spec = _SPECS[tag - 1]
        values = _values(spec, fields)
        if tag == 1:
            values = list(values)
            values[4] = len(fields["readings"])
            env = self._root(tag, spec, values)
            rs = fields["readings"]
            for i in range(len(rs)):
                self.set_reading(i, rs[i][0], rs[i][1], rs[i][2])
            return env
        return self._root(tag, spec, values)

    def seal(self, hm):
        # Append the HMAC trailer; return the whole frame.
        n = self.pos
        self._need(n + _TAG)
        self.buf[n : n + _TAG] = hm.digest(self.mv[:n])
        self.pos = n + _TAG
        return self.mv[: self.pos]


def _values(spec, fields):
    out = []
    for name, kind, _req, _sub in spec:
        v = fields.get(name)
        if (kind == _TABLES and not v) or (kind == _STR and v == "" and not _req):
            v = None
        elif v is not None and kind == _F64:
            v = float(v)
        elif v is not None and kind <= _I64 and isinstance(v, bool):
            v = int(v)
        out.append(v)
    return out


# -- decoder ----------------------------------------------------------------------


class _Reader:
    def __init__(self, buf):
        self.b = buf
        self.n = len(buf)

    def u(self, fmt, pos, size):
        if pos < 0 or pos + size > self.n:
            raise CodecError("truncated", "%d-byte read at %d of %d" % (size, pos, self.n))
        return struct.unpack_from(fmt, self.b, pos)[0]

    def deref(self, pos):
        t = pos + self.u("<I", pos, 4)
        if t >= self.n or t & 3:
            raise CodecError("bad_offset", "offset at %d points to %d" % (pos, t))
        return t

    def string(self, pos, name):
        ln = self.u("<I", pos, 4)
        end = pos + 4 + ln
        if ln > self.n or end >= self.n or self.b[end] != 0:
            raise CodecError("bad_string", "%s of length %d" % (name, ln))
        try:
            s = str(bytes(self.b[pos + 4 : end]), "utf-8")
        except UnicodeError:
            raise CodecError("bad_utf8", name)
        if len(s) != ln:  # not plain ASCII: see edge/utf8.py
            from edge.utf8 import well_formed

            if not well_formed(self.b, pos + 4, end):
                raise CodecError("bad_utf8", name)
        return s

    def vector(self, pos, size, name):
        count = self.u("<I", pos, 4)
        if count > (self.n - pos - 4) // size:
            raise CodecError("bad_vector", "%s claims %d elements" % (name, count))
        return count

    def table(self, spec, pos, tname):
        if pos & 3 or pos + 4 > self.n:
            raise CodecError("bad_offset", "%s table at %d" % (tname, pos))
        vt = pos - struct.unpack_from("<i", self.b, pos)[0]
        if vt < 0 or vt & 1 or vt + 4 > self.n:
            raise CodecError("bad_vtable", "%s vtable at %d" % (tname, vt))
        vt_size, tbl_size = struct.unpack_from("<HH", self.b, vt)
        if vt_size < 4 or vt_size & 1 or vt + vt_size > self.n:
            raise CodecError("bad_vtable", "%s vtable size %d" % (tname, vt_size))
        if tbl_size < 4 or pos + tbl_size > self.n:
            raise CodecError("bad_vtable", "%s table size %d" % (tname, tbl_size))
        out = {}
        tag = 0
        for slot in range(len(spec)):
            name, kind, req, sub = spec[slot]
            voff = 4 + 2 * slot
            off = struct.unpack_from("<H", self.b, vt + voff)[0] if voff < vt_size else 0
            if off == 0:
                if req:
                    raise CodecError("missing_field", "%s.%s" % (tname, name))
                if kind == _STR:
                    out[name] = ""
                elif kind == _F64:
                    out[name] = 0.0
                elif kind in (_TABLES, _READINGS):
                    out[name] = []
                elif kind != _UNION:
                    out[name] = 0
                continue
            if off < 4 or off + _SIZE[kind] > tbl_size:
                raise CodecError("bad_vtable", "%s.%s at %d of %d" % (tname, name, off, tbl_size))
            at = pos + off
            if kind <= _F64:
                v = struct.unpack_from(_FMT[kind], self.b, at)[0]
                if sub is not None and v >= sub:
                    raise CodecError("bad_enum", "%s.%s = %d" % (tname, name, v))
                out[name] = v
                if slot == 0 and spec is ENVELOPE:
                    tag = v
            elif kind == _STR:
                out[name] = self.string(self.deref(at), tname + "." + name)
            elif kind == _READINGS:
                p = self.deref(at)
                count = self.vector(p, 8, "readings")
                rs = []
                p += 4
                for _ in range(count):
                    rs.append(struct.unpack_from("<HHf", self.b, p))
                    p += 8
                out[name] = rs
            elif kind == _TABLES:
                p = self.deref(at)
                count = self.vector(p, 4, name)
                items = []
                for j in range(count):
                    e = p + 4 + 4 * j
                    items.append(self.table(sub, self.deref(e), name))
                out[name] = items
            else:  # _UNION
                if tag < 1 or tag > len(TYPES):
                    raise CodecError("unknown_type", "payload type %d" % tag)
                out[name] = self.table(_SPECS[tag - 1], self.deref(at), TYPES[tag - 1])
        return out


def decode_envelope(env):
    # Envelope bytes (no trailer) -> (type name, fields dict).
    n = len(env)
    if n < 12:
        raise CodecError("truncated", "%d bytes is shorter than any envelope" % n)
    if bytes(env[4:8]) != _IDENT:
        raise CodecError("wrong_root", "file identifier %r" % bytes(env[4:8]))
    r = _Reader(env)
    out = r.table(ENVELOPE, r.deref(0), "Envelope")
    return TYPES[out["payload_type"] - 1], out["payload"]


def decode(frame, hm, max_size=MAX_FRAME):
    # Authenticate a frame with its trailer, then decode it.
    n = len(frame)
    if n > max_size:
        raise CodecError("oversized", "%d bytes, limit %d" % (n, max_size))
    if n < _TAG + 12:
        raise CodecError("truncated", "%d bytes is shorter than envelope + HMAC" % n)
    mv = memoryview(frame)
    if not hm.verify(mv[: n - _TAG], mv[n - _TAG :]):
        raise CodecError("bad_hmac", "trailer does not match the device key")
    return decode_envelope(mv[: n - _TAG])
