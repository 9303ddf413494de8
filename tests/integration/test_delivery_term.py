"""Command delivery and the term fence, with real parts in one process: a
one-node pysyncobj replica over LMDB, hub/link/delivery.py, and the device's own
executor (edge/executor.py, on CPython) answering what delivery publishes.

A node that has just rejoined after a partition can stamp a command with its
old view of the term (docs/chaos.md, "Findings"), although the command then
commits in the newer term. The device, which has seen the newer term, would
refuse it as STALE_TERM and the command would never run. Delivery sends a
committed command with at least its own current term, and a STALE_TERM
refusal is resent rather than recorded."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from edge import codec as edge_codec
from edge import executor as edge_executor
from edge.meta import Meta
from hub.link.delivery import Delivery
from hub.state import entries as e
from hub.state.apply import ApplyResult
from hub.state.raft import RaftNode
from protocol import messages as m
from protocol import topics
from protocol.profiles import PLUG_CAPABILITIES
from tools.base.ports import free_port

pytestmark = pytest.mark.integration

DEV = "plug-t"
NODE = "hub-t"
KEY = bytes(range(32))


class Plug:
    """The device: edge/executor.py with its metadata on disk, as on flash."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.meta = Meta(str(home))
        self.acted: list[tuple[str, dict[str, Any]]] = []
        handlers = {
            a: (lambda p, a=a: self.acted.append((a, dict(p))))
            for a in ("relay.set", "limit.set", "sample.set", "ota.update")
        }
        self.ex = edge_executor.Executor(
            DEV, edge_codec.Hmac(KEY), self.meta, handlers, now_ms=lambda: int(time.time() * 1000)
        )
        self.enc = edge_codec.Encoder(640)
        self.answers: list[bytes] = []
        self.terms: list[int] = []

    async def receive(self, topic: str, frame: bytes) -> None:
        assert topic == topics.topic(DEV, "down")
        kind, fields = edge_codec.decode(frame, self.ex.hmac)
        assert kind == "Command"
        self.terms.append(fields["term"])
        res = self.ex.handle(fields)
        if res is not None:
            self.answers.append(bytes(self.ex.seal(res, self.enc)))


async def converse(
    tmp_path: Path, stale_by: int, highest_seen: int = 0, run_s: float | None = None
) -> tuple[Plug, Delivery, list[Any]]:
    """Two commands for one device: the first stamped with the node's term,
    the second ``stale_by`` terms below it. The device starts having seen
    term ``highest_seen``. Run delivery until both are final (or for
    ``run_s`` seconds); return the device, the delivery and both records."""
    loop = asyncio.get_running_loop()
    node = RaftNode(f"127.0.0.1:{free_port()}", [], tmp_path / "raft", secrets.token_hex(24))
    try:
        deadline = time.monotonic() + 30
        while not node.is_ready or not node.status().is_leader:
            assert time.monotonic() < deadline, "the one-node replica did not become leader"
            await asyncio.sleep(0.05)
        plug = Plug(tmp_path / "device")
        if highest_seen:
            plug.meta.highest_term = highest_seen
            plug.meta.save()
        delivery = Delivery(NODE, node, plug.receive, retry_s=0.2)

        def applied(results: list[ApplyResult]) -> None:  # pysyncobj's thread
            loop.call_soon_threadsafe(delivery.notice, results)

        node.on_applied = applied
        now = int(time.time() * 1000)
        device = e.Device(DEV, KEY, PLUG_CAPABILITIES)
        for entry in (
            e.RegisterDevice(device, now),
            e.Presence(DEV, NODE, m.LinkState.ONLINE, now),
        ):
            (res,) = await node.propose(e.encode(entry))
            assert res.error is None, res
        term = node.status().term
        assert term >= stale_by
        ids = ("c-fresh", "c-stale")
        for cid, t, on in ((ids[0], term, False), (ids[1], term - stale_by, True)):
            put = e.PutCommand(cid, DEV, t, "relay.set", (m.Param("on", on),), now, now + 60_000)
            (res,) = await node.propose(e.encode(put))
            assert res.error is None, res

        def records() -> list[Any]:
            return [node.read(lambda s, c=c: s.command(c)) for c in ids]

        task = asyncio.create_task(delivery.run())
        until = time.monotonic() + (run_s if run_s is not None else 60)
        try:
            while time.monotonic() < until:
                if run_s is None and all(r is not None and r.state.final for r in records()):
                    break
                while plug.answers:
                    await delivery.on_result(DEV, plug.answers.pop(0))
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
        # The device's answers to what delivery sent last, before it stopped.
        while plug.answers:
            await delivery.on_result(DEV, plug.answers.pop(0))
        return plug, delivery, records()
    finally:
        node.on_applied = None
        node.close()


def test_a_command_stamped_with_a_stale_term_still_runs_once(tmp_path: Path) -> None:
    plug, delivery, (fresh, stale) = asyncio.run(converse(tmp_path, stale_by=1))
    assert fresh.state is e.LedgerState.DONE and stale.state is e.LedgerState.DONE
    assert stale.command.term == fresh.command.term - 1  # the ledger keeps what was stamped
    # The device ran each once, in order, and never saw a term go down.
    assert plug.acted == [("relay.set", {"on": False}), ("relay.set", {"on": True})]
    assert set(plug.terms) == {fresh.command.term}
    assert plug.ex.stats()["rejected"] == {}
    assert delivery.rejected == {} and delivery.resends == {}


def test_a_stale_term_refusal_is_resent_not_recorded(tmp_path: Path) -> None:
    # The device has seen a term above any this node has: every delivery is
    # refused as STALE_TERM, which the device does not consume, so the ledger
    # records no outcome and delivery keeps resending (until the deadline).
    plug, delivery, (fresh, _) = asyncio.run(
        converse(tmp_path, stale_by=0, highest_seen=10**6, run_s=2.0)
    )
    assert plug.acted == []
    refused = plug.ex.stats()["rejected"]["STALE_TERM"]
    assert refused >= 3 and delivery.resends == {"stale_term": refused}
    assert fresh.state is e.LedgerState.SENT and fresh.result is None
    assert delivery.rejected == {}
