"""Writes and reads of this node's replica of the store, answered as HTTP.

Writes become Raft proposals, which pysyncobj forwards to the leader; a
cluster that cannot commit now answers 503 with the Raft reason, and an
entry the store refused answers 404 (an unknown device or command) or 409.
A linearizable read first commits an empty entry through the leader (a
barrier), so it sees everything committed before the request.
"""

from __future__ import annotations

from fastapi import HTTPException

from hub.state import entries as e
from hub.state.apply import ApplyResult
from hub.state.raft import RaftError, RaftNode


def check(res: ApplyResult) -> None:
    """Raise the HTTP answer for an entry the store refused."""
    if res.error is not None:
        code = 404 if res.reason in ("unknown_device", "unknown_command") else 409
        raise HTTPException(code, f"{res.reason}: {res.detail}" if res.detail else res.reason)


async def _propose(raft: RaftNode, entry: bytes) -> tuple[ApplyResult, ...]:
    try:
        return await raft.propose(entry, timeout=10.0)
    except RaftError as exc:
        raise HTTPException(503, f"the cluster did not commit: {exc.reason} {exc}") from None


async def commit(raft: RaftNode, entry: bytes) -> ApplyResult:
    """Commit one entry; 503 when the cluster does not."""
    (res,) = await _propose(raft, entry)
    return res


async def commit_group(raft: RaftNode, parts: list[bytes]) -> None:
    """Commit entries together (one GROUP); 4xx for the first refused part."""
    if parts:
        for res in await _propose(raft, e.group(parts)):
            check(res)


async def barrier(raft: RaftNode) -> None:
    """Wait until this node has applied everything committed before now."""
    try:
        await raft.propose(e.group([]), timeout=10.0)
    except RaftError as exc:
        raise HTTPException(503, f"no linearizable read now: {exc.reason}") from None


def key_ok(key: str) -> bool:
    """A lookup key LMDB can take (1..511 bytes; ids are far shorter)."""
    return 0 < len(key.encode()) <= 255
