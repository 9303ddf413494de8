"""The live event stream of one hub node: what the dashboard and API clients
watch (`GET /v1/stream`, Server-Sent Events).

    bus = EventBus()
    async with bus.subscribe() as queue:      # per client, bounded
        event = await queue.get()
    bus.publish({"type": "alert", "device_id": "plug-7", ...})

Events are plain JSON objects with ``type`` (reading, status, command,
decision, alert, presence) and ``device_id``. Publishing never blocks: a
client that does not keep up loses its oldest events and gets a ``lagged``
event saying how many.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

QUEUE_SIZE: Final = 1000


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0

    def put(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> dict[str, Any]:
        if self.dropped:
            n, self.dropped = self.dropped, 0
            return {"type": "lagged", "dropped": n}
        return await self.queue.get()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscriber] = set()
        self.published = 0

    @property
    def listening(self) -> bool:
        return bool(self._subs)

    def publish(self, event: dict[str, Any]) -> None:
        self.published += 1
        for s in list(self._subs):
            s.put(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscriber]:
        sub = Subscriber()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
