"""The guard: every proposed command is checked here before it enters the ledger.

Whatever proposes a command (a rule, the ONNX tier, the LLM, an operator
through the API or the CLI), the caller asks the guard first and proposes
only what it allows, with the parameters it hands back::

    guard = Guard(load_guard(Path("hub.toml")))
    verdict = guard.check(Proposal("plug-7", "relay.set", {"on": False}, "rules"),
                          device, now_ms)
    if verdict.recorded:                  # blocked or modified: store the record
        provenance.append(verdict.to_dict())
    if verdict.allowed:
        propose(verdict.command(command_id, term, now_ms, now_ms + deadline_ms))

Checks, in this order; the first that fails decides the verdict:

    origin is one of ORIGINS                      blocked bad_origin
    device is registered                          blocked unknown_device
    action is in the device's capabilities        blocked unknown_action
    an operator-only action (ota.update) comes
      from an operator                            blocked operator_only
    params: every given name is in the spec       blocked unknown_param
            no name given twice                   blocked duplicate_param
            each value of the spec's kind         blocked bad_kind
            every spec name given                 blocked missing_param
            Int/Float within min..max,
            Text length within min..max           blocked out_of_bounds, or
                                                  modified clamped (out_of_bounds = "clamp")
    a critical device is not switched off         blocked critical_interlock
      unless origin operator with approved=True
    no same action on the device within its
      cooldown (approved operator: exempt)        blocked cooldown
    a token in the device's bucket                blocked rate_device
    a token in the hub's bucket                   blocked rate_total

Bounds are the device's own (``edge/executor.py``): Int and Float values
must lie in min..max, Text lengths too, Bool ignores them. Clamping applies
to Int and Float only; a value with no valid neighbour (NaN, infinity, empty
range, a Text) is blocked even when clamping. Tokens and cooldowns are taken
only by commands that pass every check, so a blocked command costs nothing.

Time is injected (``now_ms``), never read from a clock: give it one clock
that does not step back (the daemon's wall clock in ms is fine). The state
(buckets and cooldowns) is per known device and action, so it is bounded by
the registry; ``forget(device_id)`` drops a removed device's.

Critical devices are marked in the hub config (``[guard] critical``, globs on
the device id), which keeps the replicated device record unchanged.

The ``[guard]`` table of the hub config, with defaults::

    [guard]
    out_of_bounds = "block"              # block | clamp
    critical = ["fridge-*", "pump-1"]    # device id globs; default: none
    device_rate = "12/min"               # tokens per device: N/s, N/min or N/h
    device_burst = 4                     # bucket size per device
    total_rate = "600/min"               # tokens for the whole hub
    total_burst = 60
    cooldown_s = { "relay.set" = 10 }    # per device and action; default 0 (none)
    # what "switching off" means for the interlock; default:
    switch_off = [{ action = "relay.set", params = { on = false } }, { action = "reboot" }]
"""

from __future__ import annotations

import enum
import fnmatch
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hub.core.validate import (
    Key,
    Schema,
    duration_ms,
    globs,
    int_range,
    list_of,
    one_of,
    params,
    rate,
    read_toml,
    table_of,
    text,
)
from hub.state import entries as e
from protocol import messages as m
from protocol.errors import ReasonError

ORIGINS: Final = ("rules", "onnx", "llm", "operator")
# Actions no rule or model may take, whatever a rules file or an output says.
# An operator's ota.update passes here only after hub/http/routes/commands.py
# matched it to a signed firmware release (hub/decide/registry.py ota_params).
OPERATOR_ONLY: Final = frozenset({"ota.update"})

