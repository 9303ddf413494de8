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
    durable_journal = true            # fsync the Raft journal before acting on it;
                                      # false only to measure its cost (hub/state/DESIGN.md)

    [broker]
    mode = "mosquitto"                # mosquitto | embedded | external
    bind = "127.0.0.1:1883"           # mosquitto and embedded
    url = "mqtt://10.0.0.5:1883"      # external only
    advertise = "192.168.1.10:1883"   # what devices connect to; default: bind (or url)
    # Limits of the node's own broker (Mosquitto's config; the embedded one
    # keeps the same ones) and of what one device may send (docs/security.md):
    max_connections = 1000            # open client connections on the device listener
    max_inflight_messages = 32        # QoS 1 messages the broker sends a client unacked
    max_queued_messages = 1000        # ... and queues for it beyond those, then drops
                                      # (max_packet_size: [ingest] max_frame_bytes + 1024)
    device_batches_per_s = 200        # uplink batches of one device ...
    device_batch_burst = 400          # ... with this burst; the excess is dropped unread
    device_statuses_per_s = 2         # status messages of one device ...
    device_status_burst = 10
    device_results_per_s = 10         # command results of one device ...
    device_result_burst = 50

    [http]
    bind = "127.0.0.1:8080"
    advertise = "192.168.1.10:8080"   # what other nodes and tools use; default: bind
    # Limits on what clients may send and hold (docs/api.md "Limits"):
    max_body_bytes = 16384            # any request body not named below (413 above)
    max_user_body_bytes = 1048576     # PUT /v1/users/{name} (a viewer's device list)
    max_firmware_bytes = 8388608      # POST /v1/firmware (a bundle, base64 in JSON)
    max_model_bytes = 1073741824      # PUT /v1/models/blobs/{sha256}
    login_user_burst = 5              # failed logins per user name before 429 ...
    login_user_per_minute = 5         # ... and how fast that allowance comes back
    login_address_burst = 20          # login attempts per client address before 429 ...
    login_address_per_minute = 20     # ... and how fast that comes back
    user_burst = 100                  # requests of one API user before 429 ...
    user_per_s = 20                   # ... and the sustained rate (0: unlimited)
    max_streams = 64                  # open /v1/stream subscribers on this node (503)
    max_streams_per_user = 4          # ... of one user or token (429)
    admin_token_max_ttl_s = 2592000   # admin tokens living longer are refused (401)

    [tls]                             # docs/security.md "TLS"; `aiot cluster init` writes it
    ca = "tls/ca.pem"                 # the cluster CA: devices, tools and peers pin it
    cert = "tls/hub-1.pem"            # this node's certificate, issued by ca
    key = "tls/hub-1.key"             # its private key (mode 0600)
    plain = false                     # true: plain TCP, for a lab; then ca, cert, key unused
    # With [tls], the broker's device listener speaks MQTT over TLS (8883 is
    # the usual port), the HTTP API speaks HTTPS, and the hub reaches peers and
    # an mqtts:// broker with ca pinned. With plain = true both are plain
    # TCP, and the hub says so in its log at start. The table is required.

    [log]
    level = "info"                    # debug | info | warning | error
    format = "json"                   # json (one object per line) | text

    [ingest]
    batch_window_ms = 5               # group proposals for at most this long
    batch_max_entries = 64            # ... or until this many batches
    batch_max_bytes = 262144          # ... or this many bytes
    max_frame_bytes = 16384           # larger MQTT payloads are rejected

    [store]                           # hub/state/DESIGN.md "A full store"
    map_size_mb = 8192                # the LMDB map (1024 on a 32-bit system: keep it
                                      # under the address space); apply may grow it
                                      # by a quarter when committed entries fill it
    alert_at = 0.75                   # live data over this share of the map: alert
    refuse_at = 0.85                  # ... over this: ingest refuses (store_full); the
                                      # rest is the reserve for committed entries
    min_disk_free_mb = 64             # less free disk than this: alert and refuse too

    [retention]                       # hub/state/DESIGN.md "Retention and rollups"
    raw_days = 0                      # raw readings kept this long (days, may be a fraction;
                                      # 0: for ever, no retention step is proposed)
    classes = { plug = 30 }           # ... per device class: a device id up to its first -
    rollup_days = 3650                # hourly and daily rollups kept this long
    step_records = 20000              # most records one retention step deletes
    period_s = 60                     # the leader proposes a step this often

    [threads]                         # conversations (hub/state/DESIGN.md "Conversations")
    keep_days = 365                   # messages are kept this long (days, may be a fraction)
    step_records = 1000               # most records one retention step deletes
    period_s = 60                     # the leader proposes a step this often

    [commands]
    retry_ms = 2000                   # resend an unanswered command this often
    deadline_s = 60                   # default deadline of a command

    [decisions]
    enabled = true                    # the leader's decision engine (hub/decide/engine.py)
    command_deadline_s = 30           # deadline of the commands it issues
    llm = "smollm2-135m-instruct-q4_0"  # a GGUF in models/ or a path; "" turns the tier off
    llm_deadline_ms = 5000            # a later answer falls back to the tiers below
    llm_trust_threshold = 0.9         # eval accuracy needed before the LLM may actuate
    llm_report = ""                   # its `aiot eval decisions --json` report; default
                                      # models/eval/results/<model>.json
    policy = "If the device is marked critical, do nothing: ..."
                                      # the LLM tier's policy in words for every device class
                                      # (1-4000 characters, as for a class below)
    policies = { heater = "Never switch a heater off between 06:00 and 09:00. ..." }
                                      # ... per device class (a device id up to its first -):
                                      # 1-4000 characters, no control characters but newline;
                                      # `aiot policy set` overrides a class at run time
                                      # (replicated; docs/llm.md "Operator policies")

    [models]
    trusted_keys = ["base64 Ed25519 public key", ...]   # who may sign models
    dir = "models"                    # model blobs; default <data_dir>/models
    shipped_dir = "/opt/aiot/models"  # the models the hub ships with (rules, ONNX
                                      # model, eval reports, GGUF); an existing
                                      # folder; default: models/ beside the hub package

    [firmware]
    trusted_keys = ["base64 Ed25519 public key", ...]   # who may sign firmware releases
                                      # (hub/decide/registry.py "Firmware releases");
                                      # none: every ota.update is refused

    [rules]
    shipped = ["energy"]              # rule sets of the shipped models' rules/ folder
                                      # (here <shipped_dir>/rules/energy.toml)
    files = ["rules/more.toml"]       # rules files by path
    [[rules.rule]]                    # rules in the config itself

    [tariff]                          # what energy costs (hub/core/tariff.py documents it)
    currency = "EUR"                  # required in the table
    timezone = "Europe/Berlin"        # the local day of the overview; default UTC
    price_per_kwh = 0.30              # a flat price, or by local time of day:
    periods = { "22:00-06:00" = 0.18, "06:00-22:00" = 0.32 }
                                      # on the hour or half hour, covering the day once;
                                      # no table: energy without a price, UTC days

    [cloud]                           # where the site exports to (docs/cloud.md);
    site = "north-1"                  # hub/core/cloudcfg.py documents the table
    servers = ["tls://cloud.example:4222"]
    login = "cloud/site-north-1.json" # from aiot cloud add-site
    ca = "cloud/ca.pem"               # no table: the site exports nothing

    [rules] and [guard] are validated by hub/decide/rules.py and hub/decide/guard.py
    (docs/decisions.md documents them). The configs `aiot cluster init` and
    `aiot hub install-service` write turn the shipped energy rules on with
    ``shipped = ["energy"]``; without the key (or with ``shipped = []``) a hub
    loads only the rules the config gives itself, and with none it never
    decides. A name with no file in the folder stops the hub at start:

    hub.toml: rules.shipped[0]: no rule set 'enrgy' in /opt/aiot/models/rules (it has
    energy) (did you mean 'energy'?)

