# The device's command executor: every command id runs at most once, across
# redelivery, hub failover and device restarts (docs/ARCHITECTURE.md invariant 3).
#
#   ex = Executor("plug-07", Hmac(key), meta, {"relay.set": set_relay, ...},
#                 now_ms=clock.now_ms)
#   result = ex.recover()              # at boot, before the first command
#   ...
#   try:
#       kind, fields = codec.decode(frame, hm)
#       result = ex.handle(fields) if kind == "Command" else None
#   except codec.CodecError as e:
#       result = ex.reject_frame(frame, e)
#   if result is not None:
#       publish("aiot/v1/plug-07/ack", ex.seal(result, encoder))
#   if ex.reboot_requested:            # only after the ack is out
#       machine.reset()
#
# Every entry point returns a CommandResult fields dict (wire values as ints,
# index into codec.STATUSES / codec.REASONS) or None.
#
# A handler takes the parameters as a dict name -> value (int, float, bool or
# str), acts, and returns an optional detail string; it raises to report a
# failure. A handler whose work ends later returns a tuple (detail,): the
# answer is ACCEPTED (the hub's ledger shows SENT) until finish(id, status,
# reason, detail) replaces it with the outcome, which survives restarts like
# any stored answer. Meanwhile finish(id, ACCEPTED, NONE, detail) makes
# further ACCEPTED answers with news, sent but not stored (the hub's ledger
# adds each new detail to the command's history).
# A handler for "reboot" is optional and must not reset the machine: the
# executor sets reboot_requested once the result is persisted.
#
# Checks, in order; "consumed" means the answer is persisted as the last
# command (last_cmd_seq = seq, highest_term raised, cmd_* = the answer), so a
# redelivery of the same command gets the same answer and never runs:
#
#   device_id is not ours        REJECTED WRONG_DEVICE        not consumed
#   command id too long to keep  REJECTED MALFORMED           not consumed
#   term < highest_term          REJECTED STALE_TERM          not consumed
#   seq <= last_cmd_seq:
#     same id and seq as stored  the stored answer (counted as a duplicate)
#     anything else              REJECTED DUPLICATE           not consumed
#   deadline set, clock unknown  REJECTED BUSY                not consumed
#   deadline passed              EXPIRED DEADLINE_PASSED      consumed
#   action not in capabilities   REJECTED UNKNOWN_ACTION      consumed
#   missing/unknown/duplicate
#     param or wrong kind        REJECTED BAD_PARAM           consumed
#   param outside min..max       REJECTED PARAM_OUT_OF_BOUNDS consumed
#   otherwise                    executed: DONE, or FAILED EXECUTION_ERROR
#
# Refusals that say nothing about the command itself (another device, an old
# leader, a replay, a forged or undecodable frame, no clock yet) change no
# state: the genuine command can still arrive and run. Refusals of the
# command's own content are final, like an execution.
#
# Execution writes metadata twice: cmd_state EXECUTING (with seq, term, id)
# before the handler runs, DONE with the result after it returns; only then
# is the result returned. A restart in between leaves EXECUTING on flash:
# recover() turns it into FAILED EXECUTION_ERROR "outcome unknown" and never
# runs the command again.
#
# Only the last consumed answer is kept (meta.py has one slot): a redelivery
# of an older command gets REJECTED DUPLICATE, not its original result.
#
# Comments instead of docstrings: they cost nothing once compiled to .mpy.

from edge import codec, const
from edge.meta import CMD_DONE, CMD_EXECUTING, MAX_STR

# CommandStatus and Reason wire values (aiot.fbs).
_ACCEPTED = const(0)
_DONE = const(1)
_FAILED = const(2)
_REJECTED = const(3)
_EXPIRED = const(4)

_NONE = const(0)
_BAD_SIGNATURE = const(1)
_STALE_TERM = const(2)
_DUPLICATE = const(3)
_DEADLINE_PASSED = const(5)
_UNKNOWN_ACTION = const(6)
_BAD_PARAM = const(7)
_PARAM_OUT_OF_BOUNDS = const(8)
_EXECUTION_ERROR = const(9)
_BUSY = const(10)
_WRONG_DEVICE = const(11)
_MALFORMED = const(12)
_N_REASONS = const(13)

# ParamKind wire values.
_INT = const(0)
_FLOAT = const(1)
_BOOL = const(2)
_TEXT = const(3)

_TAG = const(32)  # HMAC trailer
# meta.py keeps at most MAX_STR UTF-8 bytes of cmd_id and cmd_detail. A longer id
# would come back cut and no longer match its redelivery, so it is refused;
# details are clipped on a character boundary well below that.
_MAX_ID = MAX_STR
_MAX_DETAIL = const(120)
# Peeking decodes the whole envelope, which costs about the frame's size again
# in heap: frames larger than this are not peeked at (counted, unanswered).
_PEEK_MAX = const(8192)