BLOCK_REASONS: Final = (
    "bad_origin",  # origin not one of ORIGINS
    "unknown_device",  # no registered device with that id
    "unknown_action",  # action not in the device's capabilities
    "operator_only",  # an action only an operator may send (firmware updates)
    "unknown_param",  # a parameter the action does not take
    "duplicate_param",  # the same parameter twice
    "bad_kind",  # a value not of the parameter's kind
    "missing_param",  # a parameter the action needs is absent
    "out_of_bounds",  # a value outside the parameter's bounds (and not clamped)
    "critical_interlock",  # switching off a critical device without operator approval
    "cooldown",  # the same action on the device within its cooldown
    "rate_device",  # the device's token bucket is empty
    "rate_total",  # the hub's token bucket is empty
)
MODIFY_REASONS: Final = ("clamped",)  # a value moved into its bounds
REASONS: Final = BLOCK_REASONS + MODIFY_REASONS

_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_TEXT_MAX_BYTES: Final = 0xFFFF  # str16 in the ledger entry
_MS_PER_HOUR: Final = 3_600_000


# -- param checks (also used by hub.rules when it binds a rule's action) ------------------


class ParamError(ReasonError, ValueError):
    """Parameters the action cannot take; ``reason`` is one of BLOCK_REASONS."""


Given = Mapping[str, object] | Sequence[m.Param]


def _pairs(given: Given) -> list[tuple[str, object]]:
    if isinstance(given, Mapping):
        return [(str(k), v) for k, v in given.items()]
    return [(p.name, p.value) for p in given]


def _kind_ok(kind: m.ParamKind, v: object) -> bool:
    if kind is m.ParamKind.Bool:
        return isinstance(v, bool)
    if kind is m.ParamKind.Int:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind is m.ParamKind.Float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if not isinstance(v, str):
        return False
    try:
        v.encode()
    except UnicodeEncodeError:  # lone surrogates: not text the ledger can carry
        return False
    return True


def show(v: object, limit: int = 60) -> str:
    """A short repr for messages, safe for anything (huge ints included)."""
    try:
        text = f"{v:g}" if isinstance(v, float) else repr(v)
    except Exception:  # int too large to print, a broken __repr__, ...
        text = f"<{type(v).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_params(
    cap: m.Capability, given: Given, clamp: bool = False
) -> tuple[tuple[m.Param, ...], tuple[str, ...]]:
    """The parameters as the ledger takes them (spec order, Float as float)
    and what clamping changed; ParamError when they cannot be used.

    ``given`` is a mapping (JSON from the LLM, the API, a rule) or Params (may
    repeat a name, which is refused as on the device)."""
    specs = {s.name: s for s in cap.params}
    pairs = _pairs(given)
    # One check at a time over all the params, so the reason does not
    # depend on the order they were given in.
    for name, _v in pairs:
        if name not in specs:
            raise ParamError("unknown_param", f"{cap.action} takes no parameter {show(name)}")
    values: dict[str, object] = {}
    for name, v in pairs:
        if name in values:
            raise ParamError("duplicate_param", f"{cap.action}: {name} given twice")
        values[name] = v
    for name, v in pairs:
        kind = specs[name].kind
        if not _kind_ok(kind, v):
            want = kind.name.lower()
            raise ParamError("bad_kind", f"{cap.action}: {name} must be {want}, got {show(v)}")
    for spec in cap.params:
        if spec.name not in values:
            raise ParamError("missing_param", f"{cap.action}: {spec.name} is required")
    out: list[m.Param] = []
    changes: list[str] = []
    for spec in cap.params:
        v = values[spec.name]
        kind = spec.kind
        where = f"{cap.action}: {spec.name}={show(v)}"
        bounds = f"{spec.min:g}..{spec.max:g}"
        if kind is m.ParamKind.Text:
            assert isinstance(v, str)
            if not spec.min <= len(v) <= spec.max or len(v.encode()) > _TEXT_MAX_BYTES:
                raise ParamError("out_of_bounds", f"{where}: length {len(v)} outside {bounds}")
        elif kind is m.ParamKind.Int:
            assert isinstance(v, int)
            lo = max(math.ceil(spec.min), _I64_MIN)
            hi = min(math.floor(spec.max), _I64_MAX)
            if not lo <= v <= hi:
                if not clamp or lo > hi:
                    raise ParamError("out_of_bounds", f"{where} outside {bounds}")
                new = lo if v < lo else hi
                changes.append(f"{spec.name} {show(v)} clamped to {new}")
                v = new
        elif kind is m.ParamKind.Float:
            assert isinstance(v, int | float)
            try:
                v = float(v)
            except OverflowError:  # an int beyond any float: no nearest valid value
                v = math.inf if v > 0 else -math.inf
            # Written so that NaN fails too.
            if not spec.min <= v <= spec.max:
                if not clamp or not math.isfinite(v) or spec.min > spec.max:
                    raise ParamError("out_of_bounds", f"{where} outside {bounds}")
                new_f = spec.min if v < spec.min else spec.max
                changes.append(f"{spec.name} {v:g} clamped to {new_f:g}")
                v = new_f
        assert isinstance(v, int | float | bool | str)
        out.append(m.Param(spec.name, v))
    return tuple(out), tuple(changes)