Paths are relative to the file. Each table is a ``Schema`` of
hub/core/validate.py: a validator per key, read into the frozen dataclass
below whose field defaults are the defaults above. ``ConfigError`` and
``Address`` come from there too; this module re-exports them, as ``load``
raises the one and the records hold the other.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, get_args

from hub.core import cloudcfg, keys, tls
from hub.core.fsutil import exposed
from hub.core.paths import SHIPPED_MODELS
from hub.core.tariff import NONE as NO_TARIFF
from hub.core.tariff import TABLE as TARIFF
from hub.core.tariff import Tariff
from hub.core.tariff import read as read_tariff
from hub.core.validate import Address as Address
from hub.core.validate import ConfigError as ConfigError
from hub.core.validate import (
    Invalid,
    Schema,
    Table,
    address,
    boolean,
    did_you_mean,
    int_range,
    list_of,
    matching,
    mqtt_url,
    number,
    one_of,
    path,
    read_text,
    read_toml,
    shown,
    text,
)

BrokerMode = Literal["mosquitto", "embedded", "external"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "text"]
SnapshotFormat = Literal["image", "stream"]  # hub/state/DESIGN.md "Snapshots"

log = logging.getLogger("aiot.config")

NODE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A device class ([retention] classes, [decisions] policies; ``device_class``),
# and the longest operator policy in words (characters).
DEVICE_CLASS: Final = re.compile(r"[A-Za-z0-9_.]{1,64}")
MAX_POLICY_CHARS: Final = 4000
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_SECRET_BYTES: Final = 16
BROKER_BIND: Final = Address("127.0.0.1", 1883)
HTTP_BIND: Final = Address("127.0.0.1", 8080)


