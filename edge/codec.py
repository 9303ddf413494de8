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

from edge import const

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

# Specs, one per table of aiot.fbs: (names, kinds, sub), with one name and
# one kind per slot, in slot order. A kind there is a field kind above, plus
# _REQ for a required field, plus n * _ENUM for an enum scalar of n values
# (the _E_ kinds). sub is the spec of the table's _TABLES field, if it has one.
# (Not one tuple per field: on the device every tuple is an object in RAM.)
_REQ = const(16)
_ENUM = const(32)
_E_KIND = const(_U8 + 4 * _ENUM)  # ParamKind
_E_STATUS = const(_U8 + 5 * _ENUM)  # CommandStatus
_E_REASON = const(_U16 + 13 * _ENUM)  # Reason
_E_STATE = const(_U8 + 2 * _ENUM)  # LinkState

# fmt: off
_PARAM = (
    ("name", "kind", "int_value", "float_value", "text_value"),
    (_STR + _REQ, _E_KIND, _I64, _F64, _STR),
    None,
)
_PARAM_SPEC = (("name", "kind", "min", "max"), (_STR + _REQ, _E_KIND, _F64, _F64), None)
_CAPABILITY = (("action", "params"), (_STR + _REQ, _TABLES), _PARAM_SPEC)
_TELEMETRY_BATCH = (
    ("device_id", "boot_epoch", "first_seq", "base_ts_ms", "readings", "lost_before"),
    (_STR + _REQ, _U32, _U64, _U64, _READINGS + _REQ, _U64),
    None,
)
_COMMIT_ACK = (("device_id", "watermark", "hub_time_ms"), (_STR + _REQ, _U64, _U64), None)
_COMMAND = (
    ("command_id", "device_id", "seq", "term", "action", "params", "issued_at_ms", "deadline_ms"),
    (_STR + _REQ, _STR + _REQ, _U64, _U64, _STR + _REQ, _TABLES, _U64, _U64),
    _PARAM,
)
_COMMAND_RESULT = (
    ("command_id", "device_id", "seq", "status", "reason", "detail", "executed_at_ms"),
    (_STR + _REQ, _STR + _REQ, _U64, _E_STATUS, _E_REASON, _STR, _U64),
    None,
)
_DEVICE_STATUS = (
    ("device_id", "state", "firmware", "boot_epoch", "uptime_s", "free_heap",
     "buffer_fill_permille", "unacked", "dropped", "reconnects", "hub_index", "capabilities"),
    (_STR + _REQ, _E_STATE, _STR, _U32, _U32, _U32, _U16, _U32, _U32, _U32, _U8, _TABLES),
    _CAPABILITY,
)
_ENVELOPE = (("payload_type", "payload"), (_U8, _UNION + _REQ), None)
# fmt: on

# Union tags (index + 1) and their specs.
TYPES = ("TelemetryBatch", "CommitAck", "Command", "CommandResult", "DeviceStatus")
_SPECS = (_TELEMETRY_BATCH, _COMMIT_ACK, _COMMAND, _COMMAND_RESULT, _DEVICE_STATUS)

# Enum names (index = wire value), for PARAM_KINDS, STATUSES, ... below.
_PARAM_KINDS = "Int Float Bool Text"
_STATUSES = "ACCEPTED DONE FAILED REJECTED EXPIRED"
_REASONS = (
    "NONE BAD_SIGNATURE STALE_TERM DUPLICATE OUT_OF_ORDER DEADLINE_PASSED UNKNOWN_ACTION"
    " BAD_PARAM PARAM_OUT_OF_BOUNDS EXECUTION_ERROR BUSY WRONG_DEVICE MALFORMED"
)
_LINK_STATES = "OFFLINE ONLINE"
_ON_DEMAND = (
    "PARAM PARAM_SPEC CAPABILITY TELEMETRY_BATCH COMMIT_ACK COMMAND COMMAND_RESULT"
    " DEVICE_STATUS ENVELOPE PARAM_KINDS STATUSES REASONS LINK_STATES"
)


def __getattr__(name):
    # Made when read, so that the device holds only what it uses:
    #   PARAM, COMMAND, ... (the specs above without the underscore), for tools
    #     and tests: one (name, kind, required, sub) tuple per slot, where sub
    #     is the enum size, or the sub-spec in this same form
    #   PARAM_KINDS, STATUSES, REASONS, LINK_STATES: a tuple of the names
    if name not in _ON_DEMAND.split():
        raise AttributeError(name)
    v = globals()["_" + name]
    return tuple(v.split()) if type(v) is str else _fields(v)