# -- config ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SwitchOff:
    """A command that switches a device off: the action, and the parameter
    values that make it one (all must match; none: any call of the action)."""

    action: str
    params: tuple[tuple[str, m.ParamValue], ...] = ()

    def matches(self, action: str, params: Sequence[m.Param]) -> bool:
        if action != self.action:
            return False
        given = {p.name: p.value for p in params}
        for name, want in self.params:
            got = given.get(name, _MISSING)
            if got is _MISSING or type(got) is not type(want) or got != want:
                return False
        return True


_MISSING: Final = object()

DEFAULT_SWITCH_OFF: Final = (SwitchOff("relay.set", (("on", False),)), SwitchOff("reboot"))


@dataclass(frozen=True, slots=True)
class GuardConfig:
    out_of_bounds: str = "block"  # block | clamp
    critical: tuple[str, ...] = ()  # device id globs
    device_rate_per_h: int = 12 * 60
    device_burst: int = 4
    total_rate_per_h: int = 600 * 60
    total_burst: int = 60
    cooldown_ms: Mapping[str, int] = field(default_factory=dict)  # action -> ms
    switch_off: tuple[SwitchOff, ...] = DEFAULT_SWITCH_OFF
    source: str = ""


def _sorted_params(value: Any) -> tuple[tuple[str, m.ParamValue], ...]:
    return tuple(sorted(params(value)))


SWITCH_OFF: Final = Schema(SwitchOff, {"action": text, "params": _sorted_params})
GUARD: Final = Schema(
    GuardConfig,
    {
        "out_of_bounds": one_of("block", "clamp"),
        "critical": globs,
        "device_rate": Key("device_rate_per_h", rate),
        "device_burst": int_range(1, 1_000_000),
        "total_rate": Key("total_rate_per_h", rate),
        "total_burst": int_range(1, 1_000_000),
        "cooldown_s": Key(
            "cooldown_ms", table_of(duration_ms(7 * 86_400), 'a table like { "relay.set" = 10 }')
        ),
        "switch_off": list_of(SWITCH_OFF, "a list of { action, params }"),
    },
)


def parse_guard(raw: Any, source: Path | str, name: str = "guard") -> GuardConfig:
    """Validate a ``[guard]`` table; errors name ``source`` and the full key."""
    return GUARD.load(source, name, raw, source=str(source))


def load_guard(config_path: Path) -> GuardConfig:
    """The ``[guard]`` table of a hub config file (defaults when absent)."""
    return parse_guard(read_toml(config_path).get("guard"), config_path)


# -- the guard ---------------------------------------------------------------------------


class Outcome(enum.Enum):
    ALLOWED = "allowed"
    BLOCKED = "blocked"
    MODIFIED = "modified"


