"""The daemon's log output: JSON lines by default, plain text on request.

    setup(cfg.log, node_id="hub-1")

A JSON line holds ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``node``,
``msg`` and, for an exception, ``exc``. Third-party loggers (pysyncobj,
aiomqtt's paho, uvicorn) are kept at warning unless the level is debug.

Structured fields: a log call may pass any of ``FIELDS`` (``device``,
``command_id``, ``reason``) as ``extra``; each one present and not empty
becomes a key of the JSON line, so Loki or jq can filter on it without
parsing ``msg``::

    log.warning("ingest rejected device=%s reason=%s", dev, reason,
                extra={"device": dev, "reason": reason})

``msg`` keeps the same words for people reading plain text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

from hub.core.config import LogConfig

# The structured fields a log call may carry (``extra=``), in output order.
FIELDS: Final = ("device", "command_id", "reason")

_NOISY: Final = (
    "pysyncobj",
    "aiomqtt",
    "paho",
    "uvicorn",
    "uvicorn.access",
    "amqtt",
    "transitions",
)


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node_id,
            "msg": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value not in (None, ""):
                out[name] = str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(cfg: LogConfig, node_id: str) -> None:
    """Configure the root logger for the daemon (stderr)."""
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter(node_id))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = getattr(logging, cfg.level.upper())
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level <= logging.DEBUG else logging.WARNING
        )
