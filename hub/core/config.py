"""The hub's configuration: one TOML file, validated once at the border.

    cfg = load(Path("hub.toml"))          # ConfigError on anything wrong

Inside the daemon everything is frozen dataclasses. A bad file gets one
message that names the file, the key and what was expected, never a
traceback:

    hub.toml: raft.bind: expected host:port with a port in 1..65535, got 'localhost'

The format, with defaults:

    [node]
    id = "hub-1"                      # required: [A-Za-z0-9._-]{1,64}
    data_dir = "data/hub-1"           # required; relative to the file

    [raft]
    bind = "127.0.0.1:4321"           # required
    peers = ["127.0.0.1:4322"]        # the other nodes; may be empty
    secret_file = "cluster.secret"    # exactly one of secret_file, secret_env
    secret_env = "AIOT_CLUSTER_SECRET"
    snapshot_min_entries = 10000      # log compaction threshold
    snapshot_format = "image"         # image (LMDB's own copy) | stream (portable)
    election_min_ms = 400             # election timeout, drawn in min..max
    election_max_ms = 1400

    [broker]
    mode = "mosquitto"                # mosquitto | embedded | external
    bind = "127.0.0.1:1883"           # mosquitto and embedded
    url = "mqtt://10.0.0.5:1883"      # external only
    advertise = "192.168.1.10:1883"   # what devices connect to; default: bind (or url)

    [http]
    bind = "127.0.0.1:8080"
    advertise = "192.168.1.10:8080"   # what other nodes and tools use; default: bind

    [log]
    level = "info"                    # debug | info | warning | error
    format = "json"                   # json (one object per line) | text

    [ingest]
    batch_window_ms = 5               # group proposals for at most this long
    batch_max_entries = 64            # ... or until this many batches
    batch_max_bytes = 262144          # ... or this many bytes
    max_frame_bytes = 16384           # larger MQTT payloads are rejected

    [commands]
    retry_ms = 2000                   # resend an unanswered command this often
    deadline_s = 60                   # default deadline of a command

    [decisions]
    enabled = true                    # the leader's decision engine (hub/decide/engine.py)
    command_deadline_s = 30           # deadline of the commands it issues
    llm = "smollm2-135m-instruct-q4_1"  # a GGUF in models/ or a path; "" turns the tier off
    llm_deadline_ms = 5000            # a later answer falls back to the tiers below
    llm_trust_threshold = 0.9         # eval accuracy needed before the LLM may actuate
    llm_report = ""                   # its `aiot eval decisions --json` report; default
                                      # models/eval/results/<model>.json
    policy = "When power is over the limit, switch the relay off. ..."

    [models]
    trusted_keys = ["base64 Ed25519 public key", ...]   # who may sign models
    dir = "models"                    # model blobs; default <data_dir>/models

    [rules] and [guard] are validated by hub/decide/rules.py and hub/decide/guard.py
    (docs/decisions.md documents them).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from hub.core import keys

T = TypeVar("T")
BrokerMode = Literal["mosquitto", "embedded", "external"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]

NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_SECRET_BYTES: Final = 16


def shown(text: str) -> str:
    """``text`` as a message shows it: control characters (a newline in a key
    or a file name) escaped, so that the message stays one line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RaftConfig:
    bind: Address
    peers: tuple[Address, ...]
    secret: str = field(repr=False)  # never logged
    snapshot_min_entries: int
    election_min_ms: int = 400
    election_max_ms: int = 1400
    snapshot_format: str = "image"  # image | stream (hub/state/DESIGN.md "Snapshots")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    mode: BrokerMode
    bind: Address | None
    url: str | None
    advertise: Address | None = None  # None: bind, or the url's address

    @property
    def address(self) -> Address:
        """Where devices and the hub reach this node's broker."""
        if self.advertise is not None:
            return self.advertise
        if self.bind is not None:
            return self.bind
        assert self.url is not None
        return address(self.url.split("://", 1)[1])