@dataclass(frozen=True, slots=True)
class Proposal:
    """A command someone wants in the ledger. ``approved`` counts only with
    origin "operator": an operator's explicit confirmation."""

    device_id: str
    action: str
    params: Given = ()
    origin: str = "operator"
    approved: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer; also the record to store when it is not ALLOWED."""

    outcome: Outcome
    proposal: Proposal
    at_ms: int
    params: tuple[m.Param, ...] = ()  # what enters the ledger (not BLOCKED)
    reason: str = ""  # BLOCKED: one of BLOCK_REASONS; MODIFIED: "clamped"
    detail: str = ""
    changes: tuple[str, ...] = ()  # MODIFIED: what changed, one line each

    @property
    def allowed(self) -> bool:
        """The command may enter the ledger (with ``params``)."""
        return self.outcome is not Outcome.BLOCKED

    @property
    def recorded(self) -> bool:
        """The guard blocked or changed something: the caller stores this."""
        return self.outcome is not Outcome.ALLOWED

    def command(
        self, command_id: str, term: int, issued_at_ms: int, deadline_ms: int = 0
    ) -> e.PutCommand:
        if not self.allowed:
            raise ValueError(f"blocked command: {self.reason}")
        p = self.proposal
        return e.PutCommand(
            command_id, p.device_id, term, p.action, self.params, issued_at_ms, deadline_ms
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (values that are not JSON scalars are repr'd)."""
        p = self.proposal

        def j(v: object) -> object:
            if v is None or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 200):
                return v
            if isinstance(v, int) and _I64_MIN <= v <= _I64_MAX:
                return v
            if isinstance(v, float) and math.isfinite(v):
                return v
            return show(v, 200)

        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "detail": self.detail,
            "changes": list(self.changes),
            "at_ms": self.at_ms,
            "origin": j(p.origin),
            "approved": bool(p.approved),
            "device_id": j(p.device_id),
            "action": j(p.action),
            "given": [[j(k), j(v)] for k, v in _safe_pairs(p.params)],
            "params": {q.name: q.value for q in self.params},
        }


def _safe_pairs(given: object) -> list[tuple[object, object]]:
    try:
        if isinstance(given, Mapping):
            return list(given.items())
        if isinstance(given, Sequence) and not isinstance(given, str):
            return [(q.name, q.value) if isinstance(q, m.Param) else ("?", q) for q in given]
    except Exception:  # whatever an LLM produced, the record must still be written
        pass
    return [("?", given)]


class TokenBucket:
    """Integer token bucket: 1 token = 3_600_000 units, refilled ``per_h``
    units per ms, so N per hour is exact and the arithmetic never rounds."""

    __slots__ = ("cap", "level", "per_h", "t_ms")

    def __init__(self, per_h: int, burst: int, now_ms: int) -> None:
        self.per_h = per_h
        self.cap = burst * _MS_PER_HOUR
        self.level = self.cap
        self.t_ms = now_ms

    def refill(self, now_ms: int) -> None:
        if now_ms > self.t_ms:
            self.level = min(self.cap, self.level + (now_ms - self.t_ms) * self.per_h)
            self.t_ms = now_ms

    def ready(self) -> bool:
        return self.level >= _MS_PER_HOUR

    def take(self) -> None:
        self.level -= _MS_PER_HOUR


