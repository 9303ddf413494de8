"""The one function that changes the store: ``apply_entries``.

It takes ``(raft index, entry bytes)`` pairs (hub/state/entries.py) and applies
them in one LMDB write transaction. ``Store.apply`` is its only caller, so the
replicated class, journal replay and the tests all change the store the same
way. The rules it keeps are in hub/state/DESIGN.md ("Rules apply keeps", "Per
entry"):

- deterministic: it reads nothing but the store and the entry (no clock, no
  randomness, no configuration), so every replica that applies the same log
  holds the same content (docs/ARCHITECTURE.md invariant 4);
- idempotent: entries at or below the recorded applied index are skipped, and
  a reading already stored is never overwritten (invariant 2);
- a bad entry changes nothing: each entry (each part of a GROUP) runs in a
  nested transaction, and every handler checks before it writes and raises
  Rejected to have that child aborted.

One handler per entry type, grouped below by the tables they write.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from hub.state import entries as e
from hub.state import invites, outbox, policies, rollups, threads
from hub.state import records as r
from hub.state.errors import Rejected
from hub.state.records import LedgerRecord, PresenceRecord, StateChange
from protocol import messages as m
from protocol.errors import ReasonError

# A command's history keeps at most this many progress entries (SENT with a
# detail): a device cannot grow a ledger record without bound.
MAX_PROGRESS: Final = 16


class Outcome(enum.Enum):
    APPLIED = "applied"  # state changed
    UNCHANGED = "unchanged"  # valid, nothing new (duplicates, re-proposals, stale presence)
    REJECTED = "rejected"  # invalid at apply time; no state changed
    SKIPPED = "skipped"  # at or below the applied index; not looked at


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one entry (or one part of a GROUP entry) did."""

    index: int
    part: int  # 1-based position inside a GROUP entry; 0 otherwise
    type: e.EntryType | None  # None when the header is unreadable
    outcome: Outcome
    device_id: str = ""
    # batches: the node that received it (it sends the commit-ack); presence,
    # command results and marks: the entry's node; NODE_PUT/REMOVE: the record's
    node_id: str = ""
    stored: int = 0  # new readings stored
    duplicates: int = 0  # readings of the batch already stored
    watermark: int = 0  # the device's watermark after the entry (batches)
    command_id: str = ""
    command_seq: int = 0  # the ledger's per-device sequence number (commands)
    reason: str = ""  # machine-readable, one of errors.REASONS, when REJECTED
    detail: str = ""
    decision_id: str = ""  # decisions and alert acknowledgements
    removed: int = 0  # records a retention step (PRUNE) deleted
    user: str = ""  # invitations: the user; conversations: the thread's owner
    message_seq: int = 0  # THREAD_POST: the message's seq in its thread

    @property
    def error(self) -> Rejected | None:
        return Rejected(self.reason, self.detail) if self.reason else None


# -- the transaction ----------------------------------------------------------------


def apply_entries(
    env: Any, dbs: dict[str, Any], entries: Sequence[tuple[int, bytes]]
) -> list[ApplyResult]:
    """Apply ``(raft index, entry)`` pairs to the LMDB ``env`` (its tables
    ``dbs``) in one write transaction, with the new applied index.

    Entries at or below the applied index are skipped. A rejected entry
    changes nothing and the others still apply. An LMDB error (a full map
    raises lmdb.MapFullError) aborts the whole call: nothing is written.
    """
    if not entries:
        return []
    results: list[ApplyResult] = []
    with env.begin(write=True) as txn:
        applied = start = r.applied_index(txn, dbs)
        for index, data in entries:
            if index < 1:
                raise ValueError(f"raft index {index} < 1")
            if index <= applied:
                results.append(ApplyResult(index, 0, e.peek_type(data), Outcome.SKIPPED))
                continue
            results.extend(_apply_entry(env, txn, dbs, index, bytes(data)))
            applied = index
        if applied != start:
            txn.put(r.META_APPLIED, r.U64.pack(applied), db=dbs["meta"])
    return results


