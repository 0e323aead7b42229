"""A forced refresh in one process: the others drop their copy, and serve no older entry of the
key from any tier, even one a shared tier still holds (a write the refresher could not make,
or one still queued)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from sluicegate import RequestContext, create_gateway
from sluicegate.calls import CacheControl
from sluicegate.gateway import Gateway
from sluicegate.testing import mock_settings

CONTEXT = RequestContext("acme", "ann", "insights")
FEATURES = {"insights": {"cache": {"scope": "org", "ttl_s": 3600, "tiers": ["memory", "redis", "sql"]}}}


async def ask(gateway: Gateway, body: dict[str, Any], refresh: bool = False) -> str:
    call = gateway.new_call("chat", body, CONTEXT)
    if refresh:
        call.cache = CacheControl(no_cache=True)
    reply = await gateway.send(call)
    return reply.headers["x-sluicegate-cache"]


@pytest.mark.redis
@pytest.mark.parametrize("shared", ["redis", "sqlite"])
async def test_an_entry_older_than_a_refresh_is_never_served_again(
    tmp_path: Path, redis_url: str, shared: str
) -> None:
    redis = {"url": redis_url} if shared == "redis" else {}
    database = {"url": f"sqlite+aiosqlite:///{tmp_path}/shared.db"}
    settings = [
        mock_settings(data_dir=tmp_path / "data", redis=redis, database=database, features=FEATURES)
        for _ in range(2)
    ]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secrets.token_hex(8)}]}
    async with create_gateway(settings[0]) as a, create_gateway(settings[1]) as b:
        assert await ask(b, body) == "miss"
        assert await ask(b, body) == "hit-memory"
        assert b.cache is not None and a.cache is not None
        key = a.cache.key(a.new_call("chat", body, CONTEXT), a.cache.policy("insights"))
        old = b.cache.memory.peek(key.key) if b.cache.memory is not None else None
        assert old is not None
        await asyncio.sleep(0.01)  # the new entry is made later than the old one
        assert await ask(a, body, refresh=True) == "miss"
        # The shared tiers still hold the old entry (a write that failed, or is still queued):
        # written over the new one once that has landed.
        await asyncio.sleep(0.1)
        if b.cache.redis is not None:
            await b.cache.redis.set(key.key, old, 3600)
        if b.cache.sql is not None:
            await b.cache.sql.flush()
            await b.cache.sql.set(key.key, old, 3600)
        for _ in range(100):  # the message reaches b (at once without Redis: at its next request)
            if b.cache.memory is None or b.cache.memory.peek(key.key) is None:
                break
            await asyncio.sleep(0.01)
        b.cache.bus.drops()
        assert b.cache.memory is not None and b.cache.memory.peek(key.key) is None
        assert await ask(b, body) == "miss"  # not the old entry from a shared tier
        assert await ask(b, body) == "hit-memory"
        entry = b.cache.memory.peek(key.key)
        assert entry is not None and entry.created_at > old.created_at
