"""The cache on the real Redis and PostgreSQL, across several gateway processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import openai
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, insert, select

from sluicegate import RequestContext, create_gateway
from sluicegate.cache.entry import Entry
from sluicegate.faults import FaultProxy
from sluicegate.store.redis import create_redis
from sluicegate.store.tables import cache_entries
from sluicegate.testing import MockUpstream, mock_settings
from tests.integration.conftest import GatewayProcess, PrivateRedis, Response, get, post

pytestmark = pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")

FEATURES = {
    "chat": {"cache": {"scope": "user", "ttl_s": 3600}},
    "insights": {"cache": {"scope": "org", "ttl_s": 3600}},
}


def config(upstream: MockUpstream, redis_url: str | None, database_url: str, **extra: Any) -> dict[str, Any]:
    """A gateway config on the HTTP mock, the given stores, and the test features."""
    return {
        "providers": {"upstream": {"kind": "openai", "base_url": upstream.url}},
        "models": {"gpt-4o-mini": {"provider": "upstream"}},
        "redis": {"url": redis_url},
        "database": {"url": database_url},
        "features": FEATURES,
        **extra,
    }


def body(prompt: str = "Draft an OKR for support", **extra: Any) -> dict[str, Any]:
    """A chat request."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


def chat_calls(upstream: MockUpstream) -> int:
    """Chat calls the mock received."""
    return sum(1 for c in upstream.calls if c.path.endswith("/chat/completions"))


async def post_all(
    urls: list[str], payloads: list[dict[str, Any]], headers: dict[str, str]
) -> list[Response]:
    """POST every payload to its URL at once."""

    async def one(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> Response:
        async with session.post(url + "/v1/chat/completions", json=payload, headers=headers) as answer:
            content = await answer.read()
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, content)

    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(*(one(session, u, p) for u, p in zip(urls, payloads, strict=True)))


@pytest.mark.redis
@pytest.mark.postgres
def test_single_flight_across_three_processes(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, database_url: str
) -> None:
    """Identical concurrent requests over 3 processes sharing Redis make at most 1 upstream call per key."""
    with MockUpstream() as upstream:
        upstream.behave(latency=300)
        servers = gateway_processes(config(upstream, redis_url, database_url), count=3)
        prompts = [f"Quarterly plan {i}" for i in range(4)]
        urls, payloads = [], []
        for i in range(60):
            urls.append(servers[i % 3].url)
            payloads.append(body(prompts[i % 4]))
        headers = {"x-sluicegate-feature": "insights"}
        responses = asyncio.run(post_all(urls, payloads, headers))
        assert all(r.status_code == 200 for r in responses)
        sent = [c.body["messages"][0]["content"] for c in upstream.calls if c.body]
        assert sorted(sent) == sorted(prompts), "one upstream call per distinct prompt"
        labels = {r.headers["x-sluicegate-cache"] for r in responses}
        assert labels <= {"miss", "hit-memory", "hit-redis"}


@pytest.mark.redis
@pytest.mark.postgres
def test_namespace_bump_is_seen_by_every_process(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, database_url: str
) -> None:
    """After a bump through any process, the next request in every process misses the old entry."""
    with MockUpstream() as upstream:
        servers = gateway_processes(config(upstream, redis_url, database_url), count=3)
        headers = {"x-sluicegate-feature": "insights"}
        for server in servers:
            post(server.url + "/v1/chat/completions", body(), headers)
        for server in servers:
            hit = post(server.url + "/v1/chat/completions", body(), headers)
            assert hit.headers["x-sluicegate-cache"].startswith("hit-")
        for index, server in enumerate(servers):
            bumped = post(servers[(index + 1) % 3].url + "/api/ai/cache/bump", {"feature": "insights"})
            assert bumped.status_code == 200, bumped.text
            assert bumped.json()["processes_acknowledged"] >= 3
            before = chat_calls(upstream)
            again = post(server.url + "/v1/chat/completions", body(), headers)
            assert again.headers["x-sluicegate-cache"] == "miss"
            assert chat_calls(upstream) == before + 1


@pytest.mark.redis
@pytest.mark.postgres
def test_invalidate_by_tag_and_org_through_the_admin_api(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, database_url: str
) -> None:
    """Deleting by tag or by org empties every tier of every process; stats count hits and misses."""
    with MockUpstream() as upstream:
        servers = gateway_processes(config(upstream, redis_url, database_url), count=2)
        headers = {"x-sluicegate-feature": "insights"}
        tagged = body(cache={"tags": ["q3-report"]})
        for server in servers:
            post(server.url + "/v1/chat/completions", tagged, headers)
        result = post(servers[0].url + "/api/ai/cache/invalidate", {"tag": "q3-report"}).json()
        assert result["deleted"]["redis"] == 1
        # Nothing of the entry survived in any tier of either process: the first asks upstream;
        # the second finds that fresh answer in whichever shared tier has it first.
        labels = [
            post(server.url + "/v1/chat/completions", body(), headers).headers["x-sluicegate-cache"]
            for server in servers
        ]
        assert labels[0] == "miss" and labels[1] in ("miss", "hit-redis", "hit-sql")
        result = post(servers[1].url + "/api/ai/cache/invalidate", {"org": "local"}).json()
        assert result["deleted"]["redis"] == 1
        stats = get(servers[0].url + "/api/ai/cache").json()
        row = stats["features"]["insights"]
        assert row["misses"] >= 2
        assert row["upstream_calls"] == chat_calls(upstream)
        assert stats["tiers"]["redis"]["entries"] == 0


