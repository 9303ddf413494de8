"""Topic layout: valid and invalid pairs."""

from __future__ import annotations

import pytest

from protocol import topics

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("device_id", ["plug-1", "meter.main", "A", "x" * 64, "esp32_3f"])
def test_valid_device_ids_round_trip(device_id: str) -> None:
    for channel in topics.CHANNELS:
        assert topics.parse(topics.topic(device_id, channel)) == (device_id, channel)


@pytest.mark.parametrize("device_id", ["", "+", "#", "a/b", "-lead", "x" * 65, "plug 1", "é"])
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.topic(device_id, "up")


@pytest.mark.parametrize(
    "name",
    [
        "aiot/v1/plug-1",
        "aiot/v2/plug-1/up",
        "aiot/v1/plug-1/sideways",
        "aiot/v1/+/up",
        "aiot/v1/plug-1/up/extra",
        "",
        "/aiot/v1/plug-1/up",
    ],
)
def test_foreign_topics_are_refused(name: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.parse(name)


def test_hub_subscription_filters() -> None:
    assert topics.subscription("up") == "aiot/v1/+/up"
    with pytest.raises(topics.TopicError):
        topics.subscription("nope")
