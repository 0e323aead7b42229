"""Rate limits across real gateway processes: 4 processes sharing Redis, and the embedded default
(no Redis) with 2 workers sharing SQLite. 1,000 concurrent requests against a limit of 100 per
hour for one user: exactly 100 are admitted, every time. And a per-minute token limit is one
bucket across the processes."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from sluicegate.config import MockBehaviour
from sluicegate.testing import MockUpstream
from tests.integration.conftest import GatewayProcess, Response, post

LIMIT = {"per": "user", "limit": 100, "window_s": 3600}


def _config(upstream: MockUpstream, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "data_dir": str(tmp_path / "data"),
        "providers": {"up": {"kind": "openai", "base_url": upstream.url}},
        "models": {"gpt-4o-mini": {"provider": "up"}},
        "limits": {"requests": [LIMIT]},
        **extra,
    }


def _burst(servers: list[GatewayProcess], user: str, total: int = 1000) -> list[Response]:
    def one(n: int) -> Response:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {n}"}]}
        headers = {"x-sluicegate-user": user}
        return post(servers[n % len(servers)].url + "/v1/chat/completions", body, headers)

    with ThreadPoolExecutor(max_workers=250) as pool:
        return list(pool.map(one, range(total)))


def _check(responses: list[Response]) -> None:
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 100, {s: statuses.count(s) for s in set(statuses)}
    assert statuses.count(429) == len(responses) - 100
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) > 3000
    assert refused.headers["ratelimit-policy"] == '"user-3600";q=100;w=3600'
    admitted = next(r for r in responses if r.status_code == 200)
    assert admitted.headers["ratelimit"].startswith('"user-3600";r=')


@pytest.mark.redis
def test_exactly_100_of_1000_across_4_processes_sharing_redis(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, tmp_path: Path
) -> None:
    with MockUpstream() as upstream:
        # Exact counting in Redis is under test here, not the fallback to each process's share
        # when Redis is slower than limits.redis_timeout_ms (300 ms by default, which 250
        # concurrent requests on a loaded 2-core machine can pass): a wider bound.
        limits = {"requests": [LIMIT], "redis_timeout_ms": 3000}
        servers = gateway_processes(
            _config(upstream, tmp_path, redis={"url": redis_url}, limits=limits), count=4
        )
        for repetition in range(5):
            _check(_burst(servers, user=f"ann-{repetition}"))


def test_exactly_100_of_1000_across_2_workers_without_redis(
    gateway_processes: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    with MockUpstream() as upstream:
        (server,) = gateway_processes(_config(upstream, tmp_path), workers=2)
        _check(_burst([server], user="bob"))


def _token_burst(servers: list[GatewayProcess], total: int = 200) -> list[Response]:
    """``total`` concurrent calls of 10,000 tokens each (their max_tokens), distinct prompts."""

    def one(n: int) -> Response:
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 10_000,
            "messages": [{"role": "user", "content": f"t {n}"}],
        }
        return post(servers[n % len(servers)].url + "/v1/chat/completions", body)

    with ThreadPoolExecutor(max_workers=100) as pool:
        return list(pool.map(one, range(total)))


def _check_tokens(responses: list[Response]) -> None:
    statuses = [r.status_code for r in responses]
    # 20 calls empty the bucket; its refill during the burst (3,333 a second) lets a few more in.
    assert 20 <= statuses.count(200) <= 24 and statuses.count(429) == 200 - statuses.count(200), statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "tokens" and int(refused.headers["retry-after"]) >= 1


TOKENS = {"tokens": [{"per": "org", "tokens_per_minute": 200_000}]}
FULL_ANSWERS = MockBehaviour(latency=200, answer_words=12_000)  # cut at max_tokens


@pytest.mark.redis
def test_a_token_limit_is_one_bucket_across_4_processes_sharing_redis(
    gateway_processes: Callable[..., list[GatewayProcess]], redis_url: str, tmp_path: Path
) -> None:
    """200,000 tokens a minute and 200 concurrent calls of 10,000 (answers that use all of them,
    so that no unused tokens come back): one shared bucket admits about 20 in all, where a bucket
    per process would admit 20 in each."""
    with MockUpstream(FULL_ANSWERS) as upstream:
        config = _config(upstream, tmp_path, limits=TOKENS, redis={"url": redis_url})
        _check_tokens(_token_burst(gateway_processes(config, count=4)))


def test_a_token_limit_is_one_bucket_across_2_workers_without_redis(
    gateway_processes: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    """The same on the embedded default: the bucket is a row of SQLite."""
    with MockUpstream(FULL_ANSWERS) as upstream:
        (server,) = gateway_processes(_config(upstream, tmp_path, limits=TOKENS), workers=2)
        _check_tokens(_token_burst([server]))
