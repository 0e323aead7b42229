"""Rate limits in the real Redis: exact under concurrency, atomic across limits, NOSCRIPT-proof."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from sluicegate.admission.limits import checks_for
from sluicegate.admission.redis_limits import RedisLimiter
from sluicegate.calls import RequestContext
from sluicegate.config import RequestLimit
from sluicegate.store.redis import create_redis

pytestmark = pytest.mark.redis

ANN = RequestContext("acme", "ann", "chat")


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RedisLimiter]:
    client: Redis = create_redis(redis_url)
    yield RedisLimiter(client, timeout_s=2.0)
    await client.aclose()


async def test_exactly_the_limit_is_admitted_under_concurrency(limiter: RedisLimiter) -> None:
    checks = checks_for([RequestLimit(per="user", limit=10, window_s=3600)], ANN)
    verdicts = await asyncio.gather(*(limiter.admit(checks, f"r{n}") for n in range(50)))
    assert sum(v.admitted for v in verdicts) == 10
    refused = next(v for v in verdicts if not v.admitted)
    assert 3590 <= refused.retry_after_s <= 3600 and refused.blocked == 0
    admitted = sorted(v.remaining[0] for v in verdicts if v.admitted)
    assert admitted == list(range(10))


async def test_a_refusal_by_one_limit_logs_nothing_in_the_others(limiter: RedisLimiter) -> None:
    user = RequestLimit(per="user", limit=100, window_s=3600)
    org = RequestLimit(per="org", limit=1, window_s=3600)
    assert (await limiter.admit(checks_for([user, org], ANN), "a")).admitted
    refused = await limiter.admit(checks_for([user, org], ANN), "b")
    assert not refused.admitted and refused.blocked == 1
    # The refusal says what each limit has left: the user's 99, not 0 (the RateLimit header).
    assert refused.remaining == (99, 0) and 3590 < refused.reset_s[0] <= 3600
    assert refused.retry_after_s == refused.reset_s[1] > 0
    alone = await limiter.admit(checks_for([user], ANN), "c")
    assert alone.remaining == (98,)  # "b" was refused, so only "a" counts


async def test_the_window_slides_on_redis_time(limiter: RedisLimiter) -> None:
    checks = checks_for([RequestLimit(per="user", limit=2, window_s=1)], ANN)
    assert (await limiter.admit(checks, "a")).admitted
    assert (await limiter.admit(checks, "b")).admitted
    assert not (await limiter.admit(checks, "c")).admitted
    await asyncio.sleep(1.1)
    assert (await limiter.admit(checks, "d")).admitted


async def test_a_flushed_script_is_loaded_again(limiter: RedisLimiter) -> None:
    checks = checks_for([RequestLimit(per="user", limit=5, window_s=60)], ANN)
    assert (await limiter.admit(checks, "a")).admitted
    await limiter.redis.script_flush()
    verdict = await limiter.admit(checks, "b")
    assert verdict.admitted and verdict.remaining == (3,)
