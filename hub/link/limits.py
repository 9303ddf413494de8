"""Per-device token buckets: what one device may send, before anything is read.

    limits = DeviceLimits.of(cfg.broker)
    if not limits.admit("status", device_id):   # the consumer, per message
        return                                    # dropped: counted, nothing proposed

One bucket per device and channel (``up``: uplink batches, ``status``,
``ack``: command results), refilled at ``rate`` per second up to ``burst``.
A message that finds its bucket empty is dropped before its HMAC is checked
and before any Raft proposal, and counted in ``dropped`` by channel
(``aiot_device_rate_limited`` in the metrics). Nothing it carried is lost for
a device that keeps to the protocol: an unacknowledged batch is sent again
after the ack timeout, a status again after ``status_ms``, a command result
again when the hub redelivers the command.

The defaults (``[broker] device_*`` in the hub config) sit well above what
the firmware sends (edge/node.py, edge/uplink.py): a status every
``status_ms`` (30 s; 1 s in the tests) and one per connect; one result per
command and its redeliveries; a batch every ``flush_ms`` (2 s), or, while a
backlog drains, one per commit-ack with at most ``window`` (4) in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from hub.core.config import BrokerConfig

CHANNELS: Final = ("up", "status", "ack")
MAX_BUCKETS: Final = 100_000  # past this many, idle (full) buckets are forgotten


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class DeviceLimits:
    """Token buckets per (device, channel)."""

    def __init__(
        self, rates: Mapping[str, Rate], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rates = dict(rates)
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.dropped: Counter[str] = Counter(dict.fromkeys(CHANNELS, 0))

    @classmethod
    def of(cls, cfg: BrokerConfig) -> DeviceLimits:
        return cls(
            {
                "up": Rate(cfg.device_batches_per_s, cfg.device_batch_burst),
                "status": Rate(cfg.device_statuses_per_s, cfg.device_status_burst),
                "ack": Rate(cfg.device_results_per_s, cfg.device_result_burst),
            }
        )

    def admit(self, channel: str, device_id: str) -> bool:
        """Take one token from the device's bucket of ``channel``; False (and
        counted) when it is empty. A channel without a rate is not limited."""
        rate = self.rates.get(channel)
        if rate is None:
            return True
        now = self._clock()
        key = (device_id, channel)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_idle(now)
            b = self._buckets[key] = _Bucket(rate.burst, now)
        else:
            b.tokens = min(rate.burst, b.tokens + (now - b.at) * rate.per_s)
            b.at = now
        if b.tokens >= 1:
            b.tokens -= 1
            return True
        self.dropped[channel] += 1
        return False

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that would be full by now (nothing to remember)."""
        for key, b in list(self._buckets.items()):
            rate = self.rates[key[1]]
            if b.tokens + (now - b.at) * rate.per_s >= rate.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:  # all busy: start over
            self._buckets.clear()
