"""The hand-written MQTT 3.1.1 packets (tools/base/mqttwire.py), read back by
amqtt's own packet decoder: the broker the hub embeds."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.adapters import BufferReader
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.publish import PublishPacket
from amqtt.mqtt.subscribe import SubscribePacket

from tools.base import mqttwire

pytestmark = pytest.mark.unit


# MQTT 3.1.1, table 2.4: the bounds of each length of the encoding.
@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_remaining_length_as_the_standard_gives_it(n: int, encoded: str) -> None:
    assert mqttwire.remaining_length(n).hex() == encoded


@pytest.mark.parametrize("n", [-1, 268_435_456])
def test_a_remaining_length_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        mqttwire.remaining_length(n)


def test_a_field_longer_than_its_length_prefix_is_refused() -> None:
    assert mqttwire.string("aé") == b"\x00\x03a\xc3\xa9"
    with pytest.raises(ValueError, match="65535"):
        mqttwire.string(b"x" * 65_536)


def _read(cls: type, raw: bytes) -> object:
    return asyncio.run(cls.from_stream(BufferReader(raw)))


def test_connect_reads_back_with_will_and_login() -> None:
    raw = mqttwire.connect(
        "plug-1", "plug-1", "p" * 200, keepalive=30, will=("aiot/v1/plug-1/status", b"off", 1, True)
    )
    pkt = _read(ConnectPacket, raw)
    assert isinstance(pkt, ConnectPacket)
    assert pkt.fixed_header.remaining_length == len(raw) - 3  # a body over 127 bytes
    assert (pkt.client_id, pkt.username, pkt.password) == ("plug-1", "plug-1", "p" * 200)
    assert pkt.keep_alive == 30
    assert pkt.clean_session_flag and pkt.will_flag and pkt.will_retain_flag
    assert (pkt.will_topic, pkt.will_message, pkt.will_qos) == ("aiot/v1/plug-1/status", b"off", 1)


def test_connect_without_a_will() -> None:
    pkt = _read(ConnectPacket, mqttwire.connect("c", "u", "pw"))
    assert isinstance(pkt, ConnectPacket)
    assert not pkt.will_flag and pkt.keep_alive == 60 and pkt.password == "pw"


@pytest.mark.parametrize(("qos", "pid"), [(0, None), (1, 7), (2, 0xFFFF)])
def test_publish_reads_back(qos: int, pid: int | None) -> None:
    payload = bytes(range(256)) * 3
    pkt = _read(PublishPacket, mqttwire.publish(b"a/b", payload, qos=qos, pid=pid or 0))
    assert isinstance(pkt, PublishPacket)
    assert (pkt.topic_name, pkt.data, pkt.qos, pkt.packet_id) == ("a/b", payload, qos, pid)
    assert not pkt.retain_flag


def test_subscribe_reads_back() -> None:
    pkt = _read(SubscribePacket, mqttwire.subscribe(9, "aiot/v1/plug-1/down"))
    assert isinstance(pkt, SubscribePacket)
    assert pkt.variable_header.packet_id == 9
    assert pkt.payload.topics == [("aiot/v1/plug-1/down", 1)]


def test_the_two_bare_packets() -> None:
    assert mqttwire.packet(0xC0, b"") == mqttwire.PINGREQ
    assert mqttwire.packet(0xE0, b"") == mqttwire.DISCONNECT
