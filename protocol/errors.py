"""Errors raised by the wire codecs.

There is one error type for everything that can be wrong with bytes off the
wire, so callers catch one thing and metrics count rejections by ``reason``:

    CodecError(reason, detail)
        reason is one of REASONS (machine-readable, stable, used as a metric
        label); detail is a short human-readable explanation.

edge/codec.py raises its own ``CodecError`` with the same reason strings, so
both codecs report the same fault the same way.

``ReasonError`` is the shape of every such error, here and in the hub: a
``reason`` for machines and a ``detail`` for people.
"""

from __future__ import annotations

from typing import ClassVar

REASONS = (
    "oversized",  # frame longer than the configured maximum
    "truncated",  # a read would run past the end of the buffer
    "wrong_root",  # missing or foreign file identifier
    "bad_offset",  # an offset points outside the buffer or backwards
    "bad_vtable",  # a vtable is misaligned, too short or out of range
    "bad_vector",  # a vector is longer than the buffer can hold
    "bad_string",  # a string runs out of the buffer or lacks its terminator
    "bad_utf8",  # a string is not valid UTF-8
    "bad_enum",  # an enum value outside the schema
    "unknown_type",  # an envelope payload type outside the union
    "missing_field",  # a required field is absent
    "unexpected_type",  # a valid payload of a type the caller did not expect
    "bad_hmac",  # the HMAC trailer does not match
    "bad_value",  # a value the encoder cannot represent (encode side)
)


class ReasonError(Exception):
    """An error that says what is wrong in two fields: ``reason``, a stable,
    machine-readable string (metrics count by it), and ``detail``, a short
    explanation. A subclass that lists its ``reasons`` takes no other: an
    unknown reason is a bug in the raiser (AssertionError)."""

    reasons: ClassVar[tuple[str, ...]] = ()

    def __init__(self, reason: str, detail: str = "") -> None:
        if self.reasons and reason not in self.reasons:
            raise AssertionError(f"unknown {type(self).__name__} reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CodecError(ReasonError, ValueError):
    """Bytes that are not a valid, authentic aiot v1 frame."""

    reasons = REASONS