@pytest.mark.redis
@pytest.mark.postgres
def test_openai_sdk_reads_a_replayed_stream_as_the_original(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, database_url: str
) -> None:
    """The openai SDK parses a replayed stream chunk for chunk as it parsed the original."""
    with MockUpstream() as upstream:
        (server,) = gateway_processes(config(upstream, redis_url, database_url))
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")

        def read() -> tuple[list[dict[str, Any]], str]:
            raw = client.chat.completions.with_raw_response.create(**body(), stream=True)
            label = raw.headers["x-sluicegate-cache"]
            return [chunk.model_dump() for chunk in raw.parse()], label

        original, first = read()
        replay, second = read()
        assert (first, second) == ("miss", "hit-memory")
        assert replay == original
        plain = client.chat.completions.create(**body())
        text = "".join(c["choices"][0]["delta"]["content"] or "" for c in original if c["choices"])
        assert plain.choices[0].message.content == text
        assert chat_calls(upstream) == 1


@pytest.mark.redis
async def test_redis_tier_serves_and_compresses(redis_url: str, tmp_path: Path) -> None:
    """With the in-process tier off, a second gateway is answered from Redis; big values are compressed."""
    settings = mock_settings(
        data_dir=tmp_path / "data",
        redis={"url": redis_url},
        features=FEATURES,
        cache={"memory": {"enabled": False}, "sql": {"enabled": False}, "redis": {"compress_min_bytes": 64}},
    )
    context = RequestContext("acme", None, "insights")
    async with create_gateway(settings) as first, create_gateway(settings) as second:
        miss = await first.send(first.new_call("chat", body(), context))
        hit = await second.send(second.new_call("chat", body(), context))
        assert (miss.headers["x-sluicegate-cache"], hit.headers["x-sluicegate-cache"]) == (
            "miss",
            "hit-redis",
        )
        assert hit.body == miss.body
        client: Redis = create_redis(redis_url)
        keys = [k for k in await client.keys("sg:c:*") if not k.endswith((b":lock", b":hits"))]
        assert len(keys) == 1
        assert b"{o:acme}" in keys[0]
        assert (await client.get(keys[0]))[:4] == b"SG1\x01"
        assert await client.ttl(keys[0]) > 0
        await client.aclose()


@pytest.mark.redis
async def test_paused_redis_costs_milliseconds_not_seconds(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """With Redis stopped by SIGSTOP, every request succeeds, p99 under 1 s, and recovery is automatic."""
    settings = mock_settings(data_dir=tmp_path / "data", redis={"url": private_redis.url}, features=FEATURES)
    context = RequestContext("acme", None, "insights")
    async with create_gateway(settings) as gateway:
        assert gateway.cache is not None
        for i in range(5):
            await gateway.send(gateway.new_call("chat", body(f"warm {i}"), context))
        private_redis.pause()
        try:
            latencies = []

            async def one(i: int) -> None:
                started = time.perf_counter()
                reply = await gateway.send(gateway.new_call("chat", body(f"warm {i % 10}"), context))
                assert reply.body
                latencies.append(time.perf_counter() - started)

            for _ in range(4):
                await asyncio.gather(*(one(i) for i in range(50)))
            latencies.sort()
            assert latencies[int(len(latencies) * 0.99)] < 1.0
            assert gateway.cache.status()["tiers"]["redis"]["state"] in ("open", "half-open")  # type: ignore[index]
        finally:
            private_redis.resume()
        await asyncio.sleep(gateway.settings.cache.redis.breaker_open_s + 0.2)
        for i in range(3):
            await gateway.send(gateway.new_call("chat", body(f"after {i}"), context))
        assert gateway.cache.status()["tiers"]["redis"]["state"] == "closed"  # type: ignore[index]


@pytest.mark.postgres
async def test_sql_tier_on_postgres_survives_a_restart_and_purges(database_url: str, tmp_path: Path) -> None:
    """PostgreSQL holds entries across gateways, and purges expired rows in batches."""
    settings = mock_settings(data_dir=tmp_path / "data", database={"url": database_url}, features=FEATURES)
    context = RequestContext("acme", None, "insights")
    async with create_gateway(settings) as gateway:
        first = await gateway.send(gateway.new_call("chat", body(), context))
    async with create_gateway(settings) as gateway:
        hit = await gateway.send(gateway.new_call("chat", body(), context))
        assert hit.headers["x-sluicegate-cache"] == "hit-sql"
        assert hit.body == first.body
        assert gateway.cache is not None
        sql = gateway.cache.sql
        assert sql is not None
        entry = Entry("chat", b"{}", 0.0, 1.0, '"x"', "insights", "acme", None, "gpt-4o-mini")
        rows = [sql._row(f"sg:c:{{o:acme}}:insights:0:gpt-4o-mini:old{i}", entry, 1.0) for i in range(25)]
        async with sql.engine.begin() as conn:
            await conn.execute(insert(cache_entries), rows)
        assert await sql.purge(time.time(), batch=10) == 25
        async with sql.engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(cache_entries))).scalar_one() == 1


