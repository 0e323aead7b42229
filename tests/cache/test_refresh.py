"""Background refreshes: one at a time per key, a plain call even for a stream, counted as a
refresh (an upstream call that is no miss)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sluicegate import create_gateway
from sluicegate.cache.admin import invalidate, stats
from sluicegate.cache.answers import Flight
from sluicegate.cache.entry import Entry
from sluicegate.cache.refresh import Refresher
from sluicegate.testing import mock_settings

from .test_stage import ACME_ANN, MESSAGES, chat_calls, engine_of, features, read, send


async def test_a_stream_prompts_a_plain_refresh_counted_as_no_miss(tmp_path: Path) -> None:
    """A stale entry served to a stream is refreshed with a plain call; the refresh counts an
    upstream call and a store, not a miss."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features(stale_while_revalidate_s=600))
    async with create_gateway(settings) as gateway:
        await send(gateway)
        assert gateway.cache is not None and gateway.cache.memory is not None
        await gateway.cache.sql.flush()  # type: ignore[union-attr]
        await gateway.cache.sql.delete_where(org="acme")  # type: ignore[union-attr]
        for entry in gateway.cache.memory.entries():
            entry.expires_at = time.time() - 100
        stale = await send(gateway, stream=True)
        assert stale.headers["x-sluicegate-cache"] == "stale"
        await read(stale)  # an unread stream is a call under way: closing would wait 30 s for it
        await asyncio.sleep(0.1)
        refresh = engine_of(gateway).calls[-1]
        assert refresh.body is not None and "stream" not in refresh.body
        assert chat_calls(gateway) == 2
        row = (await stats(gateway.cache))["features"]["chat"]
        assert (row["misses"], row["upstream_calls"], row["stores"]) == (1, 2, 2)


async def test_no_refresh_while_the_key_is_in_flight(tmp_path: Path) -> None:
    """`start` leaves a key alone while an identical call is in flight in this process."""
    async with create_gateway(mock_settings(data_dir=tmp_path / "data", features=features())) as gateway:
        cache = gateway.cache
        assert cache is not None
        refresher = Refresher(gateway.send, cache, None)  # type: ignore[arg-type]  # never reached
        call = gateway.new_call("chat", {"model": "gpt-4o-mini", "messages": MESSAGES}, ACME_ANN)
        policy = cache.policy("chat")
        key = cache.key(call, policy)
        cache.flights[key.key] = Flight()
        refresher.start(
            call, key, policy, Entry("chat", b"{}", 0.0, 1.0, '"e"', "chat", "acme", "ann", "m"), "memory"
        )
        await asyncio.sleep(0.05)
        assert chat_calls(gateway) == 0


async def test_a_refreshed_entry_keeps_its_tags(tmp_path: Path) -> None:
    """The tags a request gave an entry survive its background refresh (prompted by a request
    without them): invalidating the tag still deletes the refreshed entry."""
    settings = mock_settings(data_dir=tmp_path / "data", features=features(stale_while_revalidate_s=600))
    async with create_gateway(settings) as gateway:
        cache = gateway.cache
        assert cache is not None and cache.memory is not None and cache.sql is not None
        body = {"model": "gpt-4o-mini", "messages": MESSAGES, "cache": {"tags": ["q3-report"]}}
        await gateway.send(gateway.new_call("chat", body, ACME_ANN))
        await cache.sql.flush()
        await cache.sql.delete_where(org="acme")
        for entry in cache.memory.entries():
            entry.expires_at = time.time() - 100
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "stale"
        for _ in range(50):
            if chat_calls(gateway) == 2 and not cache.flights:
                break
            await asyncio.sleep(0.02)
        assert [entry.tags for entry in cache.memory.entries()] == [("q3-report",)]
        deleted = await invalidate(cache, tag="q3-report")
        assert deleted["deleted"]["memory"] == 1
        assert (await send(gateway)).headers["x-sluicegate-cache"] == "miss"


async def test_identical_calls_during_a_refresh_get_the_stale_entry_at_once(tmp_path: Path) -> None:
    """With no in-process copy (the feature keeps its entries in SQL only), identical calls
    arriving while an entry is refreshed in the background are answered from the stale entry
    at once, not after the refresh's upstream call (nor, when another process holds the
    refresh, with upstream calls of their own)."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        features={
            "chat": {
                "cache": {"ttl_s": 1, "cost_aware": False, "stale_while_revalidate_s": 600, "tiers": ["sql"]}
            }
        },
        cache={"ttl": {"min_ttl_s": 1}},
        providers={"upstream": {"kind": "mock", "mock": {"latency": 1000}}},
    )
    async with create_gateway(settings) as gateway:
        await send(gateway)
        await asyncio.sleep(1.1)  # its TTL, 1 s from its store
        first = await send(gateway)
        assert first.headers["x-sluicegate-cache"] == "stale"
        started = time.perf_counter()
        replies = await asyncio.gather(*(send(gateway) for _ in range(5)))
        assert time.perf_counter() - started < 0.5  # not after the refresh's 1 s
        assert {reply.headers["x-sluicegate-cache"] for reply in replies} == {"stale"}
        await asyncio.sleep(1.2)
        assert chat_calls(gateway) == 2  # the first answer and one refresh
