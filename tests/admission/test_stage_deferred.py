"""The rate limits sent with the cache's lookup: one round trip for both, and a refused request
is answered by nothing (neither tier, nor the upstream), leaves no lock behind, and still
carries its headers."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sluicegate import Gateway, RequestContext, create_gateway
from sluicegate.admission.redis_limits import ADMIT
from sluicegate.cache.redis_tier import LOOKUP
from sluicegate.calls import Reply
from sluicegate.errors import RateLimited
from sluicegate.store.redis import create_redis
from sluicegate.store.redis_wire import Wire
from sluicegate.testing import mock_settings
from sluicegate.upstream.mock import MockEngine

ANN = RequestContext("acme", "ann", "insights")
BOB = RequestContext("acme", "bob", "insights")
FEATURES = {"insights": {"cache": {"scope": "org", "ttl_s": 3600, "tiers": ["memory", "redis"]}}}


def settings_for(tmp_path: Path, redis_url: str, limit: int, **limits: Any) -> Any:
    return mock_settings(
        data_dir=tmp_path,
        redis={"url": redis_url},
        features=FEATURES,
        ledger={"enabled": False},
        limits={"requests": [{"per": "user", "limit": limit, "window_s": 600}], **limits},
    )


def upstream_calls(gateway: Gateway) -> int:
    engine: MockEngine = gateway.providers["upstream"].transport.engine  # type: ignore[attr-defined]
    return sum(1 for c in engine.calls if c.path.endswith("/chat/completions"))


async def ask(gateway: Gateway, context: RequestContext, question: str) -> Reply:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    return await gateway.send(gateway.new_call("chat", body, context))


def record_writes(wire: Wire) -> list[bytes]:
    """Record the wire's writes (each carries every command of one loop turn)."""
    writes: list[bytes] = []
    original = wire._write

    def recorded(protocol: Any) -> None:
        if wire._out:
            writes.append(b"".join(wire._out))
        original(protocol)

    wire._write = recorded  # type: ignore[method-assign]
    return writes


def sha(source: str) -> bytes:
    return hashlib.sha1(source.encode()).hexdigest().encode()


async def test_a_miss_sends_the_limits_with_the_lookup_in_one_write(redis_url: str, tmp_path: Path) -> None:
    async with create_gateway(settings_for(tmp_path, redis_url, 10)) as gateway:
        await ask(gateway, ANN, "warm the connection")
        assert gateway.cache is not None and gateway.cache.redis is not None
        wire = gateway.cache.redis.redis.wire  # type: ignore[attr-defined]
        assert wire is not None
        writes = record_writes(wire)
        reply = await ask(gateway, ANN, "a question nobody asked")
        assert reply.headers["x-sluicegate-cache"] == "miss"
        assert reply.headers["ratelimit"] == '"user-600";r=8;t=600'
    limits = [write for write in writes if sha(ADMIT) in write]
    assert len(limits) == 1 and sha(LOOKUP) in limits[0]  # one round trip for both


async def test_over_the_limit_no_tier_answers_and_no_lock_is_left(redis_url: str, tmp_path: Path) -> None:
    async with create_gateway(settings_for(tmp_path, redis_url, 2)) as gateway:
        assert gateway.cache is not None and gateway.cache.memory is not None
        await ask(gateway, ANN, "q1")
        await ask(gateway, ANN, "q2")
        with pytest.raises(RateLimited) as in_memory:  # an entry in process
            await ask(gateway, ANN, "q1")
        gateway.cache.memory.clear()
        with pytest.raises(RateLimited) as in_redis:  # an entry in Redis
            await ask(gateway, ANN, "q2")
        with pytest.raises(RateLimited) as nowhere:  # a miss, which took the lock in its lookup
            await ask(gateway, ANN, "q3")
        assert upstream_calls(gateway) == 2
        for refused in (in_memory, in_redis, nowhere):
            assert refused.value.headers["ratelimit"].startswith('"user-600";r=0;t=')
            assert refused.value.headers["ratelimit-policy"] == '"user-600";q=2;w=600'
            assert int(refused.value.headers["retry-after"]) > 0
        # The refused miss's lock is released: bob leads at once, not after the lock's lease.
        redis: Redis = create_redis(redis_url)
        try:
            for _ in range(50):
                if not [key async for key in redis.scan_iter("sg:c:*:lock")]:
                    break
                await asyncio.sleep(0.02)
            assert not [key async for key in redis.scan_iter("sg:c:*:lock")]
        finally:
            await redis.aclose()
        reply = await ask(gateway, BOB, "q3")
        assert reply.headers["x-sluicegate-cache"] == "miss"
        # (ann's refused lookup promoted the entry to the in-process tier: not an answer)
        assert (await ask(gateway, BOB, "q2")).headers["x-sluicegate-cache"] == "hit-memory"
        assert upstream_calls(gateway) == 3


async def test_with_redis_unreachable_the_deferred_limits_count_locally(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "redis://127.0.0.1:1/0", 4, local_share=0.5, redis_timeout_ms=200)
    async with create_gateway(settings) as gateway:
        answered = refused = 0
        for n in range(5):
            try:
                await ask(gateway, ANN, f"question {n}")
                answered += 1
            except RateLimited:
                refused += 1
    assert (answered, refused) == (2, 3)


async def test_identical_calls_waiting_on_a_refused_leader_share_one_call(
    redis_url: str, tmp_path: Path
) -> None:
    """The leader of identical calls is refused by its rate limit after they joined it (its
    lookup was slow): they look again, one leads, the others wait for it, and its answer is
    stored (before, each went upstream alone and nothing was stored)."""
    async with create_gateway(settings_for(tmp_path, redis_url, 1)) as gateway:
        cache = gateway.cache
        assert cache is not None
        await ask(gateway, ANN, "ann's one request")
        original = cache.lookup

        async def slow_lookup(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.05)
            return await original(*args, **kwargs)

        cache.lookup = slow_lookup  # type: ignore[method-assign]
        before = upstream_calls(gateway)
        refused = asyncio.ensure_future(ask(gateway, ANN, "the same question"))
        await asyncio.sleep(0.01)
        others = [RequestContext("acme", f"user{n}", "insights") for n in range(5)]
        replies = await asyncio.gather(*(ask(gateway, other, "the same question") for other in others))
        with pytest.raises(RateLimited):
            await refused
        assert upstream_calls(gateway) == before + 1
        assert sum(reply.headers.get("x-sluicegate-coalesced") == "true" for reply in replies) == 4
        cache.lookup = original  # type: ignore[method-assign]
        again = await ask(gateway, RequestContext("acme", "zoe", "insights"), "the same question")
        assert again.headers["x-sluicegate-cache"] == "hit-memory"
