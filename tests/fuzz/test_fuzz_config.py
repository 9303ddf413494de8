"""Fuzzing the hub's config loader: ``hub.config.load`` and ``parse``, and the
tables it delegates (``[rules]`` to hub/decide/rules.py, ``[guard]`` to
hub/decide/guard.py, both loaded by ``hub.engine.load`` at start).

Inputs:

- generated TOML documents: known and unknown tables and keys, values drawn
  from what each key expects (addresses, ids, modes, secrets that are good,
  short, empty, not UTF-8, a directory or missing) mixed with any TOML value
  (strings, huge integers, inf and nan, datetimes, lists, inline tables);
  written out as TOML text and loaded, and handed to ``parse`` as a document;
- a complete valid config (every table, the shipped energy rules inline and
  as a file, a guard) mutated as text: lines dropped, doubled or swapped,
  values replaced, characters and random bytes (not always UTF-8) inserted,
  truncation.

Whatever the input, the outcome is a config or ``ConfigError`` (nothing else
escapes), and the error's message is one line that starts with the file's
path and names the key when there is one (hub/core/config.py's contract: one
clear message, never a traceback).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import math
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core import config as c
from hub.core import validate as v
from hub.decide import engine
from tests.fuzz.budget import Tally, fuzz_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ENERGY = ROOT / "models" / "rules" / "energy.toml"
SECRET = "s3cret-s3cret-s3cret-s3cret"
ENV = {"AIOT_SECRET": SECRET, "AIOT_SHORT": "short", "AIOT_EMPTY": "  "}
TRUSTED = base64.b64encode(bytes(range(32))).decode()  # a valid Ed25519 public key encoding

# -- TOML text ------------------------------------------------------------------------


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(ch in text for ch in ".e") else text + ".0"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_string(k)} = {value_text(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def document_text(doc: dict[str, Any]) -> str:
    """A TOML document: bare top-level values first, then one [table] each."""
    lines = [f"{_string(k)} = {value_text(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"\n[{_string(name)}]")
            lines.extend(f"{_string(k)} = {value_text(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# -- generated documents ----------------------------------------------------------------

ints = st.one_of(
    st.sampled_from([0, -1, 1, 5, 49, 50, 64, 100, 1000, 1024, 60_000, 10**7, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
)
scalars = st.one_of(
    ints,
    st.floats(),
    st.booleans(),
    st.text(max_size=30),
    st.datetimes(),
    st.dates(),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=10), inner, max_size=4),
    ),
    max_leaves=10,
)

ADDRESSES = [
    "127.0.0.1:4321",
    "127.0.0.1:4322",
    "127.0.0.1:1883",
    "127.0.0.1:8080",
    "[::1]:80",
    "[::1:80",
    "host:0",
    "host:65536",
    "host:99999",
    "localhost",
    "a:1",
    ":80",
    "a b:1",
]
PLAUSIBLE: dict[str, list[Any]] = {
    "id": ["hub-1", "", "hub/1", "h" * 64, "h" * 65, "é", "-x", ".x"],
    "data_dir": ["data/hub-1", "", ".", "/", "a\x00b", "x" * 300],
    "bind": ADDRESSES,
    "advertise": ADDRESSES,
    "peers": [[], ["127.0.0.1:4322"], ["127.0.0.1:4321"], ["a:1", "a:1"], ["nope"], "a:1", [5]],
    "secret_file": [
        "cluster.secret",
        "short.secret",
        "empty.secret",
        "binary.secret",
        "dir.secret",
        "missing.secret",
        "../cluster.secret",
        "/dev/null",
        "a\x00b",
        "",
        "x" * 5000,
    ],
    "secret_env": ["AIOT_SECRET", "AIOT_SHORT", "AIOT_EMPTY", "AIOT_UNSET", "1BAD", "", "A=B"],
    "mode": ["mosquitto", "embedded", "external", "rabbit", ""],
    "url": ["mqtt://10.0.0.5:1883", "mqtts://b:8883", "http://x:1", "mqtt://x", "mqtt://x:99999"],
    "level": ["debug", "info", "warning", "error", "loud"],
    "format": ["json", "text", "xml"],
    "trusted_keys": [[TRUSTED], [""], ["!!!"], [base64.b64encode(b"x" * 31).decode()], [5], "k"],
    "dir": ["models", "", "/tmp"],
    "shipped_dir": [".", "/tmp", "missing", "cluster.secret", "", "a\x00b"],
    "enabled": [True, False, "yes"],
}
PLAUSIBLE_RULES: dict[str, list[Any]] = {
    "id": ["r-1", "", "r 1", "x" * 200],
    "description": ["over the limit", ""],
    "enabled": [True, False, 1],
    "devices": [["plug-*"], [], "plug-*", [""], ["[["]],
    "owner": ["bench", ""],
    "sensor": ["power_w", "energy_wh", "voltage_v", 0, 7, "nope"],
    "above": ["limit", 1500.0, -1.0, math.inf, math.nan, "x", True],
    "below": ["limit", 10.0, math.nan],
    "hysteresis": [0.0, 50.0, -5.0, math.inf],
    "for_s": [0, 10, -1, 10**12, 0.5],
    "max_gap_s": [0, 30, -1],
    "between": [["23:00", "06:00"], ["25:00", "06:00"], ["23:00"], "23:00-06:00", ["a", "b"]],
    "timezone": ["UTC", "Europe/Berlin", "Mars/Base", "", "../../etc/passwd"],
    "cooldown_s": [0, 300, -1, 1e300],
    "action": ["relay.set", "alert", "notify", "", "reboot", "ota.update"],
    "params": [{"on": False}, {"watts": 1500.0}, {}, {"on": [1]}, "on"],
    "alert": [True, False, "yes"],
}
PLAUSIBLE_GUARD: dict[str, list[Any]] = {
    "out_of_bounds": ["block", "clamp", "ignore"],
    "critical": [["fridge-*"], [], "pump", [5]],
    "device_rate": ["12/min", "1/s", "5/h", "0/min", "-1/min", "x/min", "12/day", 12],
    "device_burst": [4, 0, -1, 10**9],
    "total_rate": ["600/min", "1e9/s", ""],
    "total_burst": [60, 0, -5],
    "cooldown_s": [{"relay.set": 10, "reboot": 600}, {"relay.set": -1}, {"x": "y"}, 5],
    "switch_off": [
        [{"action": "relay.set", "params": {"on": False}}, {"action": "reboot"}],
        [{"action": ""}],
        [{"params": {}}],
        [5],
        {"action": "reboot"},
    ],
}
PLAUSIBLE_FILES: list[Any] = [
    ["energy.toml"],
    ["missing.toml"],
    ["dir.secret"],
    ["binary.secret"],
    ["a\x00b"],
    [""],
    "x",
    [5],
]
KNOWN: dict[str, tuple[str, ...]] = {
    **c._KNOWN,
    "rules": ("timezone", "files", "rule"),
    "guard": tuple(PLAUSIBLE_GUARD),
}


def _value(data: st.DataObject, pool: dict[str, list[Any]], key: str) -> Any:
    if key in pool and data.draw(st.integers(0, 3), label="plausible") > 0:
        return data.draw(st.sampled_from(pool[key]), label=key)
    return data.draw(st.one_of(ints, toml_values), label=key)


def _table(
    data: st.DataObject, keys: tuple[str, ...], pool: dict[str, list[Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in keys:
        if data.draw(st.integers(0, 2), label=f"has {key}") > 0:
            out[key] = _value(data, pool, key)
    if data.draw(st.integers(0, 9), label="unknown key") == 0:
        out[data.draw(st.text(max_size=12), label="unknown")] = data.draw(toml_values)
    return out


def random_document(data: st.DataObject) -> dict[str, Any]:
    """A document built from scratch: known tables, keys and values at random."""
    doc: dict[str, Any] = {}
    for name, keys in KNOWN.items():
        required = name in ("node", "raft")
        if not required and data.draw(st.integers(0, 2), label=f"has [{name}]") > 0:
            continue
        if name == "rules":
            pool = {"timezone": PLAUSIBLE_RULES["timezone"], "files": PLAUSIBLE_FILES}
            table = _table(data, ("timezone", "files"), pool)
            if data.draw(st.booleans(), label="rules"):
                table["rule"] = [
                    _table(data, tuple(PLAUSIBLE_RULES), PLAUSIBLE_RULES)
                    for _ in range(data.draw(st.integers(0, 3), label="rules"))
                ]
        else:
            table = _table(data, keys, PLAUSIBLE_GUARD if name == "guard" else PLAUSIBLE)
        # Now and then a table is not a table.
        if data.draw(st.integers(0, 19), label="not a table") == 0:
            doc[name] = data.draw(scalars)
        else:
            doc[name] = table
    if data.draw(st.integers(0, 9), label="unknown table") == 0:
        doc[data.draw(st.text(max_size=12), label="table name")] = {}
    return doc


# -- a valid config, mutated as text -------------------------------------------------------

VALID = (
    """# every table of a hub config
