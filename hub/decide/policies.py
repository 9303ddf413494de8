"""Which policy in words the LLM tier reads for a device (docs/llm.md
"Operator policies").

    p = Policies(cfg.decisions).of_device(store, "heater-3")
    p.text, p.source        # the words, and "api", "config" or "default"

The precedence, first match wins: the replicated policy of the device's
class (set through the API: hub/state/policies.py), the hub config's
``[decisions.policies]`` entry for the class, the config's ``[decisions]
policy``. Nothing here reads the words: the model does. The rules' safety
limits and the guard apply whatever a policy says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from hub.core.config import DecisionsConfig, device_class
from hub.state import policies as table
from hub.state.store import Store

Source = Literal["api", "config", "default"]
SOURCES: Final = ("api", "config", "default")


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy in words a device class gets, and where it comes from;
    ``at_ms`` and ``by`` only for an operator's (``source == "api"``)."""

    text: str
    source: Source
    at_ms: int | None = None
    by: str | None = None


class Policies:
    """The precedence over one hub config's policies and a store's."""

    def __init__(self, cfg: DecisionsConfig) -> None:
        self.cfg = cfg

    @property
    def default(self) -> Policy:
        """``[decisions] policy``: what a class with no policy of its own gets."""
        return Policy(self.cfg.policy, "default")

    def of_class(self, store: Store, cls: str) -> Policy:
        rec = store.read_tables(table.one(cls))
        if rec is not None:
            return Policy(rec.text, "api", rec.at_ms, rec.by)
        text = self.cfg.policy_of_class(cls)
        return self.default if text is None else Policy(text, "config")

    def of_device(self, store: Store, device_id: str) -> Policy:
        """The policy the LLM tier reads for ``device_id``."""
        return self.of_class(store, device_class(device_id))

    def classes(self, store: Store) -> dict[str, Policy]:
        """Every class with a policy of its own (the API's or the config's),
        by name, with its effective policy."""
        names = {c for c, _ in self.cfg.policies} | {
            p.device_class for p in store.read_tables(table.every)
        }
        return {c: self.of_class(store, c) for c in sorted(names)}