@dataclass(frozen=True, slots=True)
class HttpConfig:
    bind: Address
    advertise: Address | None = None

    @property
    def address(self) -> Address:
        return self.advertise or self.bind


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel
    format: LogFormat


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_window_ms: int
    batch_max_entries: int
    batch_max_bytes: int
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    retry_ms: int = 2000
    deadline_s: int = 60


@dataclass(frozen=True, slots=True)
class DecisionsConfig:
    enabled: bool = True
    command_deadline_s: int = 30
    llm: str = "smollm2-135m-instruct-q4_1"
    llm_deadline_ms: int = 5000
    llm_trust_threshold: float = 0.9
    llm_report: Path | None = None
    policy: str = (
        "When power is over the limit, switch the relay off. Never switch off a device "
        "marked critical: for a critical device do nothing, the operator decides. When "
        "power is under the limit, do nothing."
    )


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    trusted_keys: tuple[str, ...] = ()
    dir: Path | None = None


@dataclass(frozen=True, slots=True)
class HubConfig:
    node_id: str
    data_dir: Path
    raft: RaftConfig
    broker: BrokerConfig
    http: HttpConfig
    log: LogConfig
    ingest: IngestConfig
    source: Path
    commands: CommandsConfig = CommandsConfig()
    decisions: DecisionsConfig = DecisionsConfig()
    models: ModelsConfig = ModelsConfig()


# -- reusable validators -------------------------------------------------------------
# Each takes the raw value and returns the clean one, or raises ValueError
# with what was expected; _Section turns that into a ConfigError.


