"""What the HTTP layer needs from the hub node it serves.

The daemon (hub/daemon.py) builds a node that has all of this; the HTTP layer
never imports it. A test can serve the API over any object that has these
members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from hub.decide.engine import DecisionEngine
from hub.decide.explain import Fallback
from hub.decide.registry import ModelRegistry
from hub.link.events import EventBus
from hub.ops.metrics import Observed
from protocol import messages as m


class Node(Observed, Protocol):
    """One hub node, as its HTTP API sees it (and its metrics: ``Observed``)."""

    @property
    def models(self) -> ModelRegistry: ...
    @property
    def engine(self) -> DecisionEngine: ...
    @property
    def events(self) -> EventBus: ...  # the live stream's source (GET /v1/stream)
    @property
    def statuses(self) -> Mapping[str, tuple[m.DeviceStatus, float]]: ...  # last status, time

    def status(self) -> dict[str, Any]:
        """This node's view: raft, broker, ingest, commands (GET /v1/status)."""
        ...


@runtime_checkable
class Asker(Protocol):
    """A node that can also hand ``POST /v1/ask`` a fallback for the questions
    the ledger alone does not answer."""

    def ask_fallback(self) -> Fallback | None: ...
