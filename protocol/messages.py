"""The wire messages as frozen dataclasses, the form the hub and tools use.

Field names and meanings follow ``protocol/aiot.fbs`` exactly; read the
comments there. ``to_dict`` gives the form that ``flatc --json
--defaults-json`` prints (snake_case keys, enums by name), which tests use to
compare the codecs with flatc.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


class ParamKind(enum.IntEnum):
    Int = 0
    Float = 1
    Bool = 2
    Text = 3


class CommandStatus(enum.IntEnum):
    ACCEPTED = 0
    DONE = 1
    FAILED = 2
    REJECTED = 3
    EXPIRED = 4


class Reason(enum.IntEnum):
    NONE = 0
    BAD_SIGNATURE = 1
    STALE_TERM = 2
    DUPLICATE = 3
    OUT_OF_ORDER = 4
    DEADLINE_PASSED = 5
    UNKNOWN_ACTION = 6
    BAD_PARAM = 7
    PARAM_OUT_OF_BOUNDS = 8
    EXECUTION_ERROR = 9
    BUSY = 10
    WRONG_DEVICE = 11
    MALFORMED = 12


class LinkState(enum.IntEnum):
    OFFLINE = 0
    ONLINE = 1


class PayloadType(enum.IntEnum):
    """Union tags of ``Envelope.payload`` (0 is NONE and never valid)."""

    TelemetryBatch = 1
    CommitAck = 2
    Command = 3
    CommandResult = 4
    DeviceStatus = 5


@dataclass(frozen=True, slots=True)
class Reading:
    sensor: int
    offset_ms: int
    value: float


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    device_id: str
    boot_epoch: int
    first_seq: int
    base_ts_ms: int
    readings: tuple[Reading, ...]
    lost_before: int = 0  # see aiot.fbs

    @property
    def last_seq(self) -> int:
        """Sequence number of the last reading (first_seq - 1 when empty)."""
        return self.first_seq + len(self.readings) - 1


@dataclass(frozen=True, slots=True)
class CommitAck:
    device_id: str
    watermark: int
    hub_time_ms: int


ParamValue = int | float | bool | str


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    value: ParamValue

    @property
    def kind(self) -> ParamKind:
        if isinstance(self.value, bool):
            return ParamKind.Bool
        if isinstance(self.value, int):
            return ParamKind.Int
        if isinstance(self.value, float):
            return ParamKind.Float
        return ParamKind.Text


@dataclass(frozen=True, slots=True)
class Command:
    command_id: str
    device_id: str
    seq: int
    term: int
    action: str
    params: tuple[Param, ...] = ()
    issued_at_ms: int = 0
    deadline_ms: int = 0


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    device_id: str
    seq: int
    status: CommandStatus
    reason: Reason = Reason.NONE
    detail: str = ""
    executed_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    kind: ParamKind
    min: float = 0.0
    max: float = 0.0


@dataclass(frozen=True, slots=True)
class Capability:
    action: str
    params: tuple[ParamSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    state: LinkState = LinkState.ONLINE
    firmware: str = ""
    boot_epoch: int = 0
    uptime_s: int = 0
    free_heap: int = 0
    buffer_fill_permille: int = 0
    unacked: int = 0
    dropped: int = 0
    reconnects: int = 0
    hub_index: int = 0
    capabilities: tuple[Capability, ...] = field(default=())


Message = TelemetryBatch | CommitAck | Command | CommandResult | DeviceStatus

PAYLOAD_TYPES: dict[type[Any], PayloadType] = {
    TelemetryBatch: PayloadType.TelemetryBatch,
    CommitAck: PayloadType.CommitAck,
    Command: PayloadType.Command,
    CommandResult: PayloadType.CommandResult,
    DeviceStatus: PayloadType.DeviceStatus,
}


def _float(value: float) -> float | str:
    # flatc prints non-finite doubles as the bare words nan / inf / -inf,
    # which the tests read back as strings.
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def param_to_dict(p: Param) -> dict[str, Any]:
    kind = p.kind
    return {
        "name": p.name,
        "kind": kind.name,
        "int_value": int(p.value) if kind in (ParamKind.Int, ParamKind.Bool) else 0,
        "float_value": _float(float(p.value)) if kind is ParamKind.Float else 0.0,
        **({"text_value": p.value} if kind is ParamKind.Text else {}),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Param):
        return param_to_dict(value)
    if isinstance(value, enum.IntEnum):
        return value.name
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


def to_dict(msg: Message) -> dict[str, Any]:
    """The envelope as ``flatc --json --strict-json --defaults-json`` shows it,
    except that absent strings and vectors, which flatc leaves out, show here
    as "" and [].

    Dataclass fields are declared in schema order, so the keys come out in
    the order flatc prints them.
    """
    return {"payload_type": PAYLOAD_TYPES[type(msg)].name, "payload": _jsonable(msg)}


def _enum(cls: type[enum.IntEnum], value: Any) -> Any:
    return cls[value] if isinstance(value, str) else cls(value)


def _num(value: Any) -> float:
    return float(value)  # also takes flatc's "nan" / "inf" words


def param_from_dict(d: dict[str, Any]) -> Param:
    kind = _enum(ParamKind, d.get("kind", 0))
    value: ParamValue
    if kind is ParamKind.Text:
        value = d.get("text_value", "")
    elif kind is ParamKind.Float:
        value = _num(d.get("float_value", 0.0))
    elif kind is ParamKind.Bool:
        value = bool(d.get("int_value", 0))
    else:
        value = int(d.get("int_value", 0))
    return Param(d["name"], value)


def from_dict(kind: str, d: dict[str, Any]) -> Message:
    """Build a message from a payload dict keyed like aiot.fbs.

    Accepts what ``flatc --json`` prints (enums by name, defaults left out)
    and what ``edge.codec.decode`` returns (enums by number, readings as
    tuples).
    """
    if kind == "TelemetryBatch":
        readings = []
        for r in d.get("readings", ()):
            if isinstance(r, dict):
                readings.append(
                    Reading(r.get("sensor", 0), r.get("offset_ms", 0), _num(r.get("value", 0.0)))
                )
            else:
                readings.append(Reading(int(r[0]), int(r[1]), float(r[2])))
        return TelemetryBatch(
            d["device_id"],
            d.get("boot_epoch", 0),
            d.get("first_seq", 0),
            d.get("base_ts_ms", 0),
            tuple(readings),
            d.get("lost_before", 0),
        )
    if kind == "CommitAck":
        return CommitAck(d["device_id"], d.get("watermark", 0), d.get("hub_time_ms", 0))
    if kind == "Command":
        return Command(
            d["command_id"],
            d["device_id"],
            d.get("seq", 0),
            d.get("term", 0),
            d["action"],
            tuple(param_from_dict(p) for p in d.get("params", ())),
            d.get("issued_at_ms", 0),
            d.get("deadline_ms", 0),
        )
    if kind == "CommandResult":
        return CommandResult(
            d["command_id"],
            d["device_id"],
            d.get("seq", 0),
            _enum(CommandStatus, d.get("status", 0)),
            _enum(Reason, d.get("reason", 0)),
            d.get("detail", ""),
            d.get("executed_at_ms", 0),
        )
    if kind == "DeviceStatus":
        caps = tuple(
            Capability(
                c["action"],
                tuple(
                    ParamSpec(
                        s["name"],
                        _enum(ParamKind, s.get("kind", 0)),
                        _num(s.get("min", 0.0)),
                        _num(s.get("max", 0.0)),
                    )
                    for s in c.get("params", ())
                ),
            )
            for c in d.get("capabilities", ())
        )
        return DeviceStatus(
            d["device_id"],
            _enum(LinkState, d.get("state", 0)),
            d.get("firmware", ""),
            d.get("boot_epoch", 0),
            d.get("uptime_s", 0),
            d.get("free_heap", 0),
            d.get("buffer_fill_permille", 0),
            d.get("unacked", 0),
            d.get("dropped", 0),
            d.get("reconnects", 0),
            d.get("hub_index", 0),
            caps,
        )
    raise ValueError(f"unknown payload type {kind!r}")


def to_edge_fields(msg: Message) -> dict[str, Any]:
    """The dict that ``edge.codec.Encoder.message`` takes for ``msg``."""
    body: dict[str, Any] = to_dict(msg)["payload"]
    if isinstance(msg, TelemetryBatch):
        body["readings"] = [(r.sensor, r.offset_ms, r.value) for r in msg.readings]
    elif isinstance(msg, Command):
        body["params"] = [
            {
                "name": p.name,
                "kind": int(p.kind),
                "int_value": int(p.value) if p.kind in (ParamKind.Int, ParamKind.Bool) else 0,
                "float_value": float(p.value) if p.kind is ParamKind.Float else 0.0,
                "text_value": p.value if p.kind is ParamKind.Text else None,
            }
            for p in msg.params
        ]
    elif isinstance(msg, CommandResult):
        body["status"], body["reason"] = int(msg.status), int(msg.reason)
    elif isinstance(msg, DeviceStatus):
        body["state"] = int(msg.state)
        body["capabilities"] = [
            {
                "action": c.action,
                "params": [
                    {"name": s.name, "kind": int(s.kind), "min": s.min, "max": s.max}
                    for s in c.params
                ],
            }
            for c in msg.capabilities
        ]
    return body
