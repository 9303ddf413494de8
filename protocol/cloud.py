"""What a site exports to the cloud: subjects, message ids and payloads.

A site's hubs publish to JetStream (docs/cloud.md); the cloud's tools read
it back. Both use this module, so the two never drift apart.

Subjects: ``aiot.<site>.<kind>.<key>`` where key is a device id (a node id
for ``health``) with each ``.`` written ``%2E`` (a NATS subject splits at
dots; a device id may hold them, a site id never does).

Message id (the ``Nats-Msg-Id`` header): ``<site>:<index>:<part>/<parts>``.
``index`` is the Raft index of the entry that committed what the message
carries; an entry that carries more than one message numbers them
``0/n .. n-1/n``, in the order they are published. JetStream drops a second
message with an id it has seen within the stream's de-duplication window;
the exporter chains each message to the one before it with
``Nats-Expected-Last-Msg-Id``, so a resend after the window is refused too.

Payloads are compact JSON objects with ``v`` (the schema, 1), ``kind``,
``site`` and ``index``. A readings payload is columnar, relative to its
first reading, so a reading costs about 15 bytes on the cloud link::

    {"v":1,"kind":"readings","site":"north-1","index":812,"device":"plug-1",
     "seq0":1200,"ts0":1764806400000,
     "rows":[[0,0,1,12.5],[1,0,2,230.1],[2,1000,1,12.6]]}

each row ``[seq - seq0, ts_ms - ts0, sensor, value]``, the value the
shortest decimal that reads back as the same 32-bit float the hub stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

SCHEMA: Final = 1
# The cloud's buckets for what flows down and the sites' reports (docs/cloud.md).
MODELS_BUCKET: Final = "aiot-models"  # object store: signed model versions
POLICIES_BUCKET: Final = "aiot-policies"  # key-value: signed policies and rule files
SITES_BUCKET: Final = "aiot-sites"  # key-value: each site's last report, under its id
PREFIX: Final = "aiot"
KINDS: Final = ("readings", "decisions", "commands", "alerts", "devices", "health", "status")
# What the exporter sends exactly once, into the site's stream; health and
# status are last values, in the site's health stream (``health_stream_name``).
EXPORT_KINDS: Final = ("readings", "decisions", "commands", "alerts", "devices")
SITE_ID: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_MSG_ID: Final = re.compile(r"([a-z0-9][a-z0-9-]{0,31}):([0-9]{1,19}):([0-9]{1,6})/([0-9]{1,6})")

# A readings message holds at most this many rows (about 15 KiB of JSON,
# well under the cloud's 1 MB message limit).
MAX_ROWS: Final = 1000


class CloudFormatError(ValueError):
    """A subject, message id or payload outside this format."""


def check_site(site: str) -> str:
    if not SITE_ID.fullmatch(site):
        raise CloudFormatError(
            f"site id {site!r}: 1 to 32 of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return site


def token(key: str) -> str:
    """A device or node id as one subject token."""
    if not key or any(c.isspace() or c in "*>%" for c in key):
        raise CloudFormatError(f"{key!r} cannot be a subject token")
    return key.replace(".", "%2E")


def untoken(tok: str) -> str:
    return tok.replace("%2E", ".")


def subject(site: str, kind: str, key: str | None = None) -> str:
    if kind not in KINDS:
        raise CloudFormatError(f"kind {kind!r}: want one of {', '.join(KINDS)}")
    base = f"{PREFIX}.{check_site(site)}.{kind}"
    return base if key is None else f"{base}.{token(key)}"


def stream_name(site: str) -> str:
    """The site's stream in the cloud: ``AIOT_SITE_<SITE>``."""
    return "AIOT_SITE_" + check_site(site).upper().replace("-", "_")


def stream_subjects(site: str) -> list[str]:
    """What the site's stream holds: the exported kinds."""
    return [f"{PREFIX}.{check_site(site)}.{kind}.>" for kind in EXPORT_KINDS]


def health_stream_name(site: str) -> str:
    """The site's health stream: ``AIOT_HEALTH_<SITE>``, each node's health
    (and the site's status) as last values, outside the exactly-once chain."""
    return "AIOT_HEALTH_" + check_site(site).upper().replace("-", "_")


