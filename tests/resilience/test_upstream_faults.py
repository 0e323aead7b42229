"""The resilience stages against the mock provider over real HTTP: call counts for each class
of failure, an outage with the breaker and a fallback, a stream cut mid-answer."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sluicegate import AllUpstreamsFailed, Gateway, RequestContext, UpstreamError, create_gateway
from sluicegate.testing import MockUpstream, mock_settings

MESSAGES = [{"role": "user", "content": "Draft an OKR for support"}]
FAST = {"retry": {"base_ms": 5, "cap_ms": 20}}


def settings_for(upstream: MockUpstream, tmp_path: Path, **overrides: Any) -> Any:
    provider = {"kind": "openai", "base_url": upstream.url, "timeouts": {"first_byte": 0.3, "total": 5}}
    values: dict[str, Any] = {
        "providers": {"upstream": provider, "backup": {"kind": "mock"}},
        "resilience": FAST,
        "ledger": {"enabled": False},
    }
    values.update(overrides)
    return mock_settings(upstream.url, data_dir=tmp_path, **values)


@pytest.mark.parametrize(
    ("behaviour", "calls"),
    [
        ({"error_status": 500}, 3),
        ({"error_status": 502}, 3),
        ({"error_status": 503}, 3),
        ({"error_status": 504}, 3),
        ({"error_status": 529}, 3),
        ({"error_status": 408}, 3),
        ({"error_status": 409}, 3),
        ({"error_status": 429, "error_code": "rate_limit_exceeded", "error_retry_after": "0"}, 3),
        ({"error_status": 501}, 1),
        ({"error_status": 400}, 1),
        ({"error_status": 401}, 1),
        ({"error_status": 403}, 1),
        ({"error_status": 404}, 1),
        ({"error_status": 413}, 1),
        ({"error_status": 422}, 1),
        ({"error_status": 429, "error_code": "insufficient_quota"}, 1),
        ({"error_status": 400, "error_code": "content_filter"}, 1),
    ],
)
async def test_upstream_calls_per_failure_class(
    tmp_path: Path, behaviour: dict[str, Any], calls: int
) -> None:
    with MockUpstream() as upstream:
        upstream.behave(error_rate=1.0, **behaviour)
        async with create_gateway(settings_for(upstream, tmp_path)) as gateway:
            with pytest.raises((UpstreamError, AllUpstreamsFailed)):
                await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
        assert len(upstream.calls) == calls


async def test_a_hanging_upstream_is_retried_within_its_timeouts(tmp_path: Path) -> None:
    with MockUpstream() as upstream:
        upstream.behave(hang_rate=1.0)
        async with create_gateway(settings_for(upstream, tmp_path)) as gateway:
            with pytest.raises(AllUpstreamsFailed, match="timeout"):
                await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
        assert len(upstream.calls) == 3


async def test_the_deadline_bounds_retries(tmp_path: Path) -> None:
    """A 1 s deadline with a 0.3 s first-byte timeout: at most 4 attempts fit, and the request
    ends within its deadline."""
    with MockUpstream() as upstream:
        upstream.behave(hang_rate=1.0)
        features = {"default": {"deadline_s": 0.5}}
        resilience = {"retry": {"base_ms": 5, "cap_ms": 20, "max_attempts": 10}}
        settings = settings_for(upstream, tmp_path, features=features, resilience=resilience)
        async with create_gateway(settings) as gateway:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(AllUpstreamsFailed):
                await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
            assert loop.time() - started < 0.8
        assert 1 <= len(upstream.calls) <= 2


async def run_many(gateway: Gateway, count: int, concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Any:
        async with gate:
            call = gateway.new_call(
                "chat", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{index}"}]}
            )
            try:
                return await gateway.send(call)
            except Exception as exc:
                return exc

    return await asyncio.gather(*(one(i) for i in range(count)))


async def test_an_outage_opens_the_breaker_and_the_fallback_answers(tmp_path: Path) -> None:
    """1,000 requests while the upstream answers 503 to everything: it sees at most 1,200 calls
    plus the retry budget's floor, its breaker opens, and every client gets the fallback."""
    models = {
        "gpt-4o-mini": {"provider": "upstream", "fallbacks": ["backup-model"]},
        "backup-model": {"provider": "backup"},
    }
    with MockUpstream() as upstream:
        upstream.behave(error_rate=1.0, error_status=503)
        settings = settings_for(upstream, tmp_path, models=models, cache={"enabled": False})
        async with create_gateway(settings) as gateway:
            replies = await run_many(gateway, 1000, 50)
            assert gateway.breakers.states()["upstream/gpt-4o-mini"] == "open"
        assert len(upstream.calls) <= 1200 + settings.resilience.retry.budget_floor
    failures = [r for r in replies if isinstance(r, Exception)]
    assert failures == []
    assert {r.headers["x-sluicegate-model"] for r in replies} == {"backup-model"}