_INTERRUPTED = "interrupted by restart; outcome unknown"
# The metadata fields of the last command (edge/meta.py).
_CMD_FIELDS = (
    "last_cmd_seq highest_term cmd_state cmd_id cmd_status cmd_reason cmd_detail cmd_executed_at_ms"
)

# The energy plug's capabilities (protocol/profiles.py is the source; a unit
# test checks this copy), in the form Encoder.message("DeviceStatus",
# {"capabilities": ...}) takes. min/max bound Int and Float values and the
# length of Text; Bool ignores them. They are written as whole numbers (the
# status message carries them as doubles either way): on the device each float
# constant would be an object in RAM.
PLUG_CAPABILITIES = [
    {"action": "relay.set", "params": [{"name": "on", "kind": _BOOL, "min": 0, "max": 1}]},
    {
        "action": "limit.set",
        "params": [{"name": "watts", "kind": _FLOAT, "min": 0, "max": 3680}],
    },
    {
        "action": "sample.set",
        "params": [{"name": "interval_ms", "kind": _INT, "min": 100, "max": 3600000}],
    },
    {"action": "reboot", "params": []},
    # Over-the-air update (edge/ota.py): url is the bundle's base URL on a
    # hub, sha256 the hex sha256 of its manifest.json, release the signed
    # release manifest (JSON) and signature its Ed25519 signature (hex),
    # checked against the keys pinned in config.json; allow_downgrade lets
    # an older release replace the running one.
    {
        "action": "ota.update",
        "params": [
            {"name": "url", "kind": _TEXT, "min": 12, "max": 200},
            {"name": "sha256", "kind": _TEXT, "min": 64, "max": 64},
            {"name": "allow_downgrade", "kind": _BOOL, "min": 0, "max": 1},
            {"name": "release", "kind": _TEXT, "min": 2, "max": 512},
            {"name": "signature", "kind": _TEXT, "min": 128, "max": 128},
        ],
    },
]


# Commands the hub cluster itself sends, outside the device's advertised
# capabilities (hub/state/entries.py SYSTEM_ACTIONS): hubs.set is the broker
# order, "host:port,host:port" (edge/hubs.py), after a membership change.
SYSTEM_CAPABILITIES = [
    {"action": "hubs.set", "params": [{"name": "hubs", "kind": _TEXT, "min": 3, "max": 480}]},
]


def _clip(s):
    # At most _MAX_DETAIL UTF-8 bytes, cut before a character, never inside.
    b = s.encode()
    if len(b) <= _MAX_DETAIL:
        return s
    end = _MAX_DETAIL
    while end > 0 and (b[end] & 0xC0) == 0x80:
        end -= 1
    return str(b[:end], "utf-8")


