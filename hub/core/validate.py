"""Validation of the hub's TOML files: the hub config, its ``[rules]`` and
``[guard]`` tables and rules files are all read through this module.

A validator takes a raw TOML value and returns the clean one, or raises
ValueError saying what was expected (``Invalid`` when the problem lies inside
the value, so that the message can name ``raft.peers[1]`` or
``guard.cooldown_s.relay.set``). Validators combine: ``list_of(address)`` is a
list of addresses, ``table_of(scalar)`` a table of parameter values, and a
``Schema`` declares a whole table, a validator per key, read into a frozen
dataclass::

    COMMANDS = Schema(CommandsConfig, {
        "retry_ms": int_range(100, 600_000),
        "deadline_s": int_range(1, 7 * 86_400),
    })
    commands = COMMANDS.load(source, "commands", doc.get("commands"))

A key absent from its table takes the default of the dataclass field it
fills, so a default is written once, in the dataclass; a field without one
makes its key required. A ``Schema`` is itself a validator (of a table inside
a value): ``list_of(SWITCH_OFF)`` reads an array of tables.

A ``Table`` is one table of a file: it refuses unknown keys (with a hint),
reads each key with a validator and turns any complaint into one
``ConfigError`` that names the file, the full key and what was expected,
never a traceback::

    hub.toml: raft.peers[1]: expected host:port with a port in 1..65535, got 'localhost'

Paths are relative to the file: a ``Path`` that a validator returns for a key
of a file's table (``path``, ``list_of(path)``) is joined to the file's folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, cast
from zoneinfo import ZoneInfo

from protocol.messages import ParamValue

T = TypeVar("T")
R = TypeVar("R")
Check = Callable[[Any], Any]

_HOST_PORT: Final = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})")
_MQTT_URL: Final = re.compile(r"mqtts?://[A-Za-z0-9.-]+:\d{1,5}")
_RATE: Final = re.compile(r"\s*([0-9]+)\s*/\s*(s|min|h)\s*")
_RATE_UNITS: Final = {"s": 3600, "min": 60, "h": 1}  # -> tokens per hour
_HHMM: Final = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


# -- errors ------------------------------------------------------------------------------


def shown(text: str) -> str:
    """``text`` as a message shows it: control characters (a newline in a key
    or a file name) escaped, so that the message stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def key_path(prefix: str, *parts: str | int) -> str:
    """A full key as messages show it: ``key_path("guard", "switch_off", 0,
    "action")`` is ``guard.switch_off[0].action``."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out


class ConfigError(ValueError):
    """A config file that cannot be used: names the file, the key and the problem.
    ``source`` and ``key`` are kept as given; the message shows them with
    ``shown``."""

    def __init__(self, source: Path | str, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        self.problem = problem
        where = f"{shown(self.source)}: {shown(key)}: " if key else f"{shown(self.source)}: "
        super().__init__(where + problem)


class Invalid(ValueError):
    """A value a validator refuses: ``problem`` says what was expected, and
    ``path`` where inside the value (keys and list indexes; empty: the value
    itself)."""

    def __init__(self, problem: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path

    @classmethod
    def inside(cls, exc: ValueError, *where: str | int) -> Invalid:
        """``exc`` seen from further out: ``where`` is put before its path."""
        path = exc.path if isinstance(exc, Invalid) else ()
        return cls(str(exc), (*where, *path))


def did_you_mean(word: str, choices: Sequence[str], form: str = "{!r}") -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    hint = difflib.get_close_matches(word, choices, 1)
    return f" (did you mean {form.format(hint[0])}?)" if hint else ""


# -- files -------------------------------------------------------------------------------


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file; Invalid saying why not (``what`` names the file)."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise Invalid(f"cannot read {what}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{what} is not UTF-8 text") from None
    except ValueError as exc:  # a NUL byte in the name
        raise Invalid(f"cannot read {what}: {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file otherwise."""
    try:
        return tomllib.loads(read_text(path, "the file"))
    except Invalid as exc:
        raise ConfigError(path, "", exc.problem) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None


# -- tables ------------------------------------------------------------------------------


class _Required(enum.Enum):
    REQUIRED = "required"


REQUIRED: Final = _Required.REQUIRED


