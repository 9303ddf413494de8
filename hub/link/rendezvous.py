"""Rendezvous (highest-random-weight) ordering of hub nodes for a device.

Each device gets its own ordered list of hub nodes: it connects to the first
node's broker and fails over down the list (ARCHITECTURE.md, "MQTT
topology"). ``order`` gives that list. Every (node, device) pair gets a
pseudo-random weight,

    weight = the first 8 bytes of sha256(node_id UTF-8 | 0x00 | device_id UTF-8),
             read as a big-endian unsigned integer,

and the nodes are sorted by weight, highest first (equal weights by node_id,
so the order is total).

Why this scheme:

- **Load spreads evenly.** The weights behave as independent uniform draws,
  so each of n nodes is first for about 1/n of the devices, and, when the
  first fails, its devices spread evenly over the others too (each device's
  second choice is its own), instead of all landing on one neighbour as with
  a fixed list or a ring without virtual nodes.
- **Removing a node moves only that node's devices.** A pair's weight does
  not depend on the other nodes, so dropping a node from the input removes
  it from every list and leaves the relative order of the rest unchanged:
  only the devices that had it first get a new first node. Adding a node
  moves only the devices for which it wins, about 1/(n+1) of them.
- **No shared state.** The order is a pure function of the ids, so the CLI,
  every hub node and a test compute the same list without coordination.

It is deterministic across processes, machines and Python versions: it uses
SHA-256, never ``hash()`` (salted per process for str). The NUL separator
keeps ("ab", "c") and ("a", "bc") apart (node ids cannot contain NUL).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["order", "weight"]


def weight(device_id: str, node_id: str) -> int:
    """The node's weight for the device: a u64, higher is preferred."""
    digest = hashlib.sha256(node_id.encode() + b"\x00" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def order(device_id: str, node_ids: Iterable[str]) -> list[str]:
    """The node ids in the device's rendezvous order: highest weight first,
    equal weights by node_id. A node id given twice appears once."""
    return sorted(set(node_ids), key=lambda n: (-weight(device_id, n), n))
