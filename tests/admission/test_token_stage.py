"""The token-limit stage through the gateway: a miss's worst case is taken, unused tokens come
back, a refusal is a 429 of type ``tokens``, cached answers use none, and Redis down falls back
to the replica's share."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sluicegate import AllUpstreamsFailed, RequestContext, create_gateway
from sluicegate.accounting.ledger import estimate_prompt_tokens
from sluicegate.admission.redis_tokens import RedisTokens
from sluicegate.admission.token_bucket import Taken, token_checks
from sluicegate.admission.token_stage import LimitTokens
from sluicegate.calls import Call, Reply, Usage
from sluicegate.config import TokenLimit
from sluicegate.errors import TokensLimited, UpstreamTimeout
from sluicegate.store.redis import create_redis
from sluicegate.testing import mock_settings

ACME = RequestContext("acme", "ann", "chat")


def body(text: str, max_tokens: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def settings(tmp_path: Path, tpm: int) -> Any:
    return mock_settings(data_dir=tmp_path, limits={"tokens": [{"per": "org", "tokens_per_minute": tpm}]})


async def test_unused_tokens_come_back_after_the_call(tmp_path: Path) -> None:
    """A call asking 2,500 of 3,000 tokens leaves room for another once its usage is known."""
    async with create_gateway(settings(tmp_path, 3000)) as gateway:
        first = await gateway.send(gateway.new_call("chat", body("one", 2500), ACME))
        assert first.headers["x-ratelimit-limit-tokens"] == "3000"
        assert 480 <= int(first.headers["x-ratelimit-remaining-tokens"]) <= 500
        second = await gateway.send(gateway.new_call("chat", body("two", 2500), ACME))
        assert second.usage is not None and second.usage.completion_tokens < 2500


async def test_a_call_over_the_limit_is_a_429_of_type_tokens(tmp_path: Path) -> None:
    """Three concurrent calls of about 1,400 tokens against 3,000 a minute: the third waits."""
    async with create_gateway(settings(tmp_path, 3000)) as gateway:
        calls = [gateway.send(gateway.new_call("chat", body(f"q{n}", 1400), ACME)) for n in range(3)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, TokensLimited)]
        assert len(refused) == 1 and sum(isinstance(o, Reply) for o in outcomes) == 2
        error = refused[0]
        assert (error.status_code, error.error_type, error.code) == (429, "tokens", "rate_limit_exceeded")
        assert 1 <= int(error.headers["retry-after"]) <= 60
        assert "at most 3,000 tokens a minute for each org" in error.message
        # What the bucket still holds (about 3,000 less two reservations), not a flat 0.
        assert 0 < int(error.headers["x-ratelimit-remaining-tokens"]) < 1400
        answered = next(n for n, o in enumerate(outcomes) if isinstance(o, Reply))
        cached = await gateway.send(gateway.new_call("chat", body(f"q{answered}", 1400), ACME))
        assert cached.headers["x-sluicegate-cache"].startswith("hit")  # cached: no tokens needed


async def test_with_redis_down_each_replica_holds_its_share(caplog: pytest.LogCaptureFixture) -> None:
    """Redis unreachable: half the bucket per replica, and one warning."""

    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}", usage=Usage(prompt_tokens=10, completion_tokens=190))

    unreachable: Redis = create_redis("redis://127.0.0.1:1/0", timeout=0.2)
    rules = [TokenLimit(per="org", tokens_per_minute=1000)]
    stage = LimitTokens(answer, rules, RedisTokens(unreachable, 0.5), None, 0.5, 4096)
    caplog.set_level(logging.WARNING, "sluicegate.limits")
    admitted = 0
    for n in range(5):
        try:
            await stage(Call("chat", body(f"q{n}", 200), None, ACME, f"r{n}"))  # type: ignore[arg-type]
            admitted += 1
        except TokensLimited:
            pass
    assert admitted == 2  # 500 tokens held here: two calls of about 205
    assert sum("token limits: Redis is unreachable" in r.getMessage() for r in caplog.records) == 1
    await unreachable.aclose()


async def test_embeddings_take_their_input_only(tmp_path: Path) -> None:
    """An embedding has no completion: it does not take budgets.default_max_tokens."""
    async with create_gateway(settings(tmp_path, 3000)) as gateway:
        for n in range(3):
            body_ = {"model": "text-embedding-3-small", "input": [f"text {n}"]}
            reply = await gateway.send(gateway.new_call("embeddings", body_, ACME))
            assert int(reply.headers["x-ratelimit-remaining-tokens"]) > 2900


EMBED = {"model": "text-embedding-3-small"}


async def test_an_embedding_over_the_limit_is_told_to_send_a_shorter_input(tmp_path: Path) -> None:
    """It has no max_tokens to lower: the refusal names its input."""
    async with create_gateway(settings(tmp_path, 1000)) as gateway:
        await gateway.send(gateway.new_call("embeddings", {**EMBED, "input": "one " * 700}, ACME))
        with pytest.raises(TokensLimited) as refused:
            await gateway.send(gateway.new_call("embeddings", {**EMBED, "input": "two " * 700}, ACME))
    assert "(its input)" in refused.value.message and refused.value.message.endswith("a shorter input")
    assert "max_tokens" not in refused.value.message


async def test_a_stream_the_client_cuts_gives_back_all_but_what_it_used(tmp_path: Path) -> None:
    """Cut after its first chunks, a stream keeps only its prompt and those chunks' tokens."""
    slow = {"upstream": {"kind": "mock", "mock": {"answer_words": 400, "chunk_interval_ms": 5}}}
    limits = {"tokens": [{"per": "org", "tokens_per_minute": 3000}]}
    async with create_gateway(
        mock_settings(data_dir=tmp_path, limits=limits, providers=slow, cache={"enabled": False})
    ) as gateway:
        call = gateway.new_call("chat", {**body("cut me", 2500), "stream": True}, ACME)
        reply = await gateway.send(call)
        assert reply.stream is not None
        async for _ in reply.stream:
            break  # the client leaves
        await reply.stream.aclose()
        await asyncio.sleep(0.1)  # the give-back runs in the background
        second = await gateway.send(gateway.new_call("chat", body("next", 2500), ACME))
        assert second.usage is not None  # admitted: the cut stream's worst case came back


