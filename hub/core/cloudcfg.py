"""The ``[cloud]`` table: where a site exports to (docs/cloud.md).

    [cloud]                             # absent: the site exports nothing
    site = "north-1"                    # required: the site's id in the cloud
    servers = ["tls://cloud.example:4222", "tls://cloud2.example:4222"]
                                        # required: the cloud's servers, or the
                                        # node's own leaf node: ["nats://127.0.0.1:4222"]
    login = "cloud/site-north-1.json"   # the site's login (aiot cloud add-site writes
                                        # it: user and password); none through a leaf node
    ca = "cloud/ca.pem"                 # the cloud's CA, pinned; required with tls://
    domain = "aiot-cloud"               # the cloud's JetStream domain: set it when
                                        # servers is a leaf node
    window = 64                         # messages in flight before their acks
    lag_alert_s = 300                   # alert when the oldest unexported entry is older

TLS on every link: a ``tls://`` server needs ``ca``, and a plain ``nats://``
server must be this machine's own leaf node (127.0.0.1, ::1 or localhost),
which carries the traffic on over TLS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hub.core.validate import Schema, Table, int_range, list_of, matching, path, read_text

_SITE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SERVER: Final = re.compile(r"(tls|nats)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})")
_DOMAIN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOOPBACK: Final = ("127.0.0.1", "localhost", "[::1]")


@dataclass(frozen=True, slots=True)
class CloudLogin:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class CloudConfig:
    site: str = ""  # "": no [cloud] table, nothing is exported
    servers: tuple[str, ...] = ()
    login: CloudLogin | None = None
    ca: Path | None = None
    domain: str | None = None
    window: int = 64
    lag_alert_s: int = 300

    @property
    def on(self) -> bool:
        return bool(self.site)


NONE: Final = CloudConfig()


def _server(value: Any) -> str:
    url = matching(_SERVER, "a URL like tls://host:4222 or nats://127.0.0.1:4222")(value)
    port = int(url.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port}: want 1..65535")
    return url


@dataclass(frozen=True, slots=True)
class _Table:
    site: str
    servers: tuple[str, ...]
    login: Path | None = None
    ca: Path | None = None
    domain: str | None = None
    window: int = 64
    lag_alert_s: int = 300


TABLE: Final = Schema(
    _Table,
    {
        "site": matching(_SITE, "a site id: 1 to 32 of a-z, 0-9 and '-'"),
        "servers": list_of(_server, "a list of server URLs"),
        "login": path,
        "ca": path,
        "domain": matching(_DOMAIN, "a JetStream domain like 'aiot-cloud'"),
        "window": int_range(1, 4096),
        "lag_alert_s": int_range(1, 30 * 86_400),
    },
)


def read(t: Table, present: bool) -> CloudConfig:
    """The ``[cloud]`` table ``t`` (made by ``TABLE.table``); NONE when absent."""
    if not present:
        return NONE
    raw = TABLE.read(t)
    if not raw.servers:
        raise t.error("servers", "name at least one server")
    for i, url in enumerate(raw.servers):
        scheme, rest = url.split("://", 1)
        if scheme == "tls" and raw.ca is None:
            raise t.error("ca", "required with tls:// servers: the cloud's CA, to pin")
        if scheme == "nats" and rest.rsplit(":", 1)[0] not in _LOOPBACK:
            raise t.error(
                "servers",
                "plain nats:// only to this machine's own leaf node (127.0.0.1); "
                "the cloud itself is reached over tls://",
                i,
            )
    if raw.ca is not None:
        _text(t, "ca", raw.ca)
    login = _login(t, raw.login) if raw.login is not None else None
    return CloudConfig(
        raw.site, raw.servers, login, raw.ca, raw.domain, raw.window, raw.lag_alert_s
    )


def _text(t: Table, key: str, file: Path) -> str:
    try:
        return read_text(file, str(file))
    except ValueError as exc:
        raise t.error(key, str(exc)) from None


def _login(t: Table, file: Path) -> CloudLogin:
    text = _text(t, "login", file)
    try:
        doc = json.loads(text)
        return CloudLogin(str(doc["user"]), str(doc["password"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise t.error("login", f"{file}: not a login file with user and password ({exc})") from None