class Table:
    """One TOML table: unknown keys refused, each key read with a validator.

    ``source`` is the file: errors are ConfigError naming it and the full key
    (``name.key``). A table inside a value (an item of an array of tables)
    has none: its errors are Invalid with the key as their path, for the
    table around it to name."""

    def __init__(
        self, source: Path | str | None, name: str, raw: Any, known: Sequence[str]
    ) -> None:
        self.source = source
        self.name = name
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            header = f" [{name}]" if name and "[" not in name else ""
            raise self._error((), f"expected a table{header}, got {raw!r}")
        self.raw: dict[str, Any] = raw
        for key in raw:
            if key not in known:
                raise self.error(key, "unknown key" + did_you_mean(key, known))

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def key(self, key: str) -> str:
        """The full key, as errors name it."""
        return key_path(self.name, key)

    def error(self, key: str, problem: str, *inside: str | int) -> ValueError:
        """The error to raise for ``key`` (at ``inside`` within its value)."""
        return self._error((key, *inside), problem)

    def _error(self, path: tuple[str | int, ...], problem: str) -> ValueError:
        if self.source is None:
            return Invalid(problem, path)
        return ConfigError(self.source, key_path(self.name, *path), problem)

    def get(self, key: str, check: Callable[[Any], T], default: T | _Required = REQUIRED) -> T:
        """``check`` of the key's value; ``default`` when the key is absent
        (REQUIRED: the key must be there)."""
        if key not in self.raw:
            if isinstance(default, _Required):
                raise self.error(key, "required key is missing")
            return default
        try:
            value = check(self.raw[key])
        except ValueError as exc:
            inside = exc.path if isinstance(exc, Invalid) else ()
            raise self.error(key, str(exc), *inside) from None
        return self._relative(value)

    def optional(self, key: str, check: Callable[[Any], T]) -> T | None:
        return self.get(key, check) if key in self.raw else None

    def _relative(self, value: T) -> T:
        if self.source is None:
            return value
        folder = Path(self.source).parent
        if isinstance(value, Path):
            return cast(T, folder / value)
        if isinstance(value, tuple) and value and all(isinstance(v, Path) for v in value):
            return cast(T, tuple(folder / v for v in value))
        return value


@dataclass(frozen=True, slots=True)
class Key:
    """A key whose value fills a record field of another name."""

    field: str
    check: Check


class Schema(Generic[R]):
    """A table declared once: a validator per key, read into ``record`` (a
    dataclass).

    ``keys`` maps each key to its validator, or to a ``Key`` when its field
    has another name (``cooldown_s`` filling ``cooldown_ms``). ``others`` are
    keys the table may have that the caller reads itself (one that needs
    another key's value, a file, ...). A key absent from the table takes its
    field's default; a field with none makes the key required, unless the
    caller gives the field's value."""

    def __init__(
        self, record: type[R], keys: Mapping[str, Check | Key], others: Sequence[str] = ()
    ) -> None:
        self.record = record
        self.fields = {k: v if isinstance(v, Key) else Key(k, v) for k, v in keys.items()}
        self.known: tuple[str, ...] = (*keys, *others)
        self._defaults = {
            f.name
            for f in dataclasses.fields(cast(Any, record))
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        }

    def table(self, source: Path | str | None, name: str, raw: Any, /) -> Table:
        return Table(source, name, raw, self.known)

    def read(self, table: Table, **given: Any) -> R:
        """The record of ``table`` (made by ``table``); ``given`` fills the
        fields that no key of the schema does."""
        values = dict(given)
        for key, k in self.fields.items():
            if key in table:
                values[k.field] = table.get(key, k.check)
            elif k.field not in values and k.field not in self._defaults:
                raise table.error(key, "required key is missing")
        return self.record(**values)

    def load(self, source: Path | str | None, name: str, raw: Any, /, **given: Any) -> R:
        return self.read(self.table(source, name, raw), **given)

    def __call__(self, raw: Any) -> R:
        """The schema as a validator of a table inside a value."""
        return self.load(None, "", raw)


# -- validators --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def address(value: Any) -> Address:
    """host:port, with a port in 1..65535 (IPv6 hosts in brackets)."""
    m = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    port = int(m.group(2) or m.group(4)) if m else 0
    if m is None or not 1 <= port <= 65535:
        raise ValueError(f"expected host:port with a port in 1..65535, got {value!r}")
    return Address(m.group(1) or m.group(3), port)


