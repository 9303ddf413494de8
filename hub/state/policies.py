"""Operators' policies in words for the LLM tier, per device class: the
``policies`` table and the POLICY_SET entry's apply (hub/state/DESIGN.md
"Operator policies").

    policies: device class (ASCII) -> u8 record version, u64 at_ms, str8 by, str16 text

One record per class an operator set through the API; a class without one
takes the hub config's policy (hub/decide/policies.py holds the precedence).
The entry's checks (class name, length, control characters) are the
decoder's (hub/state/entries.py ``SetPolicy``): a bad entry is rejected
before it reaches ``apply_set`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.state import entries as e
from hub.state import records as r

TABLE = "policies"


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """A class's replicated policy: its words, when and by whom it was set."""

    device_class: str
    text: str
    at_ms: int
    by: str


def pack(sp: e.SetPolicy) -> bytes:
    p = e.Packer().u8(r.RECORD_VERSION).u64(sp.at_ms, "at_ms").str8(sp.by, "by")
    return bytes(p.str16(sp.text, "text"))


def unpack(device_class: str, raw: bytes) -> PolicyRecord:
    u = e.Unpacker(bytes(raw))
    u.u8()  # the record version
    at_ms, by, text = u.u64(), u.str8(), u.str16()
    return PolicyRecord(device_class, text, at_ms, by)


def apply_set(txn: Any, dbs: dict[str, Any], sp: e.SetPolicy) -> bool:
    """Set (or, with an empty text, remove) the class's policy; False when
    nothing changed: the same words again keep the first record (its time
    and author), and removing a class without one is a no-op."""
    key = sp.device_class.encode()
    old = txn.get(key, db=dbs[TABLE])
    if not sp.text:
        return bool(old is not None and txn.delete(key, db=dbs[TABLE]))
    if old is not None and unpack(sp.device_class, old).text == sp.text:
        return False
    txn.put(key, pack(sp), db=dbs[TABLE])
    return True


# -- reads: ``store.read_tables(policies.every)`` -------------------------------------


def one(device_class: str) -> Callable[[Any, dict[str, Any]], PolicyRecord | None]:
    """The read of a class's record (None: the class has none, or is no class name)."""

    def read(txn: Any, dbs: dict[str, Any]) -> PolicyRecord | None:
        if not e.DEVICE_CLASS.fullmatch(device_class):
            return None
        raw = txn.get(device_class.encode(), db=dbs[TABLE])
        return None if raw is None else unpack(device_class, raw)

    return read


def every(txn: Any, dbs: dict[str, Any]) -> list[PolicyRecord]:
    """Every class's record, by class name."""
    return [unpack(bytes(k).decode(), v) for k, v in txn.cursor(db=dbs[TABLE])]