async def test_unused_tokens_go_back_where_they_were_taken() -> None:
    """A call counted in Redis gives its unused tokens back to Redis even when Redis failed for
    another call meanwhile; the other call's, taken from this replica's share, go back there."""
    given_back: list[int] = []

    class FlakyRedis:
        calls = 0

        async def take(self, checks: Any, cost: int) -> Taken:
            FlakyRedis.calls += 1
            if FlakyRedis.calls > 1:
                raise ConnectionError("Redis went away")
            return Taken(True, remaining=800)

        async def give_back(self, checks: Any, tokens: int) -> None:
            given_back.append(tokens)

    async def answer(call: Call) -> Reply:
        if call.request_id == "first":  # while it is upstream, Redis fails for another call
            await stage(Call("chat", body("second", 200), None, ACME, "second"))  # type: ignore[arg-type]
        return Reply(body=b"{}", usage=Usage(prompt_tokens=10, completion_tokens=90))

    rules = [TokenLimit(per="org", tokens_per_minute=1000)]
    stage = LimitTokens(answer, rules, FlakyRedis(), None, 0.5, 4096)  # type: ignore[arg-type]
    await stage(Call("chat", body("first", 200), None, ACME, "first"))  # type: ignore[arg-type]
    assert len(given_back) == 1 and 100 <= given_back[0] <= 115  # the first call's, to Redis
    checks = token_checks(rules, ACME)
    # The second call's unused tokens came back to the local share (500): 100 are used.
    assert stage._local.take(checks, 395, time.time()).admitted


