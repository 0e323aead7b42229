"""The flights identical calls share: what a follower gets of the leader's failure."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.cache.answers import Flight
from sluicegate.errors import BudgetExceeded, UpstreamError


async def test_a_follower_gets_the_leaders_failure_without_the_leaders_buckets() -> None:
    flight = Flight()
    follower = asyncio.ensure_future(flight.wait())
    await asyncio.sleep(0)
    failure = UpstreamError("bad request", status=400).with_headers({"x-ratelimit-remaining-tokens": "95890"})
    flight.fail(failure)
    with pytest.raises(UpstreamError) as got:
        await follower
    assert got.value.message == "bad request" and "x-ratelimit-remaining-tokens" not in got.value.headers
    assert failure.headers["x-ratelimit-remaining-tokens"] == "95890"  # the leader's own, untouched


async def test_a_leaders_own_refusal_sends_the_followers_on_their_own() -> None:
    flight = Flight()
    follower = asyncio.ensure_future(flight.wait())
    await asyncio.sleep(0)
    flight.fail(BudgetExceeded("ann's budget is spent"))
    assert await follower is None
