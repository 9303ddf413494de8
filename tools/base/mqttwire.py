"""MQTT 3.1.1 packets written by hand.

For the few places that speak to a broker on a raw socket rather than
through a client library: the load generator of the benchmarks, the lab's
login probe, and the tests that play a hostile or vanishing client. Only
what those need is here; nothing reads or parses packets.
"""

from __future__ import annotations

from typing import Final

MAX_REMAINING: Final = 268_435_455  # four bytes of seven bits (MQTT 3.1.1, 2.2.3)

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"


def remaining_length(n: int) -> bytes:
    """The fixed header's remaining length: seven bits a byte, least
    significant first, the top bit set on every byte but the last."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"remaining length {n} is outside 0..{MAX_REMAINING}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s: str | bytes) -> bytes:
    """A UTF-8 string (or binary field) with its two-byte length."""
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ValueError(f"a field of {len(raw)} bytes is longer than 65535")
    return len(raw).to_bytes(2, "big") + raw


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: the first byte (type and flags), the length, the body."""
    return bytes([first]) + remaining_length(len(body)) + body


def connect(
    client_id: str,
    user: str,
    password: str,
    *,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
) -> bytes:
    """CONNECT with a clean session, a user name and a password; ``will`` is
    (topic, message, QoS, retain)."""
    flags = 0xC0 | 0x02
    payload = string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + string(message)
    payload += string(user) + string(password)
    return packet(0x10, string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload)


def subscribe(pid: int, topic: str, qos: int = 1) -> bytes:
    return packet(0x82, pid.to_bytes(2, "big") + string(topic) + bytes([qos]))


def publish(
    topic: str | bytes, payload: bytes, qos: int = 0, pid: int = 0, retain: bool = False
) -> bytes:
    """PUBLISH; the packet id goes in only at QoS 1 and 2."""
    body = string(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return packet(0x30 | qos << 1 | retain, body)
