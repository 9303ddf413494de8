"""How much each fuzz test tries, and what it tried.

Every fuzz test runs a CI-sized number of hypothesis examples by default.
``AIOT_FUZZ_EXAMPLES`` changes that for a longer campaign:

    AIOT_FUZZ_EXAMPLES=5000 pytest tests/fuzz     # 5000 examples per test
    AIOT_FUZZ_EXAMPLES=x20 pytest tests/fuzz      # 20 times each default

An example may feed several inputs (a sequence of uplink messages, a batch
of frames for one MicroPython process); each test counts the inputs it fed,
prints the count, and tests/fuzz/conftest.py lists every count at the end of
the run. docs/BENCHMARKS.md records the counts of the last long campaign.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings

ENV = "AIOT_FUZZ_EXAMPLES"


def examples(default: int) -> int:
    """The number of hypothesis examples for a test whose CI default is ``default``."""
    raw = os.environ.get(ENV, "").strip().lower()
    if not raw:
        return default
    try:
        if raw.startswith("x"):
            return max(1, round(default * float(raw[1:])))
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: want a count (5000) or a factor (x20)") from None


def fuzz_settings(default: int) -> Any:
    """Hypothesis settings for a fuzz test: its example budget, no deadline
    (the machine may be shared), no health check about slow generation."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@dataclass
class Tally:
    """What one fuzz test fed: hypothesis examples, inputs, and inputs by kind."""

    name: str
    examples: int = 0
    inputs: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def example(self) -> None:
        self.examples += 1

    def hit(self, kind: str, n: int = 1) -> None:
        self.inputs += n
        self.kinds[kind] = self.kinds.get(kind, 0) + n

    def note(self, outcome: str) -> None:
        """Count an outcome (not an input): how many inputs reached a path."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def done(self) -> str:
        self.seconds = time.monotonic() - self.started
        RESULTS[self.name] = self
        line = f"fuzz {self.name}: {self.summary()}"
        print(line)
        return line

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        out = f"{self.inputs} inputs, {self.examples} examples, {self.seconds:.1f} s ({kinds})"
        if self.outcomes:
            out += "; outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return out


RESULTS: dict[str, Tally] = {}
