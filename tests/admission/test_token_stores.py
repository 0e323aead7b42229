"""Token buckets in the real Redis and in the database (SQLite and PostgreSQL): exact under
concurrency, all or none across a call's limits, and unused tokens given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Protocol

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate.admission.redis_tokens import RedisTokens
from sluicegate.admission.sql_tokens import SqlTokens
from sluicegate.admission.token_bucket import Taken, TokenCheck, token_checks
from sluicegate.calls import RequestContext
from sluicegate.config import TokenLimit
from sluicegate.store.redis import create_redis

# A minute's worth of 1,000,000 tokens: the refill during a test is negligible beside a take.
ORG = TokenLimit(per="org", tokens_per_minute=1_000_000)
KEY = TokenLimit(per="key", tokens_per_minute=10_000_000)
CHECKS = token_checks([ORG, KEY], RequestContext("acme", None, "chat", "k1"))


class Buckets(Protocol):
    async def take(self, checks: Sequence[TokenCheck], cost: int) -> Taken: ...
    async def give_back(self, checks: Sequence[TokenCheck], tokens: int) -> None: ...


@pytest.fixture
async def in_redis(redis_url: str) -> AsyncIterator[Buckets]:
    """The buckets in the real Redis."""
    client: Redis = create_redis(redis_url)
    yield RedisTokens(client, timeout_s=2.0)
    await client.aclose()


@pytest.fixture
def in_database(engine: AsyncEngine) -> Iterator[Buckets]:
    """The buckets in the database: SQLite, then the real PostgreSQL."""
    store = SqlTokens(engine)
    yield store
    store.close()


async def exactly_what_fits_is_taken(buckets: Buckets) -> None:
    taken = await asyncio.gather(*(buckets.take(CHECKS, 100_000) for _ in range(50)))
    assert sum(t.admitted for t in taken) == 10
    refused = next(t for t in taken if not t.admitted)
    assert refused.blocked == 0 and 5 <= refused.retry_after_s <= 7  # 100,000 at 16,667 a second


async def a_refusal_takes_nothing_and_unused_tokens_come_back(buckets: Buckets) -> None:
    assert (await buckets.take(CHECKS, 950_000)).admitted
    refused = await buckets.take(CHECKS, 200_000)
    assert not refused.admitted and 49_000 <= refused.remaining <= 51_000  # what the org has left
    await buckets.give_back(CHECKS, 900_000)  # the call used 50,000 of its 950,000
    again = await buckets.take(CHECKS, 200_000)
    assert again.admitted and 749_000 <= again.remaining <= 751_000


@pytest.mark.redis
async def test_in_redis_exactly_what_fits_is_taken_under_concurrency(in_redis: Buckets) -> None:
    """50 concurrent calls of 100,000 tokens against 1,000,000 a minute: 10 are admitted."""
    await exactly_what_fits_is_taken(in_redis)


@pytest.mark.redis
async def test_in_redis_a_refusal_takes_nothing_and_unused_tokens_come_back(in_redis: Buckets) -> None:
    """All or none across the org's and the key's buckets; a give-back makes room again."""
    await a_refusal_takes_nothing_and_unused_tokens_come_back(in_redis)


async def test_in_the_database_exactly_what_fits_is_taken_under_concurrency(in_database: Buckets) -> None:
    """The same, one transaction per take."""
    await exactly_what_fits_is_taken(in_database)


async def test_in_the_database_a_refusal_takes_nothing_and_unused_tokens_come_back(
    in_database: Buckets,
) -> None:
    """The same, one transaction per take and per give-back."""
    await a_refusal_takes_nothing_and_unused_tokens_come_back(in_database)