class Guard:
    """Checks proposals against the device's capabilities and the policy.

    Not thread-safe: one task (the leader's decision loop and the API's
    command handler, in the daemon's event loop) calls it."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._clamp = self.config.out_of_bounds == "clamp"
        pattern = "|".join(fnmatch.translate(g) for g in self.config.critical)
        self._critical = re.compile(pattern) if pattern else None
        self._buckets: dict[str, TokenBucket] = {}
        self._total: TokenBucket | None = None
        self._last: dict[tuple[str, str], int] = {}  # (device, action) -> ms of last allowed
        self.counters: Counter[str] = Counter()  # by reason: blocked and clamped
        self.checked = 0
        self.allowed = 0

    def is_critical(self, device_id: str) -> bool:
        return self._critical is not None and self._critical.fullmatch(device_id) is not None

    def forget(self, device_id: str) -> None:
        """Drop a removed device's buckets and cooldowns."""
        self._buckets.pop(device_id, None)
        for key in [k for k in self._last if k[0] == device_id]:
            del self._last[key]

    def stats(self) -> dict[str, int]:
        return {"checked": self.checked, "allowed": self.allowed, **self.counters}

    def _block(self, p: Proposal, now_ms: int, reason: str, detail: str) -> Verdict:
        self.counters[reason] += 1
        return Verdict(Outcome.BLOCKED, p, now_ms, (), reason, detail)

    def check(self, p: Proposal, device: e.Device | None, now_ms: int) -> Verdict:
        """The verdict on ``p`` for ``device`` (the registry's record, None if
        unknown) at ``now_ms``. Allowing takes a token and starts a cooldown."""
        self.checked += 1
        if not isinstance(p.origin, str) or p.origin not in ORIGINS:
            return self._block(p, now_ms, "bad_origin", f"origin {show(p.origin)}")
        if device is None or device.device_id != p.device_id:
            return self._block(p, now_ms, "unknown_device", f"no device {show(p.device_id)}")
        if p.action in e.SYSTEM_ACTIONS:  # the cluster's own (hub/link/membership.py)
            return self._block(
                p, now_ms, "unknown_action", f"{p.action} is sent by the cluster itself only"
            )
        cap = next((c for c in device.capabilities if c.action == p.action), None)
        if cap is None:
            actions = ", ".join(c.action for c in device.capabilities) or "none"
            return self._block(
                p,
                now_ms,
                "unknown_action",
                f"{p.device_id} has no action {show(p.action)} ({actions})",
            )
        if p.action in OPERATOR_ONLY and p.origin != "operator":
            return self._block(
                p, now_ms, "operator_only", f"{p.action} is for operators, not {p.origin}"
            )
        try:
            params, changes = normalize_params(cap, p.params, self._clamp)
        except ParamError as exc:
            return self._block(p, now_ms, exc.reason, exc.detail)
        except (TypeError, AttributeError) as exc:  # params of no usable shape at all
            return self._block(p, now_ms, "bad_kind", f"params: {show(exc, 200)}")
        operator_ok = p.origin == "operator" and p.approved is True
        if not operator_ok and self.is_critical(p.device_id):
            for off in self.config.switch_off:
                if off.matches(p.action, params):
                    return self._block(
                        p,
                        now_ms,
                        "critical_interlock",
                        f"{p.device_id} is critical: {p.action} switches it off; "
                        "needs an operator's approval",
                    )
        key = (p.device_id, p.action)
        cooldown = self.config.cooldown_ms.get(p.action, 0)
        last = self._last.get(key)
        if not operator_ok and cooldown and last is not None and now_ms - last < cooldown:
            return self._block(
                p,
                now_ms,
                "cooldown",
                f"{p.action} on {p.device_id} {now_ms - last} ms after the last one "
                f"(cooldown {cooldown} ms)",
            )
        bucket = self._buckets.get(p.device_id)
        if bucket is None:
            bucket = self._buckets[p.device_id] = TokenBucket(
                self.config.device_rate_per_h, self.config.device_burst, now_ms
            )
        total = self._total
        if total is None:
            total = self._total = TokenBucket(
                self.config.total_rate_per_h, self.config.total_burst, now_ms
            )
        bucket.refill(now_ms)
        total.refill(now_ms)
        if not bucket.ready():
            return self._block(p, now_ms, "rate_device", f"{p.device_id} is over its command rate")
        if not total.ready():
            return self._block(p, now_ms, "rate_total", "the hub is over its command rate")
        bucket.take()
        total.take()
        self._last[key] = now_ms
        self.allowed += 1
        if changes:
            self.counters["clamped"] += 1
            return Verdict(
                Outcome.MODIFIED, p, now_ms, params, "clamped", "; ".join(changes), changes
            )
        return Verdict(Outcome.ALLOWED, p, now_ms, params)
