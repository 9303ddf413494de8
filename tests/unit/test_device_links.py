"""tools/lab/links.py: which hub a process is connected to, read from the real
/proc of this process, and the events `aiot device run` prints from it."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tools.lab.links import Link, LinkEvent, LinkTracker, LinkWatch, decode_address

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc"),
]


def test_proc_net_tcp_addresses_decode() -> None:
    # As the kernel prints them on a little-endian machine (each 32-bit word
    # of the address in host order), and on a big-endian one.
    if sys.byteorder == "little":
        v4, v6, mapped = (
            "0100007F:1141",
            "00000000000000000000000001000000:075B",
            "0000000000000000FFFF00000100007F:1883",
        )
    else:
        v4, v6, mapped = (
            "7F000001:1141",
            "00000000000000000000000000000001:075B",
            "00000000000000000000FFFF7F000001:1883",
        )
    assert decode_address(v4) == (ipaddress.ip_address("127.0.0.1"), 0x1141)
    assert decode_address(v6) == (ipaddress.ip_address("::1"), 1883)
    # An IPv4 peer of an IPv6 socket is the IPv4 address.
    assert decode_address(mapped) == (ipaddress.ip_address("127.0.0.1"), 0x1883)


@contextmanager
def listening() -> Iterator[int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


def test_the_watch_finds_this_process_connection_to_one_of_its_hubs() -> None:
    with listening() as a, listening() as b:
        hubs = [["127.0.0.1", a], ["localhost", b]]
        watch = LinkWatch(os.getpid(), hubs)
        assert watch.link() is None  # listening is not connected
        with socket.create_connection(("127.0.0.1", b)) as conn:
            link = watch.link()
            assert link is not None and link.hub == 1  # "localhost" resolved
            assert link.inode == os.stat(f"/proc/self/fd/{conn.fileno()}").st_ino
            with socket.create_connection(("127.0.0.1", a)):
                both = watch.link()  # two links: the first hub in the list
                assert both is not None and both.hub == 0
        assert watch.link() is None  # closed
        # A port no hub has, and a hub name that does not resolve: no link.
        with socket.create_connection(("127.0.0.1", a)):
            assert LinkWatch(os.getpid(), [["127.0.0.1", b]]).link() is None
            assert LinkWatch(os.getpid(), [["no-such-host.invalid", a]]).link() is None


def test_the_watch_reads_ipv6_links() -> None:
    try:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with srv:
        srv.listen(1)
        port = srv.getsockname()[1]
        with socket.create_connection(("::1", port)):
            link = LinkWatch(os.getpid(), [["127.0.0.1", port], ["::1", port]]).link()
            assert link is not None and link.hub == 1


def test_a_process_that_is_gone_has_no_link() -> None:
    gone = 2**22 + 1  # above pid_max's default
    assert LinkWatch(gone, [["127.0.0.1", 1883]]).link() is None


def test_the_tracker_reports_links_that_hold() -> None:
    t = LinkTracker(hold_s=0.5)
    a1, a2, b = Link(0, 11), Link(0, 12), Link(1, 13)
    seen: list[LinkEvent | None] = []
    # (link seen, at second): a link that lasts less than 0.5 s is never
    # reported (a broker that took the connection, then refused the device).
    for link, at in [
        (None, 0.0),
        (a1, 0.2),
        (None, 0.4),
        (a1, 1.0),
        (a1, 1.2),
        (a1, 1.6),  # held 0.6 s: connected
        (a1, 1.8),
        (None, 2.0),
        (b, 2.2),
        (b, 2.4),
        (b, 2.8),  # failover
        (a2, 3.0),
        (a2, 3.6),  # back to hub 0: another failover
        (a2, 4.0),
        (Link(0, 14), 4.2),
        (Link(0, 14), 5.0),  # a new link to the same hub
    ]:
        event = t.update(link, at)
        if event is not None:
            seen.append(event)
    assert seen == [
        LinkEvent("connected", 0, None),
        LinkEvent("failover", 1, 0),
        LinkEvent("failover", 0, 1),
        LinkEvent("reconnected", 0, 0),
    ]
    assert t.hub == 0