async def test_an_outage_without_fallback_gets_fast_503s(tmp_path: Path) -> None:
    with MockUpstream() as upstream:
        upstream.behave(error_rate=1.0, error_status=503)
        settings = settings_for(upstream, tmp_path, cache={"enabled": False})
        async with create_gateway(settings) as gateway:
            replies = await run_many(gateway, 1000, 50)
        calls = len(upstream.calls)
    assert all(isinstance(r, AllUpstreamsFailed) for r in replies)
    refused = [r for r in replies if "circuit breaker is open" in r.message]
    assert len(refused) >= 900 and calls <= 100
    assert all(int(r.headers["retry-after"]) >= 1 for r in replies)


async def test_a_stream_cut_after_three_chunks(tmp_path: Path) -> None:
    """The client gets the 3 chunks and an error event; 1 upstream call; nothing cached."""
    with MockUpstream() as upstream:
        upstream.behave(drop_after_chunks=3)
        async with create_gateway(settings_for(upstream, tmp_path)) as gateway:
            context = RequestContext("local")
            body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
            reply = await gateway.send(gateway.new_call("chat", body, context))
            assert reply.stream is not None
            chunks = []
            with pytest.raises(UpstreamError, match=r"cut short|before"):
                async for data in reply.stream:
                    chunks.append(data)
            events = [e for e in b"".join(chunks).split(b"\n\n") if e]
            assert len(events) == 3
            assert len(upstream.calls) == 1
            upstream.behave()
            again = await gateway.send(gateway.new_call("chat", body, context))
            assert again.headers["x-sluicegate-cache"] == "miss"
            assert again.stream is not None
            async for _ in again.stream:
                pass
        assert len(upstream.calls) == 2


async def test_a_feature_timeout_overrides_the_providers(tmp_path: Path) -> None:
    """The provider waits 5 s for a first byte; the feature, 0.1 s: three attempts end quickly."""
    with MockUpstream() as upstream:
        upstream.behave(hang_rate=1.0)
        provider = {"kind": "openai", "base_url": upstream.url, "timeouts": {"first_byte": 5, "total": 30}}
        settings = settings_for(
            upstream,
            tmp_path,
            providers={"upstream": provider},
            features={"default": {"first_byte_timeout_s": 0.1}},
        )
        async with create_gateway(settings) as gateway:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(AllUpstreamsFailed, match="timeout"):
                await gateway.chat(model="gpt-4o-mini", messages=MESSAGES)
            assert loop.time() - started < 2
        assert len(upstream.calls) == 3


async def test_a_fallback_models_answer_is_served_but_not_cached_as_the_asked_models(tmp_path: Path) -> None:
    """While gpt-4o-mini fails, backup-model answers; its answer is not stored under
    gpt-4o-mini's key, so the next identical request asks again instead of getting it for a day."""
    models = {
        "gpt-4o-mini": {"provider": "upstream", "fallbacks": ["backup-model"]},
        "backup-model": {"provider": "backup"},
    }
    with MockUpstream() as upstream:
        upstream.behave(error_rate=1.0, error_status=503)
        async with create_gateway(settings_for(upstream, tmp_path, models=models)) as gateway:
            body = {"model": "gpt-4o-mini", "messages": MESSAGES}
            for _ in range(2):
                reply = await gateway.send(gateway.new_call("chat", body, RequestContext("local")))
                assert reply.headers["x-sluicegate-model"] == "backup-model"
                assert reply.headers["x-sluicegate-cache"] == "miss"
                # Nor may a browser keep it as gpt-4o-mini's answer (or revalidate it as such).
                assert "etag" not in reply.headers and "cache-control" not in reply.headers
            assert gateway.cache is not None and gateway.cache.memory is not None
            assert len(gateway.cache.memory) == 0