async def test_unreachable_database_still_answers(tmp_path: Path, database_url: str) -> None:
    """With the SQL tier's database unreachable (after the gateway started and read its
    controls), requests are answered by the upstream."""
    parts = urlsplit(database_url.replace("postgresql+asyncpg", "http"))
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        settings = mock_settings(
            data_dir=tmp_path / "data",
            database={"url": database_url.replace(f":{parts.port}/", f":{proxy.port}/")},
            features=FEATURES,
        )
        context = RequestContext("acme", None, "insights")
        async with create_gateway(settings) as gateway:
            proxy.cut()
            proxy.reset()
            for i in range(5):
                reply = await gateway.send(gateway.new_call("chat", body(f"prompt {i}"), context))
                assert reply.body
            assert gateway.cache is not None
            assert gateway.cache.status()["tiers"]["sql"]["state"] != "closed"  # type: ignore[index]


def test_embedded_workers_share_bumps_without_redis(
    gateway_processes: Callable[..., list[GatewayProcess]],
) -> None:
    """Without Redis, two workers on SQLite see a bump at once: no old entry is served after it.

    The old entry is more than 3 s old when the bump comes; every answer after it is younger.
    """
    with MockUpstream() as upstream:
        database = "sqlite+aiosqlite:///./data/sluicegate.db"
        (server,) = gateway_processes(config(upstream, None, database, data_dir="data"), workers=2)
        headers = {"x-sluicegate-feature": "insights"}
        # Concurrent requests, so that both workers answer and each keeps the entry in memory.
        warm = asyncio.run(post_all([server.url] * 40, [body()] * 40, headers))
        assert all(r.status_code == 200 for r in warm)
        time.sleep(3.2)  # the old entry is now more than 3 s old
        old = post(server.url + "/v1/chat/completions", body(), headers)
        assert int(old.headers["age"]) >= 3
        assert post(server.url + "/api/ai/cache/bump", {"feature": "insights"}).status_code == 200
        before = chat_calls(upstream)
        after = asyncio.run(post_all([server.url] * 40, [body()] * 40, headers))
        served_old = [
            (r.headers["x-sluicegate-cache"], r.headers["age"], r.headers["x-request-id"][:16])
            for r in after
            if int(r.headers.get("age", "0")) >= 3
        ]
        assert not served_old
        assert 1 <= chat_calls(upstream) - before <= 2  # at most one miss per worker


@pytest.mark.redis
@pytest.mark.parametrize("shared", ["redis", "sqlite"])
def test_a_forced_refresh_reaches_every_workers_memory(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, shared: str
) -> None:
    """Two workers hold an entry in memory; a `no-cache` request through one stores a fresh
    answer, and neither worker serves the old one after it (with Redis: a message on the
    channel; without: the ring in the epoch file). The old entry is more than 3 s old."""
    with MockUpstream() as upstream:
        database = "sqlite+aiosqlite:///./data/sluicegate.db"
        url = redis_url if shared == "redis" else None
        (server,) = gateway_processes(config(upstream, url, database, data_dir="data"), workers=2)
        headers = {"x-sluicegate-feature": "insights"}
        ask = body(f"Refresh me ({shared}, {time.time()})")
        warm = asyncio.run(post_all([server.url] * 40, [ask] * 40, headers))
        assert all(r.status_code == 200 for r in warm)
        time.sleep(3.2)
        fresh = post(server.url + "/v1/chat/completions", ask, {**headers, "cache-control": "no-cache"})
        assert fresh.headers["x-sluicegate-cache"] == "miss"
        time.sleep(0.3)  # the message reaches the other worker
        after = asyncio.run(post_all([server.url] * 40, [ask] * 40, headers))
        ages = sorted(int(r.headers.get("age", "0")) for r in after)
        assert all(r.headers["x-sluicegate-cache"].startswith("hit-") for r in after)
        assert ages[-1] < 3, ages  # none is the old entry