def mqtt_url(value: Any) -> str:
    """mqtt://host:port or mqtts://host:port."""
    if not isinstance(value, str) or not _MQTT_URL.fullmatch(value):
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {value!r}")
    address(value.split("://", 1)[1])
    return value


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    """An integer in lo..hi (not a boolean)."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer in {lo}..{hi}, got {value!r}")
        return value

    return check


def finite(value: Any) -> float:
    """A finite number (an integer or a float, not a boolean), as a float."""
    if not isinstance(value, bool) and isinstance(value, int | float):
        with contextlib.suppress(OverflowError):  # an integer beyond any float
            if math.isfinite(got := float(value)):
                return got
    raise ValueError(f"expected a finite number, got {value!r}")


def number(lo: float, hi: float) -> Callable[[Any], float]:
    """A finite number in lo..hi, as a float."""

    def check(value: Any) -> float:
        with contextlib.suppress(ValueError):
            if lo <= (got := finite(value)) <= hi:
                return got
        raise ValueError(f"expected a number in {lo:g}..{hi:g}, got {value!r}")

    return check


def duration_ms(max_s: int) -> Callable[[Any], int]:
    """Seconds in 0..max_s (an integer or a float), as whole milliseconds."""
    seconds = number(0, max_s)

    def check(value: Any) -> int:
        return round(seconds(value) * 1000)

    return check


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    """A string that ``pattern`` matches whole; ``what`` describes it."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def string(value: Any) -> str:
    """Any string, the empty one included."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def path(value: Any) -> Path:
    """A file or folder name (relative to the file it is written in)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a path, got {value!r}")
    return Path(value)


def list_of(check: Callable[[Any], T], what: str = "a list") -> Callable[[Any], tuple[T, ...]]:
    """A list whose every item ``check`` takes; an error names the item (``[2]``)."""

    def read(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected {what}, got {value!r}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(check(item))
            except ValueError as exc:
                raise Invalid.inside(exc, i) from None
        return tuple(out)

    return read


def table_of(check: Callable[[Any], T], what: str = "a table") -> Callable[[Any], dict[str, T]]:
    """A table whose every value ``check`` takes; an error names the key."""

    def read(value: Any) -> dict[str, T]:
        if not isinstance(value, dict):
            raise ValueError(f"expected {what}, got {value!r}")
        out = {}
        for key, item in value.items():
            try:
                out[key] = check(item)
            except ValueError as exc:
                raise Invalid.inside(exc, key) from None
        return out

    return read


def globs(value: Any) -> tuple[str, ...]:
    """A non-empty list of non-empty glob strings (fnmatch: * ? [...]); one
    string stands for a list of it."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of device id globs like ['plug-*'], got {value!r}")
    return tuple(value)


def rate(value: Any) -> int:
    """'N/s', 'N/min' or 'N/h' -> tokens per hour."""
    m = _RATE.fullmatch(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"expected a rate like '6/min' (N/s, N/min, N/h, N >= 1), got {value!r}")
    per_hour = int(m.group(1)) * _RATE_UNITS[m.group(2)]
    if per_hour > 10**9:
        raise ValueError(f"rate {value!r} is too high (at most 10^9 per hour)")
    return per_hour


def time_zone(value: Any) -> tzinfo:
    """An IANA time zone name."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an IANA time zone like 'Europe/Berlin', got {value!r}")
    if value == "UTC":
        return UTC
    try:
        return ZoneInfo(value)
    except Exception:  # ZoneInfoNotFoundError, ValueError for malformed keys, ...
        raise ValueError(f"unknown time zone {value!r}") from None


def hhmm(value: Any) -> int:
    """A time of day "HH:MM" -> minutes after midnight."""
    m = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"expected HH:MM (00:00..23:59), got {value!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def time_window(value: Any) -> tuple[int, int]:
    """["HH:MM", "HH:MM"], start and end differing -> their minutes after midnight."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f'expected ["HH:MM", "HH:MM"], got {value!r}')
    start, end = hhmm(value[0]), hhmm(value[1])
    if start == end:
        raise ValueError(f"an empty window {value!r}: start and end are equal")
    return start, end


def scalar(value: Any) -> ParamValue:
    """A parameter value: a boolean, an integer, a finite float or a string."""
    if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError(f"expected a boolean, number or string, got {value!r}")


_PARAMS: Final = table_of(scalar, "a table like { on = false }")


def params(value: Any) -> tuple[tuple[str, ParamValue], ...]:
    """A command's parameters, ``{ on = false }`` -> name and value pairs."""
    return tuple(_PARAMS(value).items())
