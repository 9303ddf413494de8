"""A cloud read's two time bounds are told apart: the whole read's deadline,
and one request that nats-py gives up on (it raises TimeoutError too)."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest

from tools.cloud.cluster import CloudError
from tools.cloud.status import run_within


async def unanswered() -> None:
    raise nats.errors.TimeoutError


async def slow() -> None:
    await asyncio.sleep(30)


async def answer() -> int:
    await asyncio.sleep(0)
    return 7


def test_an_unanswered_request_is_not_reported_as_the_deadline() -> None:
    with pytest.raises(CloudError) as err:
        run_within(unanswered(), 300, "reading site west")
    assert str(err.value) == (
        "reading site west: a request to the cloud went unanswered (nats: timeout)"
    )


def test_the_deadline_is_reported_as_the_whole_read_running_over() -> None:
    with pytest.raises(CloudError) as err:
        run_within(slow(), 0.05, "reading site west")
    assert str(err.value) == "reading site west took over 0 s"


def test_a_read_within_its_deadline_returns_its_result() -> None:
    assert run_within(answer(), 5, "reading site west") == 7