def _apply_entry(
    env: Any, txn: Any, dbs: dict[str, Any], index: int, data: bytes
) -> list[ApplyResult]:
    if e.peek_type(data) is not e.EntryType.GROUP:
        return [_apply_part(env, txn, dbs, index, 0, data)]
    try:
        grp = e.decode(data)
    except e.EntryError as exc:
        return [_rejected(index, 0, data, exc)]
    assert isinstance(grp, e.Group)
    return [_apply_part(env, txn, dbs, index, i, p) for i, p in enumerate(grp.parts, 1)]


def _rejected(index: int, part: int, data: bytes, exc: ReasonError) -> ApplyResult:
    return ApplyResult(
        index, part, e.peek_type(data), Outcome.REJECTED, reason=exc.reason, detail=exc.detail
    )


def _apply_part(
    env: Any, txn: Any, dbs: dict[str, Any], index: int, part: int, data: bytes
) -> ApplyResult:
    try:
        entry = e.decode(data)
    except e.EntryError as exc:
        return _rejected(index, part, data, exc)
    handler = _HANDLERS.get(type(entry))
    if handler is None:  # a GROUP in a GROUP (decode refuses those already)
        return _rejected(index, part, data, Rejected("nested_group"))
    child = env.begin(write=True, parent=txn)
    try:
        result = handler(_Part(child, dbs, index, part, e.ENTRY_TYPES[type(entry)]), entry)
        if isinstance(entry, outbox.EVENT_ENTRIES) and result.outcome is Outcome.APPLIED:
            _keep_events(child, dbs, index, part, entry, result)
    except Rejected as exc:
        child.abort()
        return _rejected(index, part, data, exc)
    except BaseException:
        child.abort()
        raise
    child.commit()
    return result


def _keep_events(
    txn: Any, dbs: dict[str, Any], index: int, part: int, entry: Any, result: ApplyResult
) -> None:
    """While the cloud export is on, keep the events the entry gave
    (hub/state/outbox.py) in the outbox, in the entry's own transaction."""
    if outbox.cursor(txn, dbs) is None:
        return
    found = outbox.events_of(txn, dbs, entry, result.command_id or "")
    if found is not None:
        txn.put(outbox.key(index, part), outbox.events_record(*found), db=dbs["outbox"])


@dataclass(slots=True)
class _Part:
    """One entry, or one part of a GROUP, being applied: its own (child)
    write transaction over the store's tables, and its place in the log."""

    txn: Any
    dbs: dict[str, Any]
    index: int
    part: int
    kind: e.EntryType

    def done(self, outcome: Outcome, **fields: Any) -> ApplyResult:
        return ApplyResult(self.index, self.part, self.kind, outcome, **fields)

    def get(self, table: str, key: bytes) -> bytes | None:
        raw: bytes | None = self.txn.get(key, db=self.dbs[table])
        return raw

    def put(self, table: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs[table])

    def delete(self, table: str, key: bytes) -> bool:
        return bool(self.txn.delete(key, db=self.dbs[table]))

    def device(self, device_id: str) -> bytes:
        """The device's record; Rejected when it is not registered."""
        raw = self.get("devices", device_id.encode())
        if raw is None:
            raise Rejected("unknown_device", device_id)
        return raw


# -- telemetry ----------------------------------------------------------------------


