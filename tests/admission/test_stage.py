"""The rate-limit stage: headers on answers, 429 with Retry-After, and the local share while
Redis is down."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sluicegate import RequestContext, create_gateway
from sluicegate.admission.redis_limits import RedisLimiter
from sluicegate.admission.stage import LimitRequests
from sluicegate.calls import Call, Reply
from sluicegate.config import RequestLimit
from sluicegate.errors import RateLimited, UpstreamError
from sluicegate.observe.alerts import Alerts
from sluicegate.store.redis import create_redis
from sluicegate.testing import mock_settings

ANN = RequestContext("acme", "ann", "chat")


def body(n: int) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {n}"}]}


async def test_answers_carry_the_headers_and_the_limit_refuses_with_429(tmp_path: Path) -> None:
    settings = mock_settings(
        data_dir=tmp_path, limits={"requests": [{"per": "user", "limit": 2, "window_s": 60}]}
    )
    async with create_gateway(settings) as gateway:
        first = await gateway.send(gateway.new_call("chat", body(1), ANN))
        assert first.headers["ratelimit-policy"] == '"user-60";q=2;w=60'
        assert first.headers["ratelimit"] == '"user-60";r=1;t=60'
        await gateway.send(gateway.new_call("chat", body(2), ANN))
        with pytest.raises(RateLimited) as refused:
            await gateway.send(gateway.new_call("chat", body(3), ANN))
        # another user has a log of their own
        other = RequestContext("acme", "bob", "chat")
        assert (await gateway.send(gateway.new_call("chat", body(4), other))).headers["ratelimit"]
    error = refused.value
    assert (error.status_code, error.code) == (429, "rate_limit_exceeded")
    assert 1 <= int(error.headers["retry-after"]) <= 60
    assert "2 requests per 60 s for each user" in error.message


async def test_without_limits_the_stage_is_not_there(tmp_path: Path) -> None:
    async with create_gateway(mock_settings(data_dir=tmp_path)) as gateway:
        reply = await gateway.send(gateway.new_call("chat", body(1), ANN))
    assert "ratelimit" not in reply.headers


async def test_with_redis_down_each_replica_admits_its_share(caplog: pytest.LogCaptureFixture) -> None:
    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}")

    unreachable: Redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    rules = [RequestLimit(per="user", limit=10, window_s=60)]
    stage = LimitRequests(answer, rules, RedisLimiter(unreachable, 0.5), None, local_share=0.5)
    caplog.set_level(logging.WARNING, "sluicegate.limits")
    admitted = 0
    for n in range(8):
        call = Call("chat", body(n), None, ANN, f"r{n}")  # type: ignore[arg-type]
        try:
            await stage(call)
            admitted += 1
        except RateLimited:
            pass
    await unreachable.aclose()
    assert admitted == 5
    warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per request


async def test_with_the_database_unreachable_each_process_counts_its_share() -> None:
    """Limits kept in the database (no Redis) do not turn a database outage into 500s: each
    process admits its share alone, with an alert, and counts in the database again after."""

    class Unreachable:
        async def admit(self, checks: object, member: str) -> object:
            raise ConnectionRefusedError("connection refused")

    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}")

    alerts = Alerts()
    rules = [RequestLimit(per="user", limit=4, window_s=60)]
    stage = LimitRequests(answer, rules, None, Unreachable(), 0.5, alerts)  # type: ignore[arg-type]
    context = RequestContext("acme", "ann", "chat")
    admitted = 0
    for n in range(4):
        try:
            await stage(Call("chat", {"n": n}, None, context, f"r{n}"))  # type: ignore[arg-type]
            admitted += 1
        except RateLimited:
            pass
    assert admitted == 2  # half of 4: this process's share
    assert "database-down:rate-limits" in alerts.active
    await alerts.aclose()


async def test_after_redis_fails_it_is_left_alone_for_a_while() -> None:
    """A stalled Redis costs one request its timeout: the next ones count this replica's share
    without asking it, until the back-off ends."""
    asked = []

    class Stalled:
        async def admit(self, checks: object, member: str) -> object:
            asked.append(member)
            raise TimeoutError("Redis did not answer in time")

    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}")

    alerts = Alerts()
    rules = [RequestLimit(per="user", limit=100, window_s=60)]
    stage = LimitRequests(answer, rules, Stalled(), None, 0.5, alerts)  # type: ignore[arg-type]
    for n in range(10):
        await stage(Call("chat", {"n": n}, None, RequestContext("acme", "ann", "chat"), f"r{n}"))  # type: ignore[arg-type]
    assert asked == ["r0"]
    assert "redis-down:rate-limits" in alerts.active
    await alerts.aclose()


async def test_an_error_answer_carries_the_headers_of_what_it_counted() -> None:
    """The upstream failed, but the request was counted: its answer says so."""

    async def failing(call: Call) -> Reply:
        raise UpstreamError("the provider is down", status=503)

    rules = [RequestLimit(per="user", limit=5, window_s=60)]
    stage = LimitRequests(failing, rules, None, None, 1.0)
    for n, left in ((1, 4), (2, 3)):
        with pytest.raises(UpstreamError) as failed:
            await stage(Call("chat", body(n), None, ANN, f"r{n}"))  # type: ignore[arg-type]
        assert failed.value.headers["ratelimit"] == f'"user-60";r={left};t=60'
