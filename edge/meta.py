# A/B device metadata: the small state a device must not lose.
#
#   meta = Meta("/flash/aiot")     # loads the newest valid copy
#   meta.watermark = 1056
#   meta.save()                    # writes the older copy, never the live one
#
# Two files, meta.a and meta.b. Each save writes the copy that is not the
# newest, so a power cut in the middle of a save leaves the other copy whole.
# A copy is: magic "AIM1", version u8, save counter u32, payload length u16,
# payload, CRC32 of everything before it. Load takes the valid copy with the
# higher counter; a torn or bit-flipped copy fails its CRC and is ignored.
#
# The payload is a fixed struct (_FIXED) followed by the last command's id
# and detail as length-prefixed UTF-8. edge/DESIGN.md explains each field.

import binascii
import struct

from edge import const

_MAGIC = b"AIM1"
_VERSION = const(1)
_HEAD = "<4sBIH"  # magic, version, counter, payload length
_HEAD_SIZE = const(11)
# The fixed fields, in the order of _FIXED.
_FIELDS = (
    "watermark next_seq floor boot_epoch dropped last_cmd_seq highest_term cmd_state"
    " cmd_status cmd_reason cmd_executed_at_ms"
)
_FIXED = "<QQQIIQQBBHQ"
_FIXED_SIZE = const(60)  # struct.calcsize(_FIXED)
MAX_STR = 200  # bytes of cmd_id and cmd_detail kept

# Command states kept for the executor (edge/executor.py).
CMD_IDLE = const(0)
CMD_EXECUTING = const(1)  # persisted before acting
CMD_DONE = const(2)  # persisted after acting, with the result


def _clip(text, limit):
    # UTF-8 bytes of text, cut to at most limit bytes on a character boundary.
    b = text.encode()
    if len(b) <= limit:
        return b
    end = limit
    while end and (b[end] & 0xC0) == 0x80:
        end -= 1
    return b[:end]


def _join(directory, name):
    return directory + "/" + name if directory else name


class Meta:
    def __init__(self, directory):
        self.dir = directory
        self.counter = 0
        self.loaded_from = None  # "a", "b" or None (fresh device)
        self.rejected = 0  # copies that failed validation at load
        self.reset()
        self.load()

    def reset(self):
        self.watermark = 0  # highest seq the hub acknowledged
        self.next_seq = 1  # next sequence number to assign
        self.floor = 0  # highest seq dropped by overflow (never acked)
        self.boot_epoch = 0
        self.dropped = 0  # readings lost to overflow since first boot
        self.last_cmd_seq = 0  # highest command seq executed (or refused for good)
        self.highest_term = 0  # highest Raft term seen in a valid command
        self.cmd_state = CMD_IDLE
        self.cmd_id = ""
        self.cmd_status = 0
        self.cmd_reason = 0
        self.cmd_detail = ""
        self.cmd_executed_at_ms = 0

    def _path(self, which):
        return _join(self.dir, "meta." + which)

    def _read(self, which):
        # -> (counter, payload memoryview) or None
        try:
            with open(self._path(which), "rb") as f:
                data = f.read(_HEAD_SIZE + _FIXED_SIZE + 2 * (MAX_STR + 2) + 4 + 1)
        except OSError:
            return None
        if len(data) < _HEAD_SIZE + 4:
            self.rejected += 1
            return None
        magic, version, counter, length = struct.unpack_from(_HEAD, data, 0)
        end = _HEAD_SIZE + length
        if magic != _MAGIC or version != _VERSION or end + 4 != len(data):
            self.rejected += 1
            return None
        crc = struct.unpack_from("<I", data, end)[0]
        if binascii.crc32(memoryview(data)[:end]) & 0xFFFFFFFF != crc:
            self.rejected += 1
            return None
        return counter, memoryview(data)[_HEAD_SIZE:end]

    def load(self):
        # The valid copy with the higher counter; if it does not decode (it
        # was written by incompatible firmware), the other valid copy.
        found = []
        for which in ("a", "b"):
            got = self._read(which)
            if got is not None:
                found.append((got[0], which, got[1]))
        found.sort(key=lambda c: -c[0])
        for counter, which, payload in found:
            try:
                self._decode(payload)
            except (ValueError, UnicodeError):
                self.reset()
                self.rejected += 1
                continue
            self.counter = counter
            self.loaded_from = which
            return True
        return False

    def _decode(self, p):
        if len(p) < _FIXED_SIZE + 4:
            raise ValueError("short metadata")
        names = _FIELDS.split()
        values = struct.unpack_from(_FIXED, p, 0)
        for i in range(len(names)):
            setattr(self, names[i], values[i])
        pos = _FIXED_SIZE
        n = struct.unpack_from("<H", p, pos)[0]
        self.cmd_id = str(bytes(p[pos + 2 : pos + 2 + n]), "utf-8")
        pos += 2 + n
        n = struct.unpack_from("<H", p, pos)[0]
        if pos + 2 + n != len(p):
            raise ValueError("metadata length mismatch")
        self.cmd_detail = str(bytes(p[pos + 2 : pos + 2 + n]), "utf-8")

    def save(self):
        cid = _clip(self.cmd_id, MAX_STR)
        detail = _clip(self.cmd_detail, MAX_STR)
        length = _FIXED_SIZE + 2 + len(cid) + 2 + len(detail)
        buf = bytearray(_HEAD_SIZE + length + 4)
        counter = self.counter + 1
        struct.pack_into(_HEAD, buf, 0, _MAGIC, _VERSION, counter, length)
        struct.pack_into(_FIXED, buf, _HEAD_SIZE, *[getattr(self, k) for k in _FIELDS.split()])
        pos = _HEAD_SIZE + _FIXED_SIZE
        struct.pack_into("<H", buf, pos, len(cid))
        buf[pos + 2 : pos + 2 + len(cid)] = cid
        pos += 2 + len(cid)
        struct.pack_into("<H", buf, pos, len(detail))
        buf[pos + 2 : pos + 2 + len(detail)] = detail
        end = _HEAD_SIZE + length
        struct.pack_into("<I", buf, end, binascii.crc32(memoryview(buf)[:end]) & 0xFFFFFFFF)
        # Overwrite the copy that is not the newest valid one.
        target = "b" if self.loaded_from == "a" else "a"
        with open(self._path(target), "wb") as f:
            f.write(buf)
        self.counter = counter
        self.loaded_from = target
        return len(buf)
