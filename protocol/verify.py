"""A FlatBuffers verifier for the aiot v1 schema.

The official Python runtime reads whatever offsets a buffer holds: on hostile
bytes it raises IndexError or struct.error, or it returns garbage. The hub
runs every frame through ``verify`` first, so the generated accessors only
ever see buffers whose every offset, vtable, string and vector lies inside
the buffer. ``verify`` raises ``CodecError`` and nothing else.

``LAYOUT`` mirrors ``aiot.fbs`` slot by slot; ``tests/unit/test_layout.py``
holds it to the generated code, so a schema change that forgets this table
fails the build.
"""

from __future__ import annotations

import struct
from typing import Final

from protocol.errors import CodecError

FILE_IDENTIFIER: Final = b"AIO1"

# Field kinds: scalar widths by struct code, "str", "table:<Name>",
# "vtables:<Name>" (vector of tables), "vstructs:<size>" (vector of structs),
# "union" (the envelope payload; its type tag is the slot before it).
# Each field: (name, kind, required, enum values or None).
Field = tuple[str, str, bool, tuple[int, ...] | None]

_KIND = (0, 1, 2, 3)
_STATUS = (0, 1, 2, 3, 4)
_REASON = tuple(range(13))
_STATE = (0, 1)

LAYOUT: Final[dict[str, tuple[Field, ...]]] = {
    "Envelope": (
        ("payload_type", "B", False, None),
        ("payload", "union", True, None),
    ),
    "TelemetryBatch": (
        ("device_id", "str", True, None),
        ("boot_epoch", "I", False, None),
        ("first_seq", "Q", False, None),
        ("base_ts_ms", "Q", False, None),
        ("readings", "vstructs:8", True, None),
        ("lost_before", "Q", False, None),
    ),
    "CommitAck": (
        ("device_id", "str", True, None),
        ("watermark", "Q", False, None),
        ("hub_time_ms", "Q", False, None),
    ),
    "Param": (
        ("name", "str", True, None),
        ("kind", "B", False, _KIND),
        ("int_value", "q", False, None),
        ("float_value", "d", False, None),
        ("text_value", "str", False, None),
    ),
    "Command": (
        ("command_id", "str", True, None),
        ("device_id", "str", True, None),
        ("seq", "Q", False, None),
        ("term", "Q", False, None),
        ("action", "str", True, None),
        ("params", "vtables:Param", False, None),
        ("issued_at_ms", "Q", False, None),
        ("deadline_ms", "Q", False, None),
    ),
    "CommandResult": (
        ("command_id", "str", True, None),
        ("device_id", "str", True, None),
        ("seq", "Q", False, None),
        ("status", "B", False, _STATUS),
        ("reason", "H", False, _REASON),
        ("detail", "str", False, None),
        ("executed_at_ms", "Q", False, None),
    ),
    "ParamSpec": (
        ("name", "str", True, None),
        ("kind", "B", False, _KIND),
        ("min", "d", False, None),
        ("max", "d", False, None),
    ),
    "Capability": (
        ("action", "str", True, None),
        ("params", "vtables:ParamSpec", False, None),
    ),
    "DeviceStatus": (
        ("device_id", "str", True, None),
        ("state", "B", False, _STATE),
        ("firmware", "str", False, None),
        ("boot_epoch", "I", False, None),
        ("uptime_s", "I", False, None),
        ("free_heap", "I", False, None),
        ("buffer_fill_permille", "H", False, None),
        ("unacked", "I", False, None),
        ("dropped", "I", False, None),
        ("reconnects", "I", False, None),
        ("hub_index", "B", False, None),
        ("capabilities", "vtables:Capability", False, None),
    ),
}

# Union tag -> table name, in the order of `union Payload`.
UNION: Final[tuple[str, ...]] = (
    "TelemetryBatch",
    "CommitAck",
    "Command",
    "CommandResult",
    "DeviceStatus",
)