class Executor:
    def __init__(
        self,
        device_id,
        hmac,
        meta,
        handlers,
        capabilities=PLUG_CAPABILITIES,
        now_ms=None,
        system=(),
    ):
        # now_ms(): the hub-synced clock in ms, or None while it is not synced
        # (commands with a deadline are then refused BUSY, not consumed).
        # system: capabilities not advertised in the status (SYSTEM_CAPABILITIES
        # whose handlers the device has), run like the others.
        self.device_id = device_id
        self.hmac = hmac
        self.meta = meta
        self._now = now_ms
        for cap in capabilities + list(system):
            action = cap["action"]
            if action != "reboot" and action not in handlers:
                raise ValueError("no handler for " + action)
        self.handlers = handlers
        self.capabilities = capabilities
        self.system = system
        self.reboot_requested = False
        self.current_id = None  # command id while its handler runs
        # Counters for the status message.
        self.executed = 0  # handler calls
        self.failed = 0  # of which raised, plus commands interrupted by a restart
        self.duplicates = 0  # redeliveries answered from the stored result
        self.rejected = [0] * _N_REASONS  # REJECTED / EXPIRED answers by reason
        self.unanswered = 0  # bad frames without a readable command id
        self.persist_errors = 0  # metadata saves that raised OSError

    # -- entry points --

    def recover(self):
        # At boot. EXECUTING on flash means the device stopped between acting
        # and recording: the outcome is unknown, and the command must not run
        # again. Returns the stored result (to re-publish: the hub may have
        # missed it) or None.
        m = self.meta
        if m.cmd_state == CMD_EXECUTING:
            self._interrupted()
            return self._stored()
        if m.cmd_state == CMD_DONE:
            return self._stored()
        return None

    def handle(self, fields):
        # fields: an authenticated Command as codec.decode returns it.
        m = self.meta
        if m.cmd_state == CMD_EXECUTING:  # recover() was not called
            self._interrupted()
        cid = fields["command_id"]
        seq = fields["seq"]
        term = fields["term"]
        if fields["device_id"] != self.device_id:
            return self._refuse(fields, _REJECTED, _WRONG_DEVICE, "addressed to another device")
        if len(cid.encode()) > _MAX_ID:
            return self._refuse(fields, _REJECTED, _MALFORMED, "command id too long")
        if term < m.highest_term:
            return self._refuse(
                fields, _REJECTED, _STALE_TERM, "term %d below %d" % (term, m.highest_term)
            )
        if seq <= m.last_cmd_seq:
            if cid == m.cmd_id and seq == m.last_cmd_seq:
                self.duplicates += 1
                return self._stored()
            return self._refuse(
                fields, _REJECTED, _DUPLICATE, "seq %d not above %d" % (seq, m.last_cmd_seq)
            )
        now = self._clock()
        deadline = fields["deadline_ms"]
        if deadline:
            if now is None:
                return self._refuse(fields, _REJECTED, _BUSY, "clock not synced")
            if now > deadline:
                return self._final(fields, _EXPIRED, _DEADLINE_PASSED, "deadline passed", now)
        action = fields["action"]
        specs = None
        for caps in (self.capabilities, self.system):
            for cap in caps:
                if cap["action"] == action:
                    specs = cap.get("params") or ()
        if specs is None:
            return self._final(fields, _REJECTED, _UNKNOWN_ACTION, "unknown action", now)
        params = self._params(specs, fields["params"])
        if isinstance(params, tuple):  # (reason, detail)
            return self._final(fields, _REJECTED, params[0], params[1], now)
        return self._execute(fields, action, params, now)

    def reject_frame(self, frame, error):
        # A down-topic frame that failed to decode (error: its CodecError).
        # Nothing in it is trusted and no state changes; if a command id can
        # still be read, the hub gets an answer for that id.
        reason = _BAD_SIGNATURE if error.reason == "bad_hmac" else _MALFORMED
        self.rejected[reason] += 1
        n = len(frame)
        fields = None
        if _TAG + 12 <= n <= _PEEK_MAX:
            try:
                kind, fields = codec.decode_envelope(memoryview(frame)[: n - _TAG])
                if kind != "Command":
                    fields = None
            except Exception:  # hostile bytes (or MemoryError) must not crash the device
                fields = None
        if fields is None or len(fields["command_id"].encode()) > _MAX_ID:
            self.unanswered += 1
            return None
        return self._answer(
            fields["command_id"], fields["seq"], _REJECTED, reason, error.reason, self._at()
        )

    def finish(self, cid, status, reason, detail):
        # The outcome of an Accepted command; None if cid is not that command
        # (already finished, or a later command was consumed since). Status
        # ACCEPTED is news of work that goes on, not an outcome: that answer
        # is returned to be sent and nothing is stored, so a redelivery still
        # gets the first one.
        m = self.meta
        if m.cmd_state != CMD_DONE or m.cmd_status != _ACCEPTED or m.cmd_id != cid:
            return None
        if status == _ACCEPTED:
            return self._answer(cid, m.last_cmd_seq, _ACCEPTED, _NONE, _clip(detail), self._at())
        if status == _FAILED:
            self.failed += 1
        m.cmd_status = status
        m.cmd_reason = reason
        m.cmd_detail = _clip(detail)
        m.cmd_executed_at_ms = self._at()
        self._save()
        return self._stored()

    def seal(self, result, encoder):
        # The signed CommandResult frame (a memoryview into encoder's buffer).
        encoder.message("CommandResult", result)
        return encoder.seal(self.hmac)

    def stats(self):
        rejected = {}
        names = codec.REASONS
        for i in range(_N_REASONS):
            if self.rejected[i]:
                rejected[names[i]] = self.rejected[i]
        return {
            "executed": self.executed,
            "failed": self.failed,
            "duplicates": self.duplicates,
            "rejected": rejected,
            "unanswered": self.unanswered,
            "persist_errors": self.persist_errors,
        }

    # -- internals --

    def _clock(self):
        return None if self._now is None else self._now()

    def _at(self):
        now = self._clock()
        return 0 if now is None else now

    def _answer(self, cid, seq, status, reason, detail, at):
        return {
            "command_id": cid,
            "device_id": self.device_id,
            "seq": seq,
            "status": status,
            "reason": reason,
            "detail": detail,
            "executed_at_ms": at,
        }

    def _stored(self):
        m = self.meta
        return self._answer(
            m.cmd_id,
            m.last_cmd_seq,
            m.cmd_status,
            m.cmd_reason,
            m.cmd_detail,
            m.cmd_executed_at_ms,
        )

    def _refuse(self, fields, status, reason, detail):
        # A refusal that is not consumed: no state changes.
        self.rejected[reason] += 1
        return self._answer(fields["command_id"], fields["seq"], status, reason, detail, self._at())

    def _final(self, fields, status, reason, detail, now):
        # A refusal that is consumed, like an execution.
        self.rejected[reason] += 1
        return self._record(
            fields["command_id"],
            fields["seq"],
            fields["term"],
            status,
            reason,
            detail,
            0 if now is None else now,
        )

    def _save(self):
        try:
            self.meta.save()
        except OSError:
            # The answer stands; after a restart the command is judged again
            # from the older copy (an execution then reads "outcome unknown").
            self.persist_errors += 1

    def _consume(self, cid, seq, term, state, status, reason, detail, at):
        # Make this command the last one in the metadata (not yet saved).
        m = self.meta
        m.last_cmd_seq = seq
        if term > m.highest_term:
            m.highest_term = term
        m.cmd_state = state
        m.cmd_id = cid
        m.cmd_status = status
        m.cmd_reason = reason
        m.cmd_detail = _clip(detail)
        m.cmd_executed_at_ms = at

    def _record(self, cid, seq, term, status, reason, detail, at):
        self._consume(cid, seq, term, CMD_DONE, status, reason, detail, at)
        self._save()
        return self._stored()

    def _interrupted(self):
        m = self.meta
        m.cmd_state = CMD_DONE
        m.cmd_status = _FAILED
        m.cmd_reason = _EXECUTION_ERROR
        m.cmd_detail = _INTERRUPTED
        self.failed += 1
        self._save()

    def _params(self, specs, given):
        # specs: the action's param dicts from the capability table.
        # -> dict name -> value, or (reason, detail). Shape and kinds first,
        # then bounds, so BAD_PARAM wins over PARAM_OUT_OF_BOUNDS.
        out = {}
        for p in given:
            name = p["name"]
            spec = None
            for s in specs:
                if s["name"] == name:
                    spec = s
                    break
            if spec is None:
                return (_BAD_PARAM, _clip("unknown param " + name))
            if name in out:
                return (_BAD_PARAM, "param %s given twice" % name)
            kind = p["kind"]
            want = spec.get("kind", 0)
            if kind != want:
                return (_BAD_PARAM, "param %s must be %s" % (name, codec.PARAM_KINDS[want]))
            if kind == _INT:
                v = p["int_value"]
            elif kind == _FLOAT:
                v = p["float_value"]
            elif kind == _BOOL:
                v = p["int_value"]
                if v != 0 and v != 1:
                    return (_BAD_PARAM, "param %s is not 0 or 1" % name)
                v = v == 1
            else:
                v = p["text_value"]
            out[name] = v
        for s in specs:
            if s["name"] not in out:
                return (_BAD_PARAM, "missing param " + s["name"])
        for s in specs:
            kind = s.get("kind", 0)
            if kind == _BOOL:
                continue
            v = out[s["name"]]
            if kind == _TEXT:
                v = len(v)
            # Written so that NaN fails too.
            if not (s.get("min", 0.0) <= v <= s.get("max", 0.0)):
                return (_PARAM_OUT_OF_BOUNDS, "param %s out of bounds" % s["name"])
        return out

    def _execute(self, fields, action, params, now):
        m = self.meta
        cid = fields["command_id"]
        seq = fields["seq"]
        term = fields["term"]
        names = _CMD_FIELDS.split()
        before = [getattr(m, k) for k in names]
        # 1. Persist the intent before acting.
        at = 0 if now is None else now
        self._consume(cid, seq, term, CMD_EXECUTING, _ACCEPTED, _NONE, "", at)
        try:
            m.save()
        except OSError:
            # Without a record the command must not run; nothing is consumed.
            for i in range(len(names)):
                setattr(m, names[i], before[i])
            self.persist_errors += 1
            return self._refuse(fields, _REJECTED, _BUSY, "cannot persist state")
        # 2. Act. Anything but an Exception (a restart, KeyboardInterrupt)
        # leaves EXECUTING on flash for recover().
        status = _DONE
        reason = _NONE
        detail = ""
        handler = self.handlers.get(action)
        self.executed += 1
        self.current_id = cid
        try:
            if handler is not None:
                got = handler(params)
                if type(got) is tuple:  # work that ends later: see finish()
                    status = _ACCEPTED
                    detail = got[0]
                elif got:
                    detail = str(got)
        except Exception as e:
            status = _FAILED
            reason = _EXECUTION_ERROR
            detail = str(e) or type(e).__name__
            self.failed += 1
        finally:
            self.current_id = None
        # 3. Record the result, then hand it out.
        result = self._record(cid, seq, term, status, reason, detail, self._at())
        if action == "reboot" and status == _DONE:
            self.reboot_requested = True
        return result
