"""One hub replica (hub/state/raft.py) as a process, for the cluster tests.

    python -m tests.cluster.node --address 127.0.0.1:P --peers 127.0.0.1:Q,... --data DIR

The cluster secret comes from the environment variable AIOT_TEST_SECRET,
never from argv. Control: one JSON object per line on stdin, one answer per
line on stdout (the first line is {"event": "started"}):

    {"op": "status"}                          status, content hash, raft log length
    {"op": "propose", "entries": [hex, ...]}  proposed concurrently; per entry
                                              {"ok": [[outcome, stored, reason], ...]}
                                              or {"error": class, "reason": reason}
    {"op": "watermark", "device": id}         watermark and number of readings
    {"op": "compact"}                         snapshot and compact at the next tick

Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from hub.state.raft import RaftError, RaftNode, RaftTiming
from hub.state.store import Store

TEST_TIMING = RaftTiming(
    append_entries_period=0.05,
    election_min=0.3,
    election_max=0.8,
    connection_timeout=1.0,
    connection_retry=0.3,
    leader_fallback=2.0,
)


async def _propose_one(node: RaftNode, entry: bytes, timeout: float) -> dict[str, Any]:
    try:
        results = await node.propose(entry, timeout)
    except RaftError as exc:
        return {"error": type(exc).__name__, "reason": exc.reason}
    return {"ok": [[r.outcome.value, r.stored, r.reason] for r in results]}


async def handle(node: RaftNode, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "status":
        status = dataclasses.asdict(node.status())
        status["hash"] = node.read(Store.content_hash)
        status["log_len"] = node.raft_status()["log_len"]
        return status
    if op == "propose":
        timeout = float(req.get("timeout", 5.0))
        entries = [bytes.fromhex(h) for h in req["entries"]]
        results = await asyncio.gather(*(_propose_one(node, e, timeout) for e in entries))
        return {"results": list(results)}
    if op == "watermark":
        device = str(req["device"])
        return {
            "watermark": node.read(lambda s: s.watermark(device)),
            "readings": node.read(lambda s: len(s.readings(device))),
        }
    if op == "compact":
        node.compact_now()
        return {"ok": True}
    return {"error": "bad_op", "op": op}


async def serve(node: RaftNode) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    answer({"event": "started"})
    while line := await reader.readline():
        answer(await handle(node, json.loads(line)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--peers", default="")
    ap.add_argument("--data", required=True)
    ap.add_argument("--snapshot-min-entries", type=int, default=10_000)
    ap.add_argument("--snapshot-format", default="image")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    node = RaftNode(
        args.address,
        [p for p in args.peers.split(",") if p],
        args.data,
        os.environ.get("AIOT_TEST_SECRET"),
        snapshot_min_entries=args.snapshot_min_entries,
        snapshot_format=args.snapshot_format,
        timing=TEST_TIMING,
        map_size=64 << 20,
    )
    try:
        asyncio.run(serve(node))
    finally:
        node.close()


if __name__ == "__main__":
    main()