# -- records ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RaftConfig:
    bind: Address
    secret: str = field(repr=False)  # never logged
    peers: tuple[Address, ...] = ()
    snapshot_min_entries: int = 10_000
    election_min_ms: int = 400
    election_max_ms: int = 1400
    snapshot_format: SnapshotFormat = "image"
    durable_journal: bool = True


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    mode: BrokerMode = "mosquitto"
    bind: Address | None = BROKER_BIND  # None with mode external
    url: str | None = None  # mode external only
    advertise: Address | None = None  # None: bind, or the url's address
    # Mosquitto's limits on the device listener (hub/link/broker.py).
    max_connections: int = 1000
    max_inflight_messages: int = 32
    max_queued_messages: int = 1000
    # Token buckets per device and channel, checked before any proposal
    # (hub/link/limits.py): batches, statuses, command results.
    device_batches_per_s: int = 200
    device_batch_burst: int = 400
    device_statuses_per_s: int = 2
    device_status_burst: int = 10
    device_results_per_s: int = 10
    device_result_burst: int = 50

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
    bind: Address = HTTP_BIND
    advertise: Address | None = None
    max_body_bytes: int = 16 * 1024
    max_user_body_bytes: int = 1024 * 1024
    max_firmware_bytes: int = 8 * 1024 * 1024
    max_model_bytes: int = 1024 * 1024 * 1024
    # Token buckets (hub/http/limits.py): failed logins per user name, login
    # attempts per client address, requests per API user (user_per_s 0: off).
    login_user_burst: int = 5
    login_user_per_minute: int = 5
    login_address_burst: int = 20
    login_address_per_minute: int = 20
    user_burst: int = 100
    user_per_s: int = 20
    # Open /v1/stream subscribers: on the node, and of one user.
    max_streams: int = 64
    max_streams_per_user: int = 4
    # The longest lifetime of a cluster admin token this node accepts
    # (hub/core/auth.py; never over 365 days).
    admin_token_max_ttl_s: int = 30 * 86_400

    @property
    def address(self) -> Address:
        return self.advertise or self.bind


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The node's certificate and the cluster CA (hub/core/tls.py); all None
    when the config asks for plain TCP."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    plain: bool = True

    @property
    def on(self) -> bool:
        return not self.plain


PLAIN: Final = TlsConfig()  # [tls] plain = true


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "json"


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_window_ms: int = 5
    batch_max_entries: int = 64
    batch_max_bytes: int = 256 * 1024
    max_frame_bytes: int = 16 * 1024


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    retry_ms: int = 2000
    deadline_s: int = 60


