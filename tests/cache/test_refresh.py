"""Background refreshes: one at a time per key, a plain call even for a stream, counted as a
refresh (an upstream call that is no miss)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sluicegate import create_gateway
from sluicegate.cache.admin import stats
from sluicegate.cache.answers import Flight
from sluicegate.cache.refresh import Refresher
from sluicegate.testing import mock_settings

from .test_stage import ACME_ANN, MESSAGES, chat_calls, engine_of, features, send


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
        refresher.start(call, key, policy, hits=0)
        await asyncio.sleep(0.05)
        assert chat_calls(gateway) == 0
