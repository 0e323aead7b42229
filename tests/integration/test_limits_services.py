"""Rate limits across real gateway processes: 4 processes sharing Redis, and the embedded default
(no Redis) with 2 workers sharing SQLite. 1,000 concurrent requests against a limit of 100 per
hour for one user: exactly 100 are admitted, every time."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

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
        servers = gateway_processes(_config(upstream, tmp_path, redis={"url": redis_url}), count=4)
        for repetition in range(5):
            _check(_burst(servers, user=f"ann-{repetition}"))


def test_exactly_100_of_1000_across_2_workers_without_redis(
    gateway_processes: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    with MockUpstream() as upstream:
        (server,) = gateway_processes(_config(upstream, tmp_path), workers=2)
        _check(_burst([server], user="bob"))