@dataclass(frozen=True, slots=True)
class DecisionsConfig:
    enabled: bool = True
    command_deadline_s: int = 30
    llm: str = "smollm2-135m-instruct-q4_0"
    llm_deadline_ms: int = 5000
    llm_trust_threshold: float = 0.9
    llm_report: Path | None = None
    # Ordered rules with the default said: the form the shipped adapter reads
    # right (docs/llm.md, "Operator policies").
    policy: str = (
        "If the device is marked critical, do nothing: the operator decides. If power is "
        "over the limit, switch the relay off. Otherwise, do nothing."
    )
    policies: tuple[tuple[str, str], ...] = ()  # (device class, policy in words)

    def policy_of_class(self, device_class: str) -> str | None:
        """The config's policy for a device class, or None (then ``policy``)."""
        return next((t for c, t in self.policies if c == device_class), None)


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """Where models come from: who may sign them (base64 Ed25519 public keys),
    the blob store (None: <data_dir>/models) and the models the hub ships with."""

    trusted_keys: tuple[str, ...] = ()
    dir: Path | None = None
    shipped_dir: Path = SHIPPED_MODELS


@dataclass(frozen=True, slots=True)
class FirmwareConfig:
    """Who may sign firmware releases (base64 Ed25519 public keys): an
    ota.update names a release signed by one of them, or is refused."""

    trusted_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """[store]: the LMDB map and when a full store alerts and refuses ingest
    (hub/state/DESIGN.md "A full store")."""

    map_size_mb: int = 8192
    alert_at: float = 0.75
    refuse_at: float = 0.85
    min_disk_free_mb: int = 64


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """[retention]: how long raw readings (per device class) and rollups are
    kept, and the size and period of a retention step."""

    raw_days: float = 0.0  # 0: raw readings are kept for ever
    classes: tuple[tuple[str, float], ...] = ()  # (device class, raw days)
    rollup_days: float = 3650.0
    step_records: int = 20_000
    period_s: int = 60

    def raw_days_of(self, device_id: str) -> float:
        """Raw days of a device, by its class (``device_class``)."""
        cls = device_class(device_id)
        return next((d for c, d in self.classes if c == cls), self.raw_days)


def device_class(device_id: str) -> str:
    """A device's class: its id up to the first "-" (``plug-7``: ``plug``;
    an id without "-" is its own class). [retention] classes and
    [decisions] policies are keyed by it."""
    return device_id.split("-", 1)[0]


def _class_name(name: str) -> None:
    if not DEVICE_CLASS.fullmatch(name):
        raise Invalid(f"device class {shown(name)!r}: 1-64 letters, digits, _ and . only", (name,))