def _batch(t: _Part, b: e.Batch) -> ApplyResult:
    t.device(b.device_id)
    txn, readings = t.txn, t.dbs["readings"]
    prefix = r.dev_prefix(b.device_id)
    packed, base, seq = b.packed, b.base_ts_ms, b.first_seq
    hours: dict[int, list[int]] = {}
    stored = 0
    rolled = rollups.Pending(txn, t.dbs, prefix, b.device_id)
    export: list[outbox.Row] | None = [] if outbox.cursor(txn, t.dbs) is not None else None
    for i in range(0, len(packed), 8):
        sensor, offset = struct.unpack_from(">HH", packed, i)
        ts = base + offset
        value = r.TS_SENSOR.pack(ts, sensor) + packed[i + 4 : i + 8]
        if txn.put(r.dev_key(prefix, seq), value, overwrite=False, db=readings):
            stored += 1
            rolled.reading(seq, ts, sensor, packed[i + 4 : i + 8])
            if export is not None:
                export.append((seq, ts, sensor, packed[i + 4 : i + 8]))
            h = hours.get(ts // r.HOUR_MS)
            if h is None:
                hours[ts // r.HOUR_MS] = [seq, seq, 1]
            else:
                h[1] = seq
                h[2] += 1
        seq += 1
    for hour, (lo, hi, n) in hours.items():
        _merge_hour(t, r.dev_key(prefix, hour), lo, hi, n)
    rolled.flush()
    if export:  # the cloud export is on: keep what this batch stored (hub/state/outbox.py)
        t.put("outbox", outbox.key(t.index, t.part), outbox.readings_record(b.device_id, export))
    changed = _advance_watermark(t, b, prefix, stored > 0)
    return t.done(
        Outcome.APPLIED if stored or changed else Outcome.UNCHANGED,
        device_id=b.device_id,
        node_id=b.node_id,
        stored=stored,
        duplicates=b.count - stored,
        watermark=_progress(t, b.device_id)[0],
    )


def _merge_hour(t: _Part, key: bytes, lo: int, hi: int, n: int) -> None:
    # min, max and count are order-independent: the index depends only on
    # the set of stored readings, never on which batch brought them.
    old = t.get("hours", key)
    if old is not None:
        olo, ohi, on = r.HOUR_VALUE.unpack(old)
        lo, hi, n = min(lo, olo), max(hi, ohi), n + on
    t.put("hours", key, r.HOUR_VALUE.pack(lo, hi, n))


def _progress(t: _Part, device_id: str) -> tuple[int, int]:
    raw = t.get("watermarks", device_id.encode())
    return (0, 0) if raw is None else r.progress_of(raw)


def _advance_watermark(t: _Part, b: e.Batch, prefix: bytes, stored: bool) -> bool:
    # watermark: highest seq w such that every seq in (floor, w] is
    # stored, floor = lost_before - 1 (0 when nothing was declared lost).
    # lost_before is the highest declaration, clamped to the batch's
    # first_seq: a device cannot declare lost what it has yet to send.
    # Both are maxima over the stored set, so they do not depend on the
    # order in which batches arrive.
    old_mark, old_lost = _progress(t, b.device_id)
    lost = max(old_lost, min(b.lost_before, b.first_seq))
    mark = max(old_mark, lost - 1)
    if stored or mark != old_mark:
        cur = t.txn.cursor(db=t.dbs["readings"])
        if cur.set_key(r.dev_key(prefix, mark + 1)):
            mark += 1
            while cur.next() and cur.key() == r.dev_key(prefix, mark + 1):
                mark += 1
    if (mark, lost) == (old_mark, old_lost):
        return False
    t.put("watermarks", b.device_id.encode(), r.PROGRESS_VALUE.pack(mark, lost))
    return True


# -- devices ------------------------------------------------------------------------


def _register(t: _Part, reg: e.RegisterDevice) -> ApplyResult:
    d = reg.device
    key = d.device_id.encode()
    fields = r.device_fields(d)
    old = t.get("devices", key)
    if old is not None:
        # Same fields (byte for byte; the time may differ): a re-proposal.
        if old[1 : 1 + len(fields)] == fields and len(old) == len(fields) + 9:
            return t.done(Outcome.UNCHANGED, device_id=d.device_id)
        raise Rejected("device_exists", d.device_id)
    t.put("devices", key, r.pack_device_record(d, reg.at_ms))
    return t.done(Outcome.APPLIED, device_id=d.device_id)


def _remove(t: _Part, rm: e.RemoveDevice) -> ApplyResult:
    # The device's readings, hours, watermark and presence go with it, so
    # the id can be provisioned again from seq 1. The ledger stays: it is
    # the history of what was decided, and its per-device command sequence
    # must keep increasing for a device that comes back with its old flash.
    t.device(rm.device_id)
    key, prefix = rm.device_id.encode(), r.dev_prefix(rm.device_id)
    for table in ("devices", "watermarks", "presence", "retention"):
        t.delete(table, key)
    for table in ("readings", "hours", "energy_index", "rollup_hours", "rollup_days"):
        cur = t.txn.cursor(db=t.dbs[table])
        if cur.set_range(prefix):
            while cur.key().startswith(prefix) and cur.delete():
                pass
    return t.done(Outcome.APPLIED, device_id=rm.device_id)


def _presence(t: _Part, p: e.Presence) -> ApplyResult:
    # ONLINE: the node now holds the session (log order decides between
    # nodes), unless it is older than what that same node said before.
    # OFFLINE: only the holder can clear its own claim, so a late "lost
    # it" from the old hub never hides the device's move to a new one.
    t.device(p.device_id)
    key = p.device_id.encode()
    raw = t.get("presence", key)
    cur = None if raw is None else r.unpack_presence(p.device_id, raw)
    if p.state is m.LinkState.ONLINE:
        stale = cur is not None and cur.node_id == p.node_id and p.at_ms < cur.at_ms
    else:
        stale = cur is None or cur.node_id != p.node_id or p.at_ms < cur.at_ms
    new = PresenceRecord(p.device_id, p.node_id, p.state, p.at_ms)
    if stale or cur == new:
        return t.done(Outcome.UNCHANGED, device_id=p.device_id, node_id=p.node_id)
    t.put("presence", key, r.pack_presence(new))
    return t.done(Outcome.APPLIED, device_id=p.device_id, node_id=p.node_id)


# -- the command ledger -------------------------------------------------------------

_FINAL_FROM_STATUS: Final = {
    m.CommandStatus.DONE: e.LedgerState.DONE,
    m.CommandStatus.FAILED: e.LedgerState.FAILED,
    m.CommandStatus.REJECTED: e.LedgerState.REJECTED,
    m.CommandStatus.EXPIRED: e.LedgerState.EXPIRED,
}


def _is_progress(rec: LedgerRecord, detail: str) -> bool:
    """Whether an ACCEPTED answer with ``detail`` adds to the command's history:
    the first one does (PENDING becomes SENT), then each detail not seen yet,
    up to MAX_PROGRESS of them."""
    if rec.state is e.LedgerState.PENDING:
        return True
    if not detail:
        return False
    seen = [h.detail for h in rec.history if h.detail]
    return detail not in seen and len(seen) < MAX_PROGRESS


def _next_command_seq(t: _Part, prefix: bytes) -> int:
    cur = t.txn.cursor(db=t.dbs["ledger"])
    # "id \x01" sorts after every "id \0 seq" key and before other ids.
    found = cur.prev() if cur.set_range(prefix[:-1] + b"\x01") else cur.last()
    if found and cur.key().startswith(prefix):
        return r.seq_of(cur.key()) + 1
    return 1


def _ledger_at(t: _Part, lkey: bytes) -> LedgerRecord:
    return r.unpack_ledger(t.txn.get(lkey, db=t.dbs["ledger"]))


def _ledger_get(t: _Part, command_id: str) -> tuple[bytes, LedgerRecord]:
    lkey = t.get("ledger_ids", command_id.encode())
    if lkey is None:
        raise Rejected("unknown_command", command_id)
    return lkey, _ledger_at(t, lkey)


def _ledger_append(
    t: _Part, lkey: bytes, rec: LedgerRecord, change: StateChange, result: m.CommandResult | None
) -> None:
    """The command moves to ``change.state``, at the end of its history."""
    history = (*rec.history, change)
    t.put("ledger", lkey, r.pack_ledger(LedgerRecord(rec.command, change.state, history, result)))


def _ledger_done(t: _Part, outcome: Outcome, c: m.Command, node_id: str) -> ApplyResult:
    """The result of a command result or mark."""
    return t.done(
        outcome,
        device_id=c.device_id,
        node_id=node_id,
        command_id=c.command_id,
        command_seq=c.seq,
    )


def _command(t: _Part, c: e.PutCommand) -> ApplyResult:
    lkey = t.get("ledger_ids", c.command_id.encode())
    if lkey is not None:
        old = _ledger_at(t, lkey).command
        if r.command_fields(r.put_command_of(old)) != r.command_fields(c):
            raise Rejected("command_exists", c.command_id)
        return t.done(
            Outcome.UNCHANGED, device_id=c.device_id, command_id=c.command_id, command_seq=old.seq
        )
    device = r.unpack_device_record(t.device(c.device_id))
    system = c.action in e.SYSTEM_ACTIONS  # the hub's own: any device, any firmware
    if not system and all(cap.action != c.action for cap in device.capabilities):
        raise Rejected("unknown_action", f"{c.device_id}: {c.action}")
    prefix = r.dev_prefix(c.device_id)
    seq = _next_command_seq(t, prefix)
    rec = LedgerRecord(
        c.with_seq(seq),
        e.LedgerState.PENDING,
        (StateChange(e.LedgerState.PENDING, c.issued_at_ms, ""),),
        None,
    )
    lkey = r.dev_key(prefix, seq)
    t.put("ledger", lkey, r.pack_ledger(rec))
    t.put("ledger_ids", c.command_id.encode(), lkey)
    return t.done(Outcome.APPLIED, device_id=c.device_id, command_id=c.command_id, command_seq=seq)


def _command_result(t: _Part, rr: e.RecordResult) -> ApplyResult:
    # The device's word is final: its first final result stands, and it
    # replaces a hub-side EXPIRED (a guess that no answer would come).
    res = rr.result
    lkey, rec = _ledger_get(t, res.command_id)
    c = rec.command
    if res.device_id != c.device_id:
        raise Rejected("wrong_device", f"{res.device_id} != {c.device_id}")
    if res.seq != c.seq:
        raise Rejected("wrong_seq", f"{res.seq} != {c.seq}")
    result: m.CommandResult | None
    if res.status is m.CommandStatus.ACCEPTED:
        # The device took the command and its work goes on; each new
        # detail is progress in the history (a redelivered one is not).
        if rec.state.final or not _is_progress(rec, res.detail):
            return _ledger_done(t, Outcome.UNCHANGED, c, rr.node_id)
        change = StateChange(e.LedgerState.SENT, rr.at_ms, rr.node_id, res.detail)
        result = None
    else:
        if rec.result is not None:
            return _ledger_done(t, Outcome.UNCHANGED, c, rr.node_id)
        change = StateChange(_FINAL_FROM_STATUS[res.status], rr.at_ms, rr.node_id)
        result = res
    _ledger_append(t, lkey, rec, change, result)
    return _ledger_done(t, Outcome.APPLIED, c, rr.node_id)


def _mark(t: _Part, mk: e.MarkCommand) -> ApplyResult:
    lkey, rec = _ledger_get(t, mk.command_id)
    c = rec.command
    if mk.state is e.LedgerState.SENT:
        changes = rec.state is e.LedgerState.PENDING
    elif rec.state.final:
        changes = False
    elif not c.deadline_ms or mk.at_ms < c.deadline_ms:
        raise Rejected("deadline_not_passed", f"{c.command_id} at {mk.at_ms}")
    else:
        changes = True
    if not changes:
        return _ledger_done(t, Outcome.UNCHANGED, c, mk.node_id)
    change = StateChange(mk.state, mk.at_ms, mk.node_id)
    _ledger_append(t, lkey, rec, change, rec.result)
    return _ledger_done(t, Outcome.APPLIED, c, mk.node_id)


# -- the model registry -------------------------------------------------------------


def _model_version(t: _Part, mv: e.ModelVersion) -> ApplyResult:
    key = r.model_version_key(mv.name, mv.version)
    value = r.pack_model_version(mv)
    old = t.get("model_versions", key)
    if old is not None:
        if old[:-8] == value[:-8]:  # the same but for at_ms
            return t.done(Outcome.UNCHANGED)
        raise Rejected("model_version_exists", f"{mv.name}@{mv.version}")
    t.put("model_versions", key, value)
    return t.done(Outcome.APPLIED)


def _model(t: _Part, pm: e.PutModel) -> ApplyResult:
    # The activation of a registered version (MODEL_PUT): the version and
    # its sha256 must match a MODEL_VERSION record. No version switches the
    # model off (``e.switched_off``): sha256 all zero, size 0.
    if not pm.version:
        if pm.sha256 != e.NO_SHA256 or pm.size:
            raise Rejected("bad_value", f"{pm.name}: switched off with a sha256 or a size")
    else:
        raw = t.get("model_versions", r.model_version_key(pm.name, pm.version))
        if raw is None or r.unpack_model_version(raw).sha256 != pm.sha256:
            raise Rejected("unknown_model_version", f"{pm.name}@{pm.version}")
    key, value = pm.name.encode(), r.pack_model(pm)
    if t.get("models", key) == value:
        return t.done(Outcome.UNCHANGED)
    t.put("models", key, value)
    return t.done(Outcome.APPLIED)


# -- hub nodes and API users --------------------------------------------------------


def _node_put(t: _Part, n: e.NodeInfo) -> ApplyResult:
    # Log order decides, not at_ms: a node's clock at boot (a Raspberry Pi
    # has no RTC) can be behind what it said last time. The same addresses
    # again (a restart, a retried proposal) change nothing, not even at_ms,
    # so restarts do not churn the content hash.
    key = n.node_id.encode()
    old = t.get("nodes", key)
    if old is not None and old[1:-8] == r.node_fields(n):
        return t.done(Outcome.UNCHANGED, node_id=n.node_id)
    t.put("nodes", key, r.pack_node(n))
    return t.done(Outcome.APPLIED, node_id=n.node_id)


def _node_remove(t: _Part, rm: e.RemoveNode) -> ApplyResult:
    # Idempotent: removing a node that is not there is not an error.
    removed = t.delete("nodes", rm.node_id.encode())
    return t.done(Outcome.APPLIED if removed else Outcome.UNCHANGED, node_id=rm.node_id)


def _node_drain(t: _Part, d: e.DrainNode) -> ApplyResult:
    # drains: node_id -> u8 record version, u64 at_ms of the drain. Draining
    # a drained node, or bringing back one that is not drained, changes nothing.
    key = d.node_id.encode()
    if not d.drained:
        removed = t.delete("drains", key)
        return t.done(Outcome.APPLIED if removed else Outcome.UNCHANGED, node_id=d.node_id)
    if t.get("drains", key) is not None:
        return t.done(Outcome.UNCHANGED, node_id=d.node_id)
    t.put("drains", key, bytes(e.Packer().u8(r.RECORD_VERSION).u64(d.at_ms)))
    return t.done(Outcome.APPLIED, node_id=d.node_id)


def _set_policy(t: _Part, sp: e.SetPolicy) -> ApplyResult:
    # An operator's policy in words for a device class (hub/state/policies.py);
    # decoding has refused a bad class name, length or control character.
    changed = policies.apply_set(t.txn, t.dbs, sp)
    return t.done(Outcome.APPLIED if changed else Outcome.UNCHANGED)


def _user_put(t: _Part, user: e.User) -> ApplyResult:
    key, value = user.name.encode(), r.pack_user(user)
    old = t.get("users", key)
    if old is not None and old[:-8] == value[:-8]:  # the same but for at_ms
        return t.done(Outcome.UNCHANGED)
    t.put("users", key, value)
    return t.done(Outcome.APPLIED)


def _user_remove(t: _Part, rm: e.RemoveUser) -> ApplyResult:
    removed = t.delete("users", rm.name.encode())
    return t.done(Outcome.APPLIED if removed else Outcome.UNCHANGED)


def _revoke_tokens(t: _Part, rv: e.RevokeTokens) -> ApplyResult:
    # Ids revoked longer ago than any token lives are forgotten, measured by
    # this entry's time (never a clock), so the table stays small.
    changed = False
    old = [
        k
        for k, v in t.txn.cursor(db=t.dbs["revoked_tokens"])
        if r.unpack_revoked(v) + r.REVOKED_TOKEN_KEEP_MS < rv.at_ms
    ]
    for key in old:
        changed |= t.delete("revoked_tokens", bytes(key))
    # The first revocation of an id stands; the cut-off only moves forward.
    if rv.token_id and t.get("revoked_tokens", rv.token_id.encode()) is None:
        t.put("revoked_tokens", rv.token_id.encode(), r.pack_revoked(rv.at_ms))
        changed = True
    before = t.get("meta", r.META_TOKENS_BEFORE)
    if rv.before_ms > (0 if before is None else r.seq_of(before)):
        t.put("meta", r.META_TOKENS_BEFORE, r.U64.pack(rv.before_ms))
        changed = True
    return t.done(Outcome.APPLIED if changed else Outcome.UNCHANGED)


# -- decisions (provenance) ---------------------------------------------------------


def _ack_alert(t: _Part, a: e.AckAlert) -> ApplyResult:
    # The first acknowledgement stands; later ones change nothing.
    key = a.decision_id.encode()
    if t.get("decisions", key) is None:
        raise Rejected("unknown_decision", a.decision_id)
    if t.get("alert_acks", key) is not None:
        return t.done(Outcome.UNCHANGED, decision_id=a.decision_id)
    t.put("alert_acks", key, r.pack_alert_ack(a))
    return t.done(Outcome.APPLIED, decision_id=a.decision_id)


def _decision(t: _Part, d: e.Decision) -> ApplyResult:
    # Kept when the device is removed, like the ledger: the history of
    # what was decided. A re-proposal with the same bytes changes nothing.
    t.device(d.device_id)
    key, value = d.decision_id.encode(), r.pack_decision(d)
    old = t.get("decisions", key)
    ids = {"device_id": d.device_id, "command_id": d.command_id, "decision_id": d.decision_id}
    if old is not None:
        if old == value:
            return t.done(Outcome.UNCHANGED, **ids)
        raise Rejected("decision_exists", d.decision_id)
    t.put("decisions", key, value)
    t.put("decisions_by_device", r.dev_key(r.dev_prefix(d.device_id), d.at_ms) + key, b"")
    return t.done(Outcome.APPLIED, **ids)


def _prune(t: _Part, pr: e.Prune) -> ApplyResult:
    # A retention step: the same records go on every replica, because the
    # cut-offs and the budget are in the entry and the walk is in key order.
    budget = rollups.Budget(pr.max_records)
    removed = changed = 0
    for d in pr.devices:
        if budget.left <= 0:
            break
        if t.get("devices", d.device_id.encode()) is None:
            continue  # removed since the leader looked: nothing of it is left
        before = rollups.cutoffs(t.txn, t.dbs, d.device_id)
        removed += rollups.prune_device(
            t.txn, t.dbs, d.device_id, d.raw_before_ms, d.rollup_before_ms, budget
        )
        changed += before != rollups.cutoffs(t.txn, t.dbs, d.device_id)
    outcome = Outcome.APPLIED if removed or changed else Outcome.UNCHANGED
    return t.done(outcome, removed=removed)


def _talk(t: _Part, entry: e.TalkEntry) -> ApplyResult:
    # Invitations and conversations: hub/state/invites.py, hub/state/threads.py.
    fields: dict[str, Any] = {}
    if isinstance(entry, e.Invite):
        changed = invites.apply_invite(t.txn, t.dbs, entry)
        fields["user"] = entry.name
    elif isinstance(entry, e.AcceptInvite):
        changed, fields["user"] = invites.apply_accept(t.txn, t.dbs, entry)
    elif isinstance(entry, e.PostMessage):
        changed, fields["message_seq"] = threads.apply_post(t.txn, t.dbs, entry)
        fields["user"] = entry.user
    elif isinstance(entry, e.MarkThread):
        changed = threads.apply_mark(t.txn, t.dbs, entry)
        fields["user"] = entry.user
    else:
        fields["removed"] = threads.apply_prune(t.txn, t.dbs, entry)
        changed = fields["removed"] > 0
    return t.done(Outcome.APPLIED if changed else Outcome.UNCHANGED, **fields)


def _export(t: _Part, ex: e.Export) -> ApplyResult:
    # The cloud export's switch and cursor (hub/state/outbox.py); ``removed``:
    # outbox records still to drop after a switch-off.
    changed, left = outbox.apply_export(t.txn, t.dbs, t.index, ex)
    return t.done(Outcome.APPLIED if changed else Outcome.UNCHANGED, removed=left)


_HANDLERS: Final[dict[type[Any], Callable[[_Part, Any], ApplyResult]]] = {
    e.Batch: _batch,
    e.RegisterDevice: _register,
    e.RemoveDevice: _remove,
    e.Presence: _presence,
    e.PutCommand: _command,
    e.RecordResult: _command_result,
    e.MarkCommand: _mark,
    e.PutModel: _model,
    e.NodeInfo: _node_put,
    e.RemoveNode: _node_remove,
    e.DrainNode: _node_drain,
    e.SetPolicy: _set_policy,
    e.Decision: _decision,
    e.ModelVersion: _model_version,
    e.AckAlert: _ack_alert,
    e.User: _user_put,
    e.RemoveUser: _user_remove,
    e.RevokeTokens: _revoke_tokens,
    e.Prune: _prune,
    e.Export: _export,
    **{cls: _talk for cls in e.TALK_ENTRIES},
}
