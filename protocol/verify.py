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

_ENUMS: Final[dict[str, tuple[int, ...]]] = {
    "ParamKind": (0, 1, 2, 3),
    "CommandStatus": (0, 1, 2, 3, 4),
    "Reason": tuple(range(13)),
    "LinkState": (0, 1),
}


def _fields(spec: str) -> tuple[Field, ...]:
    """Fields from ``name=kind`` words in slot order: ``!`` after the kind
    marks a required field, ``/Enum`` an enum's values (from ``_ENUMS``)."""
    out: list[Field] = []
    for word in spec.split():
        name, _, kind = word.partition("=")
        kind, _, enum = kind.partition("/")
        required = kind.endswith("!")
        out.append((name, kind.rstrip("!"), required, _ENUMS[enum] if enum else None))
    return tuple(out)


LAYOUT: Final[dict[str, tuple[Field, ...]]] = {
    "Envelope": _fields("payload_type=B payload=union!"),
    "TelemetryBatch": _fields(
        "device_id=str! boot_epoch=I first_seq=Q base_ts_ms=Q readings=vstructs:8! lost_before=Q"
    ),
    "CommitAck": _fields("device_id=str! watermark=Q hub_time_ms=Q"),
    "Param": _fields("name=str! kind=B/ParamKind int_value=q float_value=d text_value=str"),
    "Command": _fields(
        "command_id=str! device_id=str! seq=Q term=Q action=str! params=vtables:Param"
        " issued_at_ms=Q deadline_ms=Q"
    ),
    "CommandResult": _fields(
        "command_id=str! device_id=str! seq=Q status=B/CommandStatus reason=H/Reason"
        " detail=str executed_at_ms=Q"
    ),
    "ParamSpec": _fields("name=str! kind=B/ParamKind min=d max=d"),
    "Capability": _fields("action=str! params=vtables:ParamSpec"),
    "DeviceStatus": _fields(
        "device_id=str! state=B/LinkState firmware=str boot_epoch=I uptime_s=I free_heap=I"
        " buffer_fill_permille=H unacked=I dropped=I reconnects=I hub_index=B"
        " capabilities=vtables:Capability"
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
