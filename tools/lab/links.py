"""Which of its brokers a device process is connected to, read from Linux's /proc.

The firmware prints nothing while it runs; the kernel knows its sockets.
``/proc/PID/fd`` lists the process's open files (a socket reads as
``socket:[INODE]``), and ``/proc/PID/net/tcp`` and ``tcp6`` list the TCP
sockets of its network namespace with their remote address, state and inode::

    watch = LinkWatch(pid, [["127.0.0.1", 4421], ["pi-2.local", 1883]])
    link = watch.link()          # Link(hub=0, inode=...) or None: no broker link
    tracker = LinkTracker()
    event = tracker.update(link, time.monotonic())   # polled a few times a second
    if event is not None:
        print(event.kind, event.hub)                 # connected, failover, reconnected

A link counts once it has held for ``hold_s``: a broker that accepts the TCP
connection and then refuses the device drops it within milliseconds.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ESTABLISHED = "01"  # the st column of /proc/net/tcp
_RESOLVE_EVERY_S = 5.0  # a hub name that did not resolve is tried again this often


@dataclass(frozen=True, slots=True)
class Link:
    """An established TCP connection to ``hubs[hub]``; ``inode`` tells one
    connection from the next one to the same hub."""

    hub: int
    inode: int


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """``kind``: "connected" (the first link), "failover" (to another hub than
    the last one), "reconnected" (a new link to the same hub)."""

    kind: str
    hub: int
    previous: int | None


def decode_address(field: str) -> tuple[IPAddress, int]:
    """``0100007F:1141`` (or 32 hex digits of IPv6) as /proc/net/tcp prints it:
    each 32-bit word of the address in the host's byte order. An IPv4 address
    mapped into IPv6 comes back as IPv4."""
    hexaddr, _, hexport = field.partition(":")
    raw = bytes.fromhex(hexaddr)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr, int(hexport, 16)


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process ``pid`` holds open (none once it is gone)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    out: set[int] = set()
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:[") and target.endswith("]"):
            out.add(int(target[8:-1]))
    return out


def established(pid: int) -> dict[int, tuple[IPAddress, int]]:
    """inode -> (remote address, port) of every established TCP connection in
    the network namespace of process ``pid``."""
    out: dict[int, tuple[IPAddress, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6 in this kernel, or the process is gone
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == _ESTABLISHED:
                out[int(cols[9])] = decode_address(cols[2])
    return out


def _resolve(host: str, port: int) -> set[IPAddress]:
    """Every address ``host`` resolves to (none if it does not resolve now)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    out: set[IPAddress] = set()
    for info in infos:
        with contextlib.suppress(ValueError):
            addr = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            out.add(addr)
    return out


class LinkWatch:
    """Process ``pid``'s broker link, matched against a device's ``hubs`` list
    (``[[host, port], ...]``, its config's order)."""

    def __init__(self, pid: int, hubs: Sequence[Sequence[Any]]) -> None:
        self.pid = pid
        self.hubs = [(str(h[0]), int(h[1])) for h in hubs]
        self._addrs: list[set[IPAddress]] = [set() for _ in self.hubs]
        self._resolved_at = -_RESOLVE_EVERY_S
        self._resolve()

    def _resolve(self) -> None:
        now = time.monotonic()
        if now - self._resolved_at < _RESOLVE_EVERY_S:
            return
        self._resolved_at = now
        for i, (host, port) in enumerate(self.hubs):
            if not self._addrs[i]:
                self._addrs[i] = _resolve(host, port)

    def link(self) -> Link | None:
        """The process's established connection to one of its hubs, if any
        (the first in the list when it holds more than one)."""
        if not all(self._addrs):
            self._resolve()
        mine = socket_inodes(self.pid)
        found: list[Link] = []
        for inode, (addr, port) in established(self.pid).items():
            if inode not in mine:
                continue
            for i, (_, hub_port) in enumerate(self.hubs):
                if port == hub_port and addr in self._addrs[i]:
                    found.append(Link(i, inode))
                    break
        return min(found, key=lambda link: link.hub) if found else None


class LinkTracker:
    """Turns the link seen at each poll into events: a link that has held for
    ``hold_s`` and is not the last one reported is reported once."""

    def __init__(self, hold_s: float = 0.5) -> None:
        self.hold_s = hold_s
        self._seen: Link | None = None
        self._since = 0.0
        self._reported: Link | None = None
        self.hub: int | None = None  # the hub of the last link reported

    def update(self, link: Link | None, now: float) -> LinkEvent | None:
        if link != self._seen:
            self._seen, self._since = link, now
            return None
        if link is None or link == self._reported or now - self._since < self.hold_s:
            return None
        previous, self._reported, self.hub = self.hub, link, link.hub
        if previous is None:
            return LinkEvent("connected", link.hub, None)
        return LinkEvent("reconnected" if previous == link.hub else "failover", link.hub, previous)
