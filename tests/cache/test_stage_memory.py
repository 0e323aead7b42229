"""The cache stage with the in-process tier alone: its miss runs in the stage's own call, without
a lookup in a shared tier, so single-flight, errors, cancellation and the counters are checked
on that path too (test_stage.py covers the path with the SQL tier)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sluicegate import AllUpstreamsFailed, RequestContext, create_gateway
from sluicegate.admission import stop as controls
from sluicegate.cache.admin import stats
from sluicegate.errors import EmergencyStopped
from sluicegate.testing import mock_settings

from .test_stage import chat_calls, engine_of, read, send

ACME_ANN = RequestContext("acme", "ann", "chat")


def memory_only(tmp_path: Path, latency_ms: int = 0, **chat: Any) -> Any:
    """Settings with the in-process tier only (no SQL, no Redis) and a user-scoped `chat`."""
    return mock_settings(
        data_dir=tmp_path / "data",
        cache={"sql": {"enabled": False}},
        features={"chat": {"cache": {"scope": "user", "tiers": ["memory"], **chat}}},
        providers={"upstream": {"kind": "mock", "mock": {"latency": latency_ms}}},
    )


async def test_the_miss_is_stored_in_process_and_counted(tmp_path: Path) -> None:
    """A miss goes upstream once, is kept in process, and counts a miss, an upstream call and
    a store; the same call again is a hit."""
    async with create_gateway(memory_only(tmp_path)) as gateway:
        first = await send(gateway)
        second = await send(gateway)
        assert first.headers["x-sluicegate-cache"] == "miss"
        assert second.headers["x-sluicegate-cache"] == "hit-memory"
        assert first.headers["etag"] == second.headers["etag"]
        assert gateway.cache is not None
        assert gateway.cache.flights == {}
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["misses"], row["upstream_calls"], row["stores"], row["hits_memory"]) == (1, 1, 1, 1)


async def test_concurrent_identical_misses_make_one_upstream_call(tmp_path: Path) -> None:
    """100 identical concurrent calls make one upstream call; the others wait for it."""
    async with create_gateway(memory_only(tmp_path, latency_ms=100)) as gateway:
        replies = await asyncio.gather(*(send(gateway) for _ in range(100)))
        assert chat_calls(gateway) == 1
        assert len({r.body for r in replies}) == 1
        assert sum(r.headers.get("x-sluicegate-coalesced") == "true" for r in replies) == 99
        # Each of the 99 saved the leader's tokens, as a hit would have.
        assert gateway.cache is not None and replies[0].usage is not None
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["coalesced"], row["tokens_saved"]) == (99, 99 * replies[0].usage.total_tokens)


async def test_a_failed_miss_fails_its_followers_and_stores_nothing(tmp_path: Path) -> None:
    """The leader's upstream error reaches the calls that waited for it; nothing is kept, and
    the miss counts without a store."""
    async with create_gateway(memory_only(tmp_path, latency_ms=50)) as gateway:
        engine = engine_of(gateway)
        engine.behaviour = engine.behaviour.model_copy(update={"error_rate": 1.0, "error_status": 503})
        results = await asyncio.gather(*(send(gateway) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, AllUpstreamsFailed) for r in results)
        assert gateway.cache is not None and gateway.cache.memory is not None
        assert len(gateway.cache.memory) == 0 and gateway.cache.flights == {}
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["misses"], row["stores"]) == (1, 0)


async def test_a_cancelled_leader_lets_its_followers_go_on_their_own(tmp_path: Path) -> None:
    """When the client of the call that went upstream leaves, the identical calls waiting for
    it are not left hanging: they go upstream themselves and are answered."""
    async with create_gateway(memory_only(tmp_path, latency_ms=200)) as gateway:
        leader = asyncio.ensure_future(send(gateway))
        await asyncio.sleep(0.05)
        followers = [asyncio.ensure_future(send(gateway)) for _ in range(3)]
        await asyncio.sleep(0.05)
        leader.cancel()
        replies = await asyncio.wait_for(asyncio.gather(*followers), 5)
        assert all(r.status == 200 and r.body for r in replies)
        assert gateway.cache is not None and gateway.cache.flights == {}
        row = (await stats(gateway.cache))["features"]["chat"]
        assert row["upstream_calls"] == chat_calls(gateway)  # the cancelled call's counts too


async def test_no_store_is_not_kept_in_process(tmp_path: Path) -> None:
    """`Cache-Control: no-store` answers are neither kept nor cacheable by the browser."""
    async with create_gateway(memory_only(tmp_path)) as gateway:
        reply = await send(gateway, cache_control="no-store")
        assert reply.headers["cache-control"] == "no-store"
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "miss"


async def test_stale_if_error_serves_the_expired_in_process_entry(tmp_path: Path) -> None:
    """With the in-process tier alone, an expired entry within stale_if_error_s answers an
    upstream failure, marked stale."""
    async with create_gateway(memory_only(tmp_path, stale_if_error_s=600)) as gateway:
        first = await send(gateway)
        assert gateway.cache is not None and gateway.cache.memory is not None
        for entry in gateway.cache.memory.entries():
            entry.expires_at = time.time() - 100
        engine = engine_of(gateway)
        engine.behaviour = engine.behaviour.model_copy(update={"error_rate": 1.0})
        reply = await send(gateway)
        assert reply.headers["x-sluicegate-cache"] == "stale"
        assert reply.body == first.body


async def test_stale_if_error_keeps_to_the_request_s_max_age(tmp_path: Path) -> None:
    """A request that accepts answers at most N seconds old gets the upstream's error rather
    than an older entry; one whose max-age the entry meets gets the entry."""
    async with create_gateway(memory_only(tmp_path, stale_if_error_s=600)) as gateway:
        await send(gateway)
        assert gateway.cache is not None and gateway.cache.memory is not None
        for entry in gateway.cache.memory.entries():
            entry.created_at, entry.expires_at = time.time() - 120, time.time() - 100
        engine = engine_of(gateway)
        engine.behaviour = engine.behaviour.model_copy(update={"error_rate": 1.0})
        with pytest.raises(AllUpstreamsFailed):
            await send(gateway, cache_control="max-age=60")
        reply = await send(gateway, cache_control="max-age=600")
        assert reply.headers["x-sluicegate-cache"] == "stale"


async def test_a_browser_only_feature_keeps_nothing_on_the_server(tmp_path: Path) -> None:
    """A feature cached only in browsers gets the browser headers but no server entry."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features={"prefs": {"cache": {"scope": "user", "tiers": ["browser"], "ttl_s": 600}}},
    )
    async with create_gateway(settings) as gateway:
        context = RequestContext("acme", "ann", "prefs")
        first = await send(gateway, context)
        assert first.headers["x-sluicegate-cache"] == "miss"
        assert first.headers["cache-control"].startswith("private, max-age=")
        assert (await send(gateway, context)).headers["x-sluicegate-cache"] == "miss"
        assert chat_calls(gateway) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_memory_only_streams_and_plain_calls_share_the_entry(tmp_path: Path, stream: bool) -> None:
    """A stream's entry answers a plain call and the other way round, in process."""
    async with create_gateway(memory_only(tmp_path)) as gateway:
        await read(await send(gateway, stream=stream))  # a stream is stored once read to its end
        reply = await send(gateway, stream=not stream)
        assert reply.headers["x-sluicegate-cache"] == "hit-memory"
        assert chat_calls(gateway) == 1


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "memory-and-sql"])
async def test_calls_refused_past_the_cache_are_misses_but_no_upstream_calls(
    tmp_path: Path, shared: bool
) -> None:
    """Under an emergency stop, 10 identical calls (plain and streamed) are 10 misses, and
    neither upstream calls nor answers coalesced from another's call: none reached the provider."""
    settings = memory_only(tmp_path, latency_ms=50)
    if shared:
        settings = mock_settings(data_dir=tmp_path / "data", features={"chat": {"cache": {"scope": "user"}}})
    async with create_gateway(settings) as gateway:
        await controls.set_stop(gateway.engine, "acme", "runaway loop")
        await gateway.controls.refresh()
        calls = [send(gateway, stream=n % 2 == 1) for n in range(10)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, EmergencyStopped) for o in outcomes)
        assert gateway.cache is not None
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["misses"], row["upstream_calls"], row["coalesced"]) == (10, 0, 0)
        assert chat_calls(gateway) == 0


async def test_a_bypassed_call_counts_as_an_upstream_call(tmp_path: Path) -> None:
    """Sampled without cache_temperature: not looked up, not stored, but a call to the provider."""
    async with create_gateway(memory_only(tmp_path)) as gateway:
        await send(gateway, temperature=0.9)
        assert gateway.cache is not None
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["bypass"], row["upstream_calls"], row["misses"]) == (1, 1, 0)