def _fields(spec):
    names, kinds, sub = spec
    out = []
    for i in range(len(names)):
        k = kinds[i]
        kind = k & 15
        out.append(
            (names[i], kind, k & _REQ != 0, _fields(sub) if kind == _TABLES else k >> 5 or None)
        )
    return tuple(out)


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
        names, kinds, sub = spec
        n = len(kinds)
        # Scalars equal to their default (0) are left out, as the official
        # builder does; readers return the default for absent fields.
        values = [None if kinds[i] & 15 <= _F64 and values[i] == 0 else values[i] for i in range(n)]
        # offs: each present field's width as a negative number, until the
        # field gets its offset in the table; 0 for an absent field.
        offs = [0] * n
        widths = 0  # the widths present, or-ed
        last = -1
        for i in range(n):
            if values[i] is None:
                if kinds[i] & _REQ:
                    raise CodecError("missing_field", names[i])
                continue
            last = i
            w = _SIZE[kinds[i] & 15]
            offs[i] = -w
            widths |= w
        self._pad(2)
        vt = self.pos
        vt_size = 4 + 2 * (last + 1)
        tbl = (vt + vt_size + 3) & -4
        if widths & 8 and tbl % 8 == 0:
            tbl += 4
        # Inline fields widest first (8, 4, 2, then 1 byte), each width in slot
        # order: with the table start at 4 mod 8, every field lands on its
        # natural alignment.
        cur = tbl + 4
        width = 8
        while width:
            if widths & width:
                for i in range(n):
                    if offs[i] == -width:
                        offs[i] = cur - tbl
                        cur += width
            width >>= 1
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
            kind = kinds[i] & 15
            at = tbl + offs[i]
            if kind <= _U64:
                _range(v, 0, _MAX[kind], names[i])
                if kinds[i] >= _ENUM and v >= kinds[i] >> 5:
                    raise CodecError("bad_value", "%s=%d not in enum" % (names[i], v))
                struct.pack_into(_FMT[kind], self.buf, at, v)
            elif kind == _I64:
                _range(v, -0x8000000000000000, 0x7FFFFFFFFFFFFFFF, names[i])
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
                kind = kinds[i] & 15
                v = values[i]
                if kind == _STR:
                    p = self._str(v)
                elif kind == _READINGS:
                    p = self._reading_vector(v)
                elif kind == _UNION:
                    p = self._table(v[0], v[1])
                else:
                    p = self._table_vector(sub, v)
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
        root = self._table(_ENVELOPE, (tag, (spec, values)))
        struct.pack_into("<I", self.buf, 0, root)
        return self.mv[: self.pos]

    # -- public API --

    def begin_batch(self, device_id, boot_epoch, first_seq, base_ts_ms, count, lost_before=0):
        # Lay out a TelemetryBatch with room for `count` readings; fill them
        # with set_reading(i, ...) before seal(). Nothing is allocated per
        # reading, so the uplink can stream records straight from flash.
        return self._root(
            1, _TELEMETRY_BATCH, (device_id, boot_epoch, first_seq, base_ts_ms, count, lost_before)
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
    names, kinds, _sub = spec
    out = []
    for i in range(len(kinds)):
        v = fields.get(names[i])
        kind = kinds[i] & 15
        if (kind == _TABLES and not v) or (kind == _STR and v == "" and not kinds[i] & _REQ):
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
        names, kinds, sub = spec
        out = {}
        tag = 0
        for slot in range(len(kinds)):
            name = names[slot]
            kind = kinds[slot] & 15
            voff = 4 + 2 * slot
            off = struct.unpack_from("<H", self.b, vt + voff)[0] if voff < vt_size else 0
            if off == 0:
                if kinds[slot] & _REQ:
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
                if kinds[slot] >= _ENUM and v >= kinds[slot] >> 5:
                    raise CodecError("bad_enum", "%s.%s = %d" % (tname, name, v))
                out[name] = v
                if slot == 0 and spec is _ENVELOPE:
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
    out = r.table(_ENVELOPE, r.deref(0), "Envelope")
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