def address(value: Any) -> Address:
    """host:port, with a port in 1..65535 (IPv6 hosts in brackets)."""
    want = "host:port with a port in 1..65535"
    if not isinstance(value, str):
        raise ValueError(f"expected {want}, got {value!r}")
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"expected {want}, got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"expected {want}, got {value!r}")
    return Address(host, port)


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected an integer in {lo}..{hi}, got {value!r}")
        return value

    return check


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def matching(pattern: re.Pattern[str], what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def mqtt_url(value: Any) -> str:
    """mqtt://host:port or mqtts://host:port."""
    if not isinstance(value, str) or not re.fullmatch(r"mqtts?://[A-Za-z0-9.-]+:\d{1,5}", value):
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {value!r}")
    address(value.split("://", 1)[1])
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


# -- reading sections ------------------------------------------------------------------


class _Section:
    """One table of the file: typed access that reports the full key."""

    def __init__(self, source: Path, name: str, raw: Any, known: tuple[str, ...]) -> None:
        self.source = source
        self.name = name
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(source, name, f"expected a table [{name}], got {raw!r}")
        self.raw: dict[str, Any] = raw
        for key in raw:
            if key not in known:
                hint = difflib.get_close_matches(key, known, 1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(source, f"{name}.{key}", f"unknown key{extra}")

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def get(self, key: str, check: Callable[[Any], T], default: T | None = None) -> T:
        if key not in self.raw:
            if default is None:
                raise ConfigError(self.source, self.key(key), "required key is missing")
            return default
        try:
            return check(self.raw[key])
        except ValueError as exc:
            raise ConfigError(self.source, self.key(key), str(exc)) from None

    def optional(self, key: str, check: Callable[[Any], T]) -> T | None:
        if key not in self.raw:
            return None
        return self.get(key, check)


_KNOWN: Final = {
    "node": ("id", "data_dir"),
    "raft": (
        "bind",
        "peers",
        "secret_file",
        "secret_env",
        "snapshot_min_entries",
        "snapshot_format",
        "election_min_ms",
        "election_max_ms",
    ),
    "broker": ("mode", "bind", "url", "advertise"),
    "http": ("bind", "advertise"),
    "log": ("level", "format"),
    "ingest": ("batch_window_ms", "batch_max_entries", "batch_max_bytes", "max_frame_bytes"),
    "commands": ("retry_ms", "deadline_s"),
    "decisions": (
        "enabled",
        "command_deadline_s",
        "llm",
        "llm_deadline_ms",
        "llm_trust_threshold",
        "llm_report",
        "policy",
    ),
    "models": ("trusted_keys", "dir"),
}
# Tables whose own modules validate them (hub/decide/rules.py, hub/decide/guard.py).
_DELEGATED: Final = ("rules", "guard")


def _secret(raft: _Section, base: Path, env: Mapping[str, str]) -> str:
    secret_file = raft.optional("secret_file", text)
    secret_env = raft.optional("secret_env", matching(ENV_NAME, "an environment variable name"))
    if (secret_file is None) == (secret_env is None):
        raise ConfigError(
            raft.source,
            "raft.secret_file",
            "set exactly one of raft.secret_file and raft.secret_env: pysyncobj unpickles "
            "what peers send, so the cluster secret is mandatory",
        )
    if secret_file is not None:
        path = base / secret_file
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                raft.source, "raft.secret_file", f"cannot read {shown(str(path))}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(
                raft.source, "raft.secret_file", f"{shown(str(path))} is not UTF-8 text"
            ) from None
        except ValueError as exc:  # a NUL byte in the name
            raise ConfigError(
                raft.source, "raft.secret_file", f"cannot read {shown(str(path))}: {exc}"
            ) from None
        key = "raft.secret_file"
    else:
        assert secret_env is not None
        secret = env.get(secret_env, "").strip()
        key = "raft.secret_env"
        if not secret:
            raise ConfigError(raft.source, key, f"environment variable {secret_env} is not set")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            raft.source, key, f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return secret


def parse(doc: Mapping[str, Any], source: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Validate a parsed TOML document; ``source`` names it in errors."""
    env = os.environ if env is None else env
    base = source.parent
    for name in doc:
        if name not in _KNOWN and name not in _DELEGATED:
            hint = difflib.get_close_matches(name, list(_KNOWN), 1)
            extra = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(source, name, f"unknown table{extra}")
    node = _Section(source, "node", doc.get("node"), _KNOWN["node"])
    raft = _Section(source, "raft", doc.get("raft"), _KNOWN["raft"])
    broker = _Section(source, "broker", doc.get("broker"), _KNOWN["broker"])
    http = _Section(source, "http", doc.get("http"), _KNOWN["http"])
    log = _Section(source, "log", doc.get("log"), _KNOWN["log"])
    ingest = _Section(source, "ingest", doc.get("ingest"), _KNOWN["ingest"])
    commands = _Section(source, "commands", doc.get("commands"), _KNOWN["commands"])
    decisions = _Section(source, "decisions", doc.get("decisions"), _KNOWN["decisions"])
    models = _Section(source, "models", doc.get("models"), _KNOWN["models"])

    node_id = node.get("id", matching(NODE_ID, "1-64 characters of A-Z a-z 0-9 . _ -"))
    data_dir = base / node.get("data_dir", text)

    bind = raft.get("bind", address)
    peers_raw: list[Any] = raft.get("peers", _list, [])
    peers = []
    for i, p in enumerate(peers_raw):
        try:
            peers.append(address(p))
        except ValueError as exc:
            raise ConfigError(source, f"raft.peers[{i}]", str(exc)) from None
    if bind in peers:
        raise ConfigError(source, "raft.peers", f"lists this node's own address {bind}")
    if len(set(peers)) != len(peers):
        raise ConfigError(source, "raft.peers", "lists the same address twice")
    raft_cfg = RaftConfig(
        bind,
        tuple(peers),
        _secret(raft, base, env),
        raft.get("snapshot_min_entries", int_range(100, 10_000_000), 10_000),
        raft.get("election_min_ms", int_range(50, 60_000), 400),
        raft.get("election_max_ms", int_range(50, 60_000), 1400),
        raft.get("snapshot_format", one_of("image", "stream"), "image"),
    )
    if raft_cfg.election_max_ms <= raft_cfg.election_min_ms:
        raise ConfigError(source, "raft.election_max_ms", "must be above raft.election_min_ms")

    mode = broker.get("mode", one_of("mosquitto", "embedded", "external"), "mosquitto")
    if mode == "external":
        if "bind" in broker.raw:
            raise ConfigError(source, "broker.bind", "not used with mode = external; set url")
        broker_cfg = BrokerConfig(
            "external", None, broker.get("url", mqtt_url), broker.optional("advertise", address)
        )
    else:
        if "url" in broker.raw:
            raise ConfigError(source, "broker.url", f"only used with mode = external, not {mode}")
        broker_cfg = BrokerConfig(
            cast(BrokerMode, mode),
            broker.get("bind", address, Address("127.0.0.1", 1883)),
            None,
            broker.optional("advertise", address),
        )
    http_cfg = HttpConfig(
        http.get("bind", address, Address("127.0.0.1", 8080)), http.optional("advertise", address)
    )

    taken: dict[Address, str] = {bind: "raft.bind"}
    for key, addr in (("broker.bind", broker_cfg.bind), ("http.bind", http_cfg.bind)):
        if addr is not None:
            if addr in taken:
                raise ConfigError(source, key, f"{addr} is already used by {taken[addr]}")
            taken[addr] = key

    level = log.get("level", one_of("debug", "info", "warning", "error"), "info")
    fmt = log.get("format", one_of("json", "text"), "json")
    log_cfg = LogConfig(cast(LogLevel, level), cast(LogFormat, fmt))
    ingest_cfg = IngestConfig(
        ingest.get("batch_window_ms", int_range(0, 1000), 5),
        ingest.get("batch_max_entries", int_range(1, 10_000), 64),
        ingest.get("batch_max_bytes", int_range(1024, 64 * 1024 * 1024), 256 * 1024),
        ingest.get("max_frame_bytes", int_range(64, 1024 * 1024), 16 * 1024),
    )
    commands_cfg = CommandsConfig(
        commands.get("retry_ms", int_range(100, 600_000), 2000),
        commands.get("deadline_s", int_range(1, 7 * 86_400), 60),
    )
    report = decisions.optional("llm_report", text)
    defaults = DecisionsConfig()
    threshold = defaults.llm_trust_threshold
    if "llm_trust_threshold" in decisions.raw:
        raw_t = decisions.raw["llm_trust_threshold"]
        if isinstance(raw_t, bool) or not isinstance(raw_t, int | float) or not 0 <= raw_t <= 1:
            raise ConfigError(
                source, "decisions.llm_trust_threshold", f"expected a number in 0..1, got {raw_t!r}"
            )
        threshold = float(raw_t)
    llm = defaults.llm
    if "llm" in decisions.raw:
        llm = _str_or_empty(decisions.raw["llm"], source, "decisions.llm")
    decisions_cfg = DecisionsConfig(
        decisions.get("enabled", boolean, True),
        decisions.get("command_deadline_s", int_range(1, 86_400), 30),
        llm,
        decisions.get("llm_deadline_ms", int_range(10, 600_000), defaults.llm_deadline_ms),
        threshold,
        None if report is None else base / report,
        decisions.get("policy", text, defaults.policy),
    )
    trusted: tuple[str, ...] = tuple(models.get("trusted_keys", _list, []))
    for i, k in enumerate(trusted):
        try:
            keys.public_key(k)
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, f"models.trusted_keys[{i}]", str(exc)) from None
    models_dir = models.optional("dir", text)
    models_cfg = ModelsConfig(trusted, None if models_dir is None else base / models_dir)
    return HubConfig(
        node_id,
        data_dir,
        raft_cfg,
        broker_cfg,
        http_cfg,
        log_cfg,
        ingest_cfg,
        source,
        commands_cfg,
        decisions_cfg,
        models_cfg,
    )


def _str_or_empty(value: Any, source: Path, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(source, key, f'expected a model name, a path or "", got {value!r}')
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value


def load(path: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Read and validate a hub config file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return parse(doc, path, env)