async def test_tokens_used_beyond_the_reservation_are_taken_too() -> None:
    """A prompt far longer than its estimate (say, a tool's description) is charged when its
    usage is known: the bucket counts every token used, not just the estimate."""

    async def answer(call: Call) -> Reply:
        return Reply(body=b"{}", usage=Usage(prompt_tokens=900, completion_tokens=5))

    rules = [TokenLimit(per="org", tokens_per_minute=1000)]
    stage = LimitTokens(answer, rules, None, None, 1.0, 4096)
    await stage(Call("chat", body("hi", 5), None, ACME, "r1"))  # type: ignore[arg-type]
    checks = token_checks(rules, ACME)
    assert not stage._local.take(checks, 200, time.time()).admitted  # 905 used of 1,000


async def test_a_503_after_every_upstream_failed_still_says_what_the_buckets_hold(tmp_path: Path) -> None:
    """The token headers the stage adds to an error survive the degrade stage's 503."""
    settings = mock_settings(
        data_dir=tmp_path,
        limits={"tokens": [{"per": "org", "tokens_per_minute": 100_000}]},
        providers={"upstream": {"kind": "mock", "mock": {"error_rate": 1.0, "error_status": 503}}},
        resilience={"retry": {"max_attempts": 1}},
    )
    async with create_gateway(settings) as gateway:
        with pytest.raises(AllUpstreamsFailed) as failed:
            await gateway.send(gateway.new_call("chat", body("down", 100), ACME))
    assert failed.value.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "retry-after" in failed.value.headers


@pytest.mark.parametrize("sent", [True, False])
async def test_a_call_that_timed_out_upstream_keeps_its_prompt_taken(sent: bool) -> None:
    """The provider had the prompt when the gateway stopped waiting: as the ledger bills it,
    each such attempt's prompt stays taken and the rest comes back. A timeout before the
    request left gives everything back."""

    async def time_out(call: Call) -> Reply:
        for _ in range(2):  # two attempts (a retry), as the provider records them
            if sent:
                call.timed_out = (*call.timed_out, call.route)
        raise UpstreamTimeout("provider p: the upstream did not answer in time", sent=sent)

    rules = [TokenLimit(per="org", tokens_per_minute=1000)]
    stage = LimitTokens(time_out, rules, None, None, 1.0, 4096)
    with pytest.raises(UpstreamTimeout):
        await stage(Call("chat", body("slow " * 100, 500), None, ACME, "r1"))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # the give-back runs in the background
    checks = token_checks(rules, ACME)
    prompt = estimate_prompt_tokens(body("slow " * 100, 500))
    assert 100 < prompt < 500
    free = 1000 - (2 * prompt if sent else 0)
    assert stage._local.take(checks, free, time.time()).admitted
    assert not stage._local.take(checks, 1, time.time()).admitted


async def test_a_huge_call_holds_one_bucket_and_cannot_lock_the_org_out(
    redis_url: str, tmp_path: Path
) -> None:
    """max_tokens 2,147,483,647 times n 128 is let through on a full bucket; it holds at most
    the bucket, the settlement charges what it used, and the next call is admitted (before, its
    worst case sank the bucket into a debt of centuries, and Redis's PEXPIRE overflowed)."""
    settings = mock_settings(
        data_dir=tmp_path,
        redis={"url": redis_url},
        limits={"tokens": [{"per": "org", "tokens_per_minute": 3000}]},
        cache={"enabled": False},
    )
    async with create_gateway(settings) as gateway:
        huge = {**body("huge", 2**31 - 1), "n": 128}
        first = await gateway.send(gateway.new_call("chat", huge, ACME))
        assert first.headers["x-ratelimit-remaining-tokens"] == "0"
        for _ in range(50):  # the settlement gives back what it did not use
            second = await gateway.send(gateway.new_call("chat", body("small", 10), ACME))
            if int(second.headers["x-ratelimit-remaining-tokens"]) > 1000:
                break
            await asyncio.sleep(0.05)
        assert int(second.headers["x-ratelimit-remaining-tokens"]) > 1000
