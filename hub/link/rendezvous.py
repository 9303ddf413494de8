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

**Balanced first choices** (``balanced``). Independent draws are even only
on average: with 12 devices on 4 nodes a node is first for 3 of them in
expectation, but 1 or 5 happen (the ids ``plug-0`` .. ``plug-11`` give a
fourth node 2). So the order a device is sent bounds the loads. Of D devices
on N nodes, each node is first for ``floor(D / N)`` devices, and ``D mod N``
of them (the first to fill that share) for one more. The devices are taken
in a given order (the hub uses registration order), and each gets as first
node the highest in its own rendezvous order that still has room. The rest
of the list is the device's rendezvous order without that node, so a failed
node's devices still spread evenly. A node has room until its share is
full, so most devices keep their rendezvous first choice, and a change of
nodes moves little more than the minimum: measured on 1,000 devices, 31 are
not on their rendezvous first of 3 nodes, adding a fourth moves 269 (250 at
the least) and removing one of the 3 moves 340 (333). A device appended to
the order can change the first node of a few others when the shares grow
(1 of 1,000 in the same measure). It is still a pure function of the ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["balanced", "order", "weight"]


def weight(device_id: str, node_id: str) -> int:
    """The node's weight for the device: a u64, higher is preferred."""
    digest = hashlib.sha256(node_id.encode() + b"\x00" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def order(device_id: str, node_ids: Iterable[str]) -> list[str]:
    """The node ids in the device's rendezvous order: highest weight first,
    equal weights by node_id. A node id given twice appears once."""
    return sorted(set(node_ids), key=lambda n: (-weight(device_id, n), n))


def balanced(device_ids: Iterable[str], node_ids: Iterable[str]) -> dict[str, list[str]]:
    """Each device's order with the first choices balanced, the devices taken
    in the given order (a device given twice counts once): every node is
    first for ``floor(D / N)`` or ``ceil(D / N)`` of the D devices (see the
    module's docstring). Empty lists when there is no node."""
    nodes = sorted(set(node_ids))
    devices = list(dict.fromkeys(device_ids))
    if not nodes:
        return {d: [] for d in devices}
    share, extra = divmod(len(devices), len(nodes))
    load = dict.fromkeys(nodes, 0)
    out = {}
    for d in devices:
        ranked = order(d, nodes)
        # The N shares add up to D, so some node always has room.
        first = next(n for n in ranked if load[n] < share or (load[n] == share and extra > 0))
        if load[first] == share:
            extra -= 1
        load[first] += 1
        out[d] = [first, *(n for n in ranked if n != first)]
    return out