[node]
id = "hub-1"
data_dir = "data/hub-1"

[raft]
bind = "127.0.0.1:4321"
peers = ["127.0.0.1:4322", "127.0.0.1:4323"]
secret_file = "cluster.secret"
snapshot_min_entries = 10000
election_min_ms = 400
election_max_ms = 1400

[broker]
mode = "mosquitto"
bind = "127.0.0.1:1883"
advertise = "192.168.1.10:1883"

[http]
bind = "127.0.0.1:8080"
advertise = "192.168.1.10:8080"

[tls]
plain = true

[log]
level = "info"
format = "json"

[ingest]
batch_window_ms = 5
batch_max_entries = 64
batch_max_bytes = 262144
max_frame_bytes = 16384

[commands]
retry_ms = 2000
deadline_s = 60

[decisions]
enabled = true
command_deadline_s = 30

[models]
trusted_keys = ["TRUSTED"]
dir = "models"

[rules]
timezone = "UTC"
files = ["energy.toml"]

[[rules.rule]]
id = "over-limit-now"
description = "A plug over its limit is switched off at once."
devices = ["plug-*"]
sensor = "power_w"
above = "limit"
hysteresis = 50.0
for_s = 10
max_gap_s = 30
between = ["23:00", "06:00"]
timezone = "Europe/Berlin"
cooldown_s = 300
action = "relay.set"
params = { on = false }
alert = true