class _Verifier:
    __slots__ = ("buf", "n")

    def __init__(self, buf: bytes | bytearray | memoryview) -> None:
        self.buf = buf
        self.n = len(buf)

    def _read(self, fmt: str, pos: int, size: int) -> int:
        if pos < 0 or pos + size > self.n:
            raise CodecError("truncated", f"{size}-byte read at {pos} in {self.n} bytes")
        value: int = struct.unpack_from(fmt, self.buf, pos)[0]
        return value

    def _deref(self, pos: int) -> int:
        target = pos + self._read("<I", pos, 4)
        if target >= self.n:
            raise CodecError("bad_offset", f"offset at {pos} points to {target}")
        if target % 4:
            raise CodecError("bad_offset", f"offset at {pos} points to unaligned {target}")
        return target

    def table(self, name: str, pos: int) -> int:
        """Check the table at ``pos`` and everything below it; return its union tag."""
        if pos % 4 or pos + 4 > self.n:
            raise CodecError("bad_offset", f"{name} table at {pos}")
        vt = pos - struct.unpack_from("<i", self.buf, pos)[0]
        if vt < 0 or vt % 2 or vt + 4 > self.n:
            raise CodecError("bad_vtable", f"{name} vtable at {vt}")
        vt_size = self._read("<H", vt, 2)
        tbl_size = self._read("<H", vt + 2, 2)
        if vt_size < 4 or vt_size % 2 or vt + vt_size > self.n:
            raise CodecError("bad_vtable", f"{name} vtable size {vt_size}")
        if tbl_size < 4 or pos + tbl_size > self.n:
            raise CodecError("bad_vtable", f"{name} table size {tbl_size}")
        union_tag = 0
        for slot, (fname, kind, required, enum_values) in enumerate(LAYOUT[name]):
            voff = 4 + 2 * slot
            off = self._read("<H", vt + voff, 2) if voff < vt_size else 0
            if off == 0:
                if required:
                    raise CodecError("missing_field", f"{name}.{fname}")
                continue
            fpos = pos + off
            width = struct.calcsize("<" + kind) if kind[0].isalpha() and len(kind) == 1 else 4
            if off < 4 or off + width > tbl_size:
                raise CodecError("bad_vtable", f"{name}.{fname} at {off} of {tbl_size}")
            if len(kind) == 1:
                value = self._read("<" + kind, fpos, width)
                if enum_values is not None and value not in enum_values:
                    raise CodecError("bad_enum", f"{name}.{fname} = {value}")
                if fname == "payload_type":
                    union_tag = value
            elif kind == "str":
                self.string(self._deref(fpos), f"{name}.{fname}")
            elif kind == "union":
                if not 1 <= union_tag <= len(UNION):
                    raise CodecError("unknown_type", f"payload type {union_tag}")
                self.table(UNION[union_tag - 1], self._deref(fpos))
            elif kind.startswith("vtables:"):
                start, count = self.vector(self._deref(fpos), 4, f"{name}.{fname}")
                for i in range(count):
                    self.table(kind[8:], self._deref(start + 4 * i))
            else:  # vstructs:<size>
                self.vector(self._deref(fpos), int(kind[9:]), f"{name}.{fname}")
        return union_tag

    def vector(self, pos: int, elem_size: int, what: str) -> tuple[int, int]:
        count = self._read("<I", pos, 4)
        if count > (self.n - pos - 4) // elem_size:
            raise CodecError("bad_vector", f"{what} claims {count} elements")
        return pos + 4, count

    def string(self, pos: int, what: str) -> None:
        length = self._read("<I", pos, 4)
        end = pos + 4 + length
        if length > self.n or end >= self.n or self.buf[end] != 0:
            raise CodecError("bad_string", f"{what} of length {length}")
        try:
            bytes(self.buf[pos + 4 : end]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError("bad_utf8", f"{what}: {exc.reason}") from None


def verify(buf: bytes | bytearray | memoryview) -> int:
    """Check that ``buf`` is a well-formed Envelope; return its payload type."""
    if len(buf) < 12:
        raise CodecError("truncated", f"{len(buf)} bytes is shorter than any envelope")
    if bytes(buf[4:8]) != FILE_IDENTIFIER:
        raise CodecError("wrong_root", f"file identifier {bytes(buf[4:8])!r}, want b'AIO1'")
    v = _Verifier(buf)
    return v.table("Envelope", v._deref(0))