def health_subjects(site: str) -> list[str]:
    return [f"{PREFIX}.{check_site(site)}.health.>", f"{PREFIX}.{site}.status"]


def health_payload(site: str, node_id: str, index: int, body: dict[str, Any]) -> bytes:
    """A node's health: ``index`` is its applied Raft index when it reported."""
    return _dump(
        {"v": SCHEMA, "kind": "health", "site": site, "index": index, "node": node_id, **body}
    )


@dataclass(frozen=True, slots=True, order=True)
class MsgId:
    site: str
    index: int
    part: int
    parts: int

    def __str__(self) -> str:
        return f"{self.site}:{self.index}:{self.part}/{self.parts}"

    @property
    def last(self) -> bool:
        """The entry's last message."""
        return self.part == self.parts - 1


def msg_id(site: str, index: int, part: int = 0, parts: int = 1) -> MsgId:
    if index < 1 or not 0 <= part < parts:
        raise CloudFormatError(f"message id: index {index}, part {part} of {parts}")
    return MsgId(check_site(site), index, part, parts)


def parse_msg_id(text: str) -> MsgId:
    found = _MSG_ID.fullmatch(text)
    if found is None:
        raise CloudFormatError(f"{text!r} is not a message id <site>:<index>:<part>/<parts>")
    site, index, part, parts = found.groups()
    return msg_id(site, int(index), int(part), int(parts))


def f32(value: float) -> float:
    """The shortest decimal that reads back as the same 32-bit float."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


Row = tuple[int, int, int, float]  # seq, ts_ms, sensor, value


def readings_payloads(
    site: str, index: int, device_id: str, rows: Sequence[Row], max_rows: int = MAX_ROWS
) -> list[bytes]:
    """The payloads that carry ``rows`` (in seq order), ``max_rows`` at most each."""
    out = []
    for at in range(0, len(rows), max_rows):
        chunk = rows[at : at + max_rows]
        seq0, ts0 = chunk[0][0], min(r[1] for r in chunk)
        body = {
            "v": SCHEMA,
            "kind": "readings",
            "site": site,
            "index": index,
            "device": device_id,
            "seq0": seq0,
            "ts0": ts0,
            "rows": [[s - seq0, t - ts0, sensor, f32(v)] for s, t, sensor, v in chunk],
        }
        out.append(_dump(body))
    return out


def event_payload(site: str, index: int, kind: str, body: dict[str, Any]) -> bytes:
    if kind not in KINDS or kind == "readings":
        raise CloudFormatError(f"kind {kind!r} is not an event kind")
    return _dump({"v": SCHEMA, "kind": kind, "site": site, "index": index, **body})


def _dump(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Readings:
    site: str
    index: int
    device_id: str
    rows: tuple[Row, ...]


def decode(payload: bytes) -> dict[str, Any]:
    """A payload as a JSON object with its ``v``, ``kind``, ``site`` and ``index`` checked."""
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CloudFormatError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != SCHEMA:
        raise CloudFormatError(f"not a schema {SCHEMA} message")
    if body.get("kind") not in KINDS or not isinstance(body.get("index"), int):
        raise CloudFormatError("kind or index missing")
    check_site(str(body.get("site")))
    return body


def decode_readings(payload: bytes) -> Readings:
    body = decode(payload)
    if body["kind"] != "readings":
        raise CloudFormatError(f"a {body['kind']} message, not readings")
    try:
        seq0, ts0 = int(body["seq0"]), int(body["ts0"])
        rows = tuple(
            (seq0 + int(ds), ts0 + int(dt), int(sensor), float(v))
            for ds, dt, sensor, v in body["rows"]
        )
        return Readings(body["site"], body["index"], str(body["device"]), rows)
    except (KeyError, TypeError, ValueError) as exc:
        raise CloudFormatError(f"readings: {exc}") from None


def rows_of(readings: Iterable[Readings]) -> list[Row]:
    return [r for x in readings for r in x.rows]