[guard]
out_of_bounds = "block"
critical = ["fridge-*", "pump-1"]
device_rate = "12/min"
device_burst = 4
total_rate = "600/min"
total_burst = 60
cooldown_s = { "relay.set" = 10, reboot = 600 }
switch_off = [{ action = "relay.set", params = { on = false } }, { action = "reboot" }]
"""
).replace("TRUSTED", TRUSTED)

VALID_DOC: dict[str, Any] = tomllib.loads(VALID)
POOLS: dict[str, dict[str, list[Any]]] = {
    **{name: PLAUSIBLE for name in c._KNOWN},
    "rules": {"timezone": PLAUSIBLE_RULES["timezone"], "files": PLAUSIBLE_FILES},
    "rules.rule": PLAUSIBLE_RULES,
    "guard": PLAUSIBLE_GUARD,
}


PAIRS: list[tuple[str, str]] = [(t, k) for t, pool in POOLS.items() for k in KNOWN.get(t, pool)]


def _target(doc: dict[str, Any], where: str) -> dict[str, Any] | None:
    if where != "rules.rule":
        table = doc.setdefault(where, {})
        return table if isinstance(table, dict) else None
    rules = doc.get("rules")
    if isinstance(rules, dict) and isinstance(rules.get("rule"), list) and rules["rule"]:
        first = rules["rule"][0]
        return first if isinstance(first, dict) else None
    return None


def edited_document(data: st.DataObject) -> dict[str, Any]:
    """The valid document with a few keys changed, dropped or added, so that
    most edits meet the check they target behind valid earlier keys."""
    doc = copy.deepcopy(VALID_DOC)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        where, key = data.draw(st.sampled_from(PAIRS), label="key")
        table = _target(doc, where)
        if table is None:
            continue
        how = data.draw(
            st.sampled_from(["set"] * 6 + ["drop", "unknown", "not_a_table", "drop_table"]),
            label="how",
        )
        if how == "set":
            table[key] = _value(data, POOLS[where], key)
        elif how == "drop":
            table.pop(key, None)
        elif how == "unknown":
            table[data.draw(st.text(max_size=12), label="unknown")] = data.draw(toml_values)
        elif how == "not_a_table" and where in doc:
            doc[where] = data.draw(scalars, label="scalar")
        elif how == "drop_table" and where in doc:
            del doc[where]
    return doc


def generated_document(data: st.DataObject) -> dict[str, Any]:
    if data.draw(st.integers(0, 3), label="from scratch") == 0:
        return random_document(data)
    return edited_document(data)


_SNIPPETS = [
    "=",
    "[",
    "]",
    "[[",
    '"',
    "'",
    "'" * 3,
    '"' * 3,
    "{",
    "}",
    ",",
    "#",
    "\\",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x7f",
    ".",
    "-",
    "+",
    "inf",
    "nan",
    "0x",
    "1e999",
    "9" * 30,
    "é",
    "\U0001f600",
    "[node]",
    "[raft]",
    "[rules]",
    "[guard]",
    "[[rules.rule]]",
]
_ANY_PLAUSIBLE = [
    v for pool in (PLAUSIBLE, PLAUSIBLE_RULES, PLAUSIBLE_GUARD) for vs in pool.values() for v in vs
]


def mutated_text(data: st.DataObject) -> bytes:
    lines = VALID.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        how = data.draw(
            st.sampled_from(["drop", "double", "swap", "value", "insert", "truncate"]),
            label="how",
        )
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        if how == "drop" and len(lines) > 1:
            del lines[i]
        elif how == "double":
            lines.insert(i, lines[i])
        elif how == "swap":
            j = data.draw(st.integers(0, len(lines) - 1), label="with")
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "value" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            own = [v for pool in POOLS.values() for v in pool.get(key.strip(), [])]
            choices = [st.sampled_from(_ANY_PLAUSIBLE), toml_values]
            if own:
                choices = [st.sampled_from(own), st.sampled_from(own), *choices]
            new = data.draw(st.one_of(*choices), label="new")
            lines[i] = f"{key}= {value_text(new)}\n"
        elif how == "insert":
            pos = data.draw(st.integers(0, len(lines[i])), label="at")
            snippet = data.draw(st.one_of(st.sampled_from(_SNIPPETS), st.text(max_size=8)))
            lines[i] = lines[i][:pos] + snippet + lines[i][pos:]
        elif how == "truncate":
            lines = lines[: i + 1]
            cut = data.draw(st.integers(0, len(lines[i])), label="cut")
            lines[i] = lines[i][:cut]
    raw = "".join(lines).encode("utf-8", "surrogatepass")
    if data.draw(st.integers(0, 7), label="raw bytes") == 0:
        pos = data.draw(st.integers(0, len(raw)), label="byte at")
        raw = raw[:pos] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + raw[pos:]
    return raw


# -- the oracle ------------------------------------------------------------------------------


def _files(raw: bytes) -> list[str]:
    try:
        rules = tomllib.loads(raw.decode("utf-8")).get("rules", {})
        files = rules.get("files", []) if isinstance(rules, dict) else []
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def check_error(exc: c.ConfigError, allowed: set[str]) -> None:
    text = str(exc)
    assert exc.source in allowed, (exc.source, allowed, text)
    source, key = v.shown(exc.source), v.shown(exc.key)
    want = f"{source}: {key}: " if exc.key else f"{source}: "
    assert text.startswith(want), text
    assert "\n" not in text and "Traceback" not in text, text


def outcome(path: Path, raw: bytes, stage: Callable[[Path], object]) -> str:
    """Run ``stage`` on the file: "ok" or "error". Anything but ConfigError fails."""
    allowed = {str(path)} | {str(path.parent / f) for f in _files(raw)}
    try:
        stage(path)
    except c.ConfigError as exc:
        check_error(exc, allowed)
        return "error"
    return "ok"


def load_all(path: Path) -> object:
    """What the daemon does at start: the config, then its rules and guard."""
    cfg = c.load(path, env=ENV)
    return engine.load(cfg.source, cfg.decisions)


def _home() -> tempfile.TemporaryDirectory[str]:
    tmp = tempfile.TemporaryDirectory(prefix="aiot-fuzz-config-")
    home = Path(tmp.name)
    (home / "cluster.secret").write_text(SECRET + "\n")
    (home / "short.secret").write_text("short\n")
    (home / "empty.secret").write_text("")
    (home / "binary.secret").write_bytes(b"\xff\xfe\x00" * 12)
    (home / "dir.secret").mkdir()
    (home / "energy.toml").write_bytes(ENERGY.read_bytes())
    return tmp


def test_the_valid_config_loads_with_its_rules_and_guard() -> None:
    # The mutations start from a config that loads: anything they break is theirs.
    with _home() as tmp:
        path = Path(tmp) / "hub.toml"
        path.write_text(VALID)
        rules, guard = engine.load(c.load(path, env=ENV).source, c.DecisionsConfig())
        assert rules and guard


def test_fuzz_config_loader_raises_only_config_error_naming_the_file() -> None:
    tally = Tally("config")
    seen = {"ok": 0, "error": 0}
    with _home() as tmp:
        home = Path(tmp)

        @fuzz_settings(400)
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            tally.example()
            path = home / "hub.toml"
            if data.draw(st.booleans(), label="generated"):
                doc = generated_document(data)
                text = document_text(doc)
                assert isinstance(tomllib.loads(text), dict)  # the writer writes TOML
                raw = text.encode("utf-8")
                tally.hit("generated_document")
                try:
                    c.parse(doc, path, ENV)
                    seen["ok"] += 1
                except c.ConfigError as exc:
                    check_error(exc, {str(path)})
                    seen["error"] += 1
            else:
                raw = mutated_text(data)
                tally.hit("mutated_valid")
            path.write_bytes(raw)
            seen[outcome(path, raw, lambda p: c.load(p, env=ENV))] += 1
            seen[outcome(path, raw, load_all)] += 1

        one()
    tally.done()
    print(f"fuzz config outcomes: {seen}")
    assert seen["ok"] > 0 and seen["error"] > 0, seen


# -- what the fuzzing found, kept as plain cases ----------------------------------------------


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        # A NUL byte in a file name: ValueError from the OS layer, not OSError.
        (lambda d: d["raft"].update(secret_file="a\x00b"), "raft.secret_file", "cannot read"),
        # A secret file that is not UTF-8: UnicodeDecodeError.
        (lambda d: d["raft"].update(secret_file="binary.secret"), "raft.secret_file", "UTF-8"),
        # A key with a newline made the message two lines.
        (lambda d: d["commands"].update({"a\nb": 1}), "commands.a\nb", "unknown key"),
        (lambda d: d.update({"x\ny": {}}), "x\ny", "unknown table"),
        (lambda d: d["rules"]["rule"][0].update({"\r": 1}), "rules.rule[0].\r", "unknown key"),
        # A rules file name with a NUL byte.
        (lambda d: d["rules"].update(files=["a\x00b"]), "", "cannot read the file"),
    ],
)
def test_fuzz_findings_are_config_errors_of_one_line(
    edit: Callable[[dict[str, Any]], None], key: str, words: str
) -> None:
    with _home() as tmp:
        path = Path(tmp) / "hub.toml"
        doc = copy.deepcopy(VALID_DOC)
        edit(doc)
        raw = document_text(doc).encode()
        path.write_bytes(raw)
        with pytest.raises(c.ConfigError) as err:
            load_all(path)
        assert err.value.key == key
        assert words in str(err.value)
        check_error(err.value, {str(path)} | {str(path.parent / f) for f in _files(raw)})