def _classes(value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of device class = raw days, got {value!r}")
    days = number(0, 36500)
    out = []
    for name, d in sorted(value.items()):
        _class_name(name)
        try:
            out.append((name, days(d)))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return tuple(out)


def policy_problem(text: str) -> str | None:
    """What is wrong with an operator's policy in words, or None: it must
    hold a visible character, have at most MAX_POLICY_CHARS characters and
    no control character but newline (hub/state/entries.py keeps the same
    limits for the replicated entry)."""
    if not text.strip():
        return "the policy is empty"
    if len(text) > MAX_POLICY_CHARS:
        return f"the policy has {len(text)} characters, at most {MAX_POLICY_CHARS}"
    bad = next((c for c in text if _control(c)), None)
    if bad is not None:
        return f"the policy holds the control character U+{ord(bad):04X} (only newlines)"
    return None


def _control(c: str) -> bool:
    # C0 and C1 controls but newline, and lone surrogates (not UTF-8).
    n = ord(c)
    return (n < 0x20 and c != "\n") or 0x7F <= n <= 0x9F or 0xD800 <= n <= 0xDFFF


def _policy(value: Any) -> str:
    words = text(value).replace("\r\n", "\n")
    problem = policy_problem(words)
    if problem is not None:
        raise ValueError(problem)
    return words


def _policies(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of device class = policy in words, got {value!r}")
    out = []
    for name, words in sorted(value.items()):
        _class_name(name)
        if not isinstance(words, str):
            raise Invalid(f"expected the policy in words (a string), got {words!r}", (name,))
        words = words.replace("\r\n", "\n")
        problem = policy_problem(words)
        if problem is not None:
            raise Invalid(problem, (name,))
        out.append((name, words))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ThreadsConfig:
    """[threads]: how long conversation messages are kept, and the size and
    period of the leader's retention step (hub/state/threads.py)."""

    keep_days: float = 365.0
    step_records: int = 1000
    period_s: int = 60


@dataclass(frozen=True, slots=True)
class HubConfig:
    """A whole hub config file, validated: what the daemon is started with."""

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
    tls: TlsConfig = TlsConfig()
    firmware: FirmwareConfig = FirmwareConfig()
    tariff: Tariff = NO_TARIFF
    store: StoreConfig = StoreConfig()
    retention: RetentionConfig = RetentionConfig()
    cloud: cloudcfg.CloudConfig = cloudcfg.NONE
    threads: ThreadsConfig = ThreadsConfig()

    @property
    def scheme(self) -> str:
        """How this node's HTTP API is reached: https, or http for a plain lab."""
        return "https" if self.tls.on else "http"


@dataclass(frozen=True, slots=True)
class _Node:
    id: str
    data_dir: Path


# -- the tables ----------------------------------------------------------------------


def _model(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a model name, a path or "", got {value!r}')
    return value


def _public_key(value: Any) -> str:
    keys.public_key(value)  # ValueError saying what is wrong
    return str(value)


NODE: Final = Schema(
    _Node, {"id": matching(NODE_ID, "1-64 characters of A-Z a-z 0-9 . _ -"), "data_dir": path}
)
RAFT: Final = Schema(
    RaftConfig,
    {
        "bind": address,
        "peers": list_of(address),
        "snapshot_min_entries": int_range(100, 10_000_000),
        "snapshot_format": one_of(*get_args(SnapshotFormat)),
        "election_min_ms": int_range(50, 60_000),
        "election_max_ms": int_range(50, 60_000),
        "durable_journal": boolean,
    },
    others=("secret_file", "secret_env"),
)
BROKER: Final = Schema(
    BrokerConfig,
    {
        "mode": one_of(*get_args(BrokerMode)),
        "bind": address,
        "url": mqtt_url,
        "advertise": address,
        "max_connections": int_range(1, 1_000_000),
        "max_inflight_messages": int_range(1, 65_535),
        "max_queued_messages": int_range(1, 10_000_000),
        "device_batches_per_s": int_range(1, 1_000_000),
        "device_batch_burst": int_range(1, 1_000_000),
        "device_statuses_per_s": int_range(1, 1_000_000),
        "device_status_burst": int_range(1, 1_000_000),
        "device_results_per_s": int_range(1, 1_000_000),
        "device_result_burst": int_range(1, 1_000_000),
    },
)
HTTP: Final = Schema(
    HttpConfig,
    {
        "bind": address,
        "advertise": address,
        "max_body_bytes": int_range(1024, 64 * 1024 * 1024),
        "max_user_body_bytes": int_range(1024, 64 * 1024 * 1024),
        "max_firmware_bytes": int_range(64 * 1024, 1024 * 1024 * 1024),
        "max_model_bytes": int_range(1024, 64 * 1024 * 1024 * 1024),
        "login_user_burst": int_range(1, 10_000),
        "login_user_per_minute": int_range(1, 100_000),
        "login_address_burst": int_range(1, 100_000),
        "login_address_per_minute": int_range(1, 1_000_000),
        "user_burst": int_range(1, 1_000_000),
        "user_per_s": int_range(0, 1_000_000),
        "max_streams": int_range(1, 100_000),
        "max_streams_per_user": int_range(1, 100_000),
        "admin_token_max_ttl_s": int_range(60, 365 * 86_400),
    },
)
LOG: Final = Schema(
    LogConfig, {"level": one_of(*get_args(LogLevel)), "format": one_of(*get_args(LogFormat))}
)
INGEST: Final = Schema(
    IngestConfig,
    {
        "batch_window_ms": int_range(0, 1000),
        "batch_max_entries": int_range(1, 10_000),
        "batch_max_bytes": int_range(1024, 64 * 1024 * 1024),
        "max_frame_bytes": int_range(64, 1024 * 1024),
    },
)
COMMANDS: Final = Schema(
    CommandsConfig, {"retry_ms": int_range(100, 600_000), "deadline_s": int_range(1, 7 * 86_400)}
)
DECISIONS: Final = Schema(
    DecisionsConfig,
    {
        "enabled": boolean,
        "command_deadline_s": int_range(1, 86_400),
        "llm": _model,
        "llm_deadline_ms": int_range(10, 600_000),
        "llm_trust_threshold": number(0, 1),
        "llm_report": path,
        "policy": _policy,
        "policies": _policies,
    },
)
MODELS: Final = Schema(
    ModelsConfig, {"trusted_keys": list_of(_public_key), "dir": path, "shipped_dir": path}
)
FIRMWARE: Final = Schema(FirmwareConfig, {"trusted_keys": list_of(_public_key)})
TLS: Final = Schema(TlsConfig, {"ca": path, "cert": path, "key": path, "plain": boolean})
STORE: Final = Schema(
    StoreConfig,
    {
        "map_size_mb": int_range(1, 1 << 24),
        "alert_at": number(0.05, 0.99),
        "refuse_at": number(0.05, 0.99),
        "min_disk_free_mb": int_range(0, 1 << 20),
    },
)
RETENTION: Final = Schema(
    RetentionConfig,
    {
        "raw_days": number(0, 36500),
        "classes": _classes,
        "rollup_days": number(1, 36500),
        "step_records": int_range(100, 1_000_000),
        "period_s": int_range(1, 86_400),
    },
)
THREADS: Final = Schema(
    ThreadsConfig,
    {
        "keep_days": number(0.0001, 36500),
        "step_records": int_range(10, 100_000),
        "period_s": int_range(1, 86_400),
    },
)
SCHEMAS: Final[Mapping[str, Schema[Any]]] = {
    "node": NODE,
    "raft": RAFT,
    "broker": BROKER,
    "http": HTTP,
    "log": LOG,
    "ingest": INGEST,
    "commands": COMMANDS,
    "decisions": DECISIONS,
    "models": MODELS,
    "tls": TLS,
    "firmware": FIRMWARE,
    "tariff": TARIFF,
    "store": STORE,
    "retention": RETENTION,
    "cloud": cloudcfg.TABLE,
    "threads": THREADS,
}
_KNOWN: Final = {name: schema.known for name, schema in SCHEMAS.items()}
# Tables whose own modules validate them (hub/decide/rules.py, hub/decide/guard.py).
_DELEGATED: Final = ("rules", "guard")


# -- reading -------------------------------------------------------------------------


def parse(doc: Mapping[str, Any], source: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Validate a parsed TOML document; ``source`` names it in errors."""
    for name in doc:
        if name not in _KNOWN and name not in _DELEGATED:
            hint = did_you_mean(name, list(_KNOWN), "[{}]")
            raise ConfigError(source, name, f"unknown table{hint}")
    tables = {name: schema.table(source, name, doc.get(name)) for name, schema in SCHEMAS.items()}
    node = NODE.read(tables["node"])
    raft = _raft(tables["raft"], os.environ if env is None else env)
    broker = _broker(tables["broker"])
    http = HTTP.read(tables["http"])
    _one_use_per_address(source, raft, broker, http)
    return HubConfig(
        node.id,
        node.data_dir,
        raft,
        broker,
        http,
        LOG.read(tables["log"]),
        INGEST.read(tables["ingest"]),
        source,
        COMMANDS.read(tables["commands"]),
        DECISIONS.read(tables["decisions"]),
        _models(tables["models"]),
        _tls(tables["tls"], "tls" in doc, source),
        firmware=FIRMWARE.read(tables["firmware"]),
        tariff=read_tariff(tables["tariff"], "tariff" in doc),
        store=_store(tables["store"]),
        retention=RETENTION.read(tables["retention"]),
        cloud=cloudcfg.read(tables["cloud"], "cloud" in doc),
        threads=THREADS.read(tables["threads"]),
    )


def _store(t: Table) -> StoreConfig:
    store = STORE.read(t)
    if store.refuse_at < store.alert_at:
        raise t.error("refuse_at", "must be at or above store.alert_at")
    return store


def load(path: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Read and validate a hub config file."""
    return parse(read_toml(path), path, env)


def _raft(t: Table, env: Mapping[str, str]) -> RaftConfig:
    raft = RAFT.read(t, secret=_secret(t, env))
    if raft.bind in raft.peers:
        raise t.error("peers", f"lists this node's own address {raft.bind}")
    if len(set(raft.peers)) != len(raft.peers):
        raise t.error("peers", "lists the same address twice")
    if raft.election_max_ms <= raft.election_min_ms:
        raise t.error("election_max_ms", "must be above raft.election_min_ms")
    return raft


def _secret(t: Table, env: Mapping[str, str]) -> str:
    """The cluster secret, from exactly one of raft.secret_file and raft.secret_env."""
    secret_file = t.optional("secret_file", path)
    secret_env = t.optional("secret_env", matching(ENV_NAME, "an environment variable name"))
    if (secret_file is None) == (secret_env is None):
        raise t.error(
            "secret_file",
            "set exactly one of raft.secret_file and raft.secret_env: pysyncobj unpickles "
            "what peers send, so the cluster secret is mandatory",
        )
    if secret_file is not None:
        key = "secret_file"
        try:
            secret = read_text(secret_file, shown(str(secret_file))).strip()
        except Invalid as exc:
            raise t.error(key, exc.problem) from None
        if bits := exposed(secret_file):
            log.warning(
                "the cluster secret file %s can be read by its group or others (mode %04o "
                "gives %03o): chmod 600 it",
                secret_file,
                stat.S_IMODE(secret_file.stat().st_mode),
                bits,
            )
    else:
        assert secret_env is not None
        key = "secret_env"
        secret = env.get(secret_env, "").strip()
        if not secret:
            raise t.error(key, f"environment variable {secret_env} is not set")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise t.error(key, f"the cluster secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _broker(t: Table) -> BrokerConfig:
    broker = BROKER.read(t)
    if broker.mode != "external":
        if "url" in t:
            raise t.error("url", f"only used with mode = external, not {broker.mode}")
        return broker
    if "bind" in t:
        raise t.error("bind", "not used with mode = external; set url")
    if broker.url is None:
        raise t.error("url", "required key is missing")
    return replace(broker, bind=None)


def _one_use_per_address(
    source: Path, raft: RaftConfig, broker: BrokerConfig, http: HttpConfig
) -> None:
    taken: dict[Address, str] = {raft.bind: "raft.bind"}
    for key, addr in (("broker.bind", broker.bind), ("http.bind", http.bind)):
        if addr is not None:
            if addr in taken:
                raise ConfigError(source, key, f"{addr} is already used by {taken[addr]}")
            taken[addr] = key


def _tls(t: Table, present: bool, source: Path) -> TlsConfig:
    """[tls]: the three files, which must fit together, or plain = true. No
    table is an error: plain TCP only when a config asks for it."""
    if not present:
        raise ConfigError(
            source,
            "tls",
            "required table is missing: ca, cert and key (`aiot cluster cert` issues them), "
            "or plain = true for a lab without TLS (docs/security.md)",
        )
    plain = t.optional("plain", boolean) or False
    if plain:
        for key in ("ca", "cert", "key"):
            if key in t:
                raise t.error(key, "not used with plain = true")
        return TlsConfig()
    files = {}
    for key in ("ca", "cert", "key"):
        if key not in t:
            raise t.error(key, "required key is missing (or set plain = true for plain TCP)")
        f = t.get(key, path)
        if not f.is_file():
            raise t.error(key, f"no such file: {shown(str(f))}")
        files[key] = f
    if bits := exposed(files["key"]):
        log.warning(
            "the TLS key %s can be read by its group or others (%03o): chmod 600 it",
            files["key"],
            bits,
        )
    try:
        tls.check_pair(files["cert"], files["key"], files["ca"])
    except tls.TlsError as exc:
        raise t.error("cert", str(exc)) from None
    return TlsConfig(files["ca"], files["cert"], files["key"], plain=False)


def shipped_models(doc: Mapping[str, Any], source: Path) -> Path:
    """The shipped models' folder of a parsed config document (``[models]
    shipped_dir``, validated as ``parse`` does), for the tables that other
    modules read from the same file (the shipped rule sets of ``[rules]``)."""
    return _models(MODELS.table(source, "models", doc.get("models"))).shipped_dir


def _models(t: Table) -> ModelsConfig:
    models = MODELS.read(t)
    if "shipped_dir" in t and not models.shipped_dir.is_dir():
        raise t.error("shipped_dir", f"{shown(str(models.shipped_dir))} is not a folder")
    return models
