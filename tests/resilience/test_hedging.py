"""Tests for sluicegate.resilience.hedging and hedging in RouteCall."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sluicegate.calls import Call, ModelRoute, Reply
from sluicegate.config import FeatureConfig, ResilienceConfig, Settings
from sluicegate.errors import UpstreamError
from sluicegate.resilience.hedging import hedge_delay_s, p95, race
from sluicegate.resilience.stages import RouteCall
from sluicegate.upstream.router import ModelCatalog

from .test_stages import make_call

A = ModelRoute("m", "a", "m")
B = ModelRoute("m", "b", "m")


def test_the_delay_is_the_configured_one_first() -> None:
    assert hedge_delay_s(300, 2000, [5.0] * 50) == 0.3


def test_the_delay_is_the_recent_p95_at_most_half_the_target() -> None:
    fast = [0.05] * 95 + [0.2] * 5
    assert p95(fast) == 0.05
    assert hedge_delay_s(None, 2000, fast) == 0.05
    slow_often = [0.05] * 90 + [3.0] * 10
    assert hedge_delay_s(None, 2000, slow_often) == 1.0  # p95 is 3 s: half the target instead


def test_with_too_few_samples_half_the_target_or_a_second() -> None:
    assert hedge_delay_s(None, 1500, [0.01] * 19) == 0.75
    assert hedge_delay_s(None, None, []) == 1.0


class Upstream:
    """Answers per provider after a delay, or raises."""

    def __init__(self, **plan: Any) -> None:
        self.plan = plan
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, call: Call) -> Reply:
        provider = call.route.provider
        self.started.append(provider)
        delay, outcome = self.plan[provider]
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(provider)
            raise
        if isinstance(outcome, Exception):
            raise outcome
        return Reply(body=provider.encode())


async def test_a_fast_first_reply_sends_no_hedge() -> None:
    upstream = Upstream(a=(0.01, "ok"), b=(0.01, "ok"))
    reply, answered, hedged = await race(upstream, make_call(), A, B, 0.2, lambda: True)
    assert (reply.body, answered.route, hedged, upstream.started) == (b"a", A, False, ["a"])


async def test_a_late_first_reply_is_hedged_and_the_loser_cancelled() -> None:
    upstream = Upstream(a=(5.0, "ok"), b=(0.01, "ok"))
    started = time.perf_counter()
    reply, answered, hedged = await race(upstream, make_call(), A, B, 0.05, lambda: True)
    assert (reply.body, answered.route, answered.attempt, hedged) == (b"b", B, 2, True)
    assert time.perf_counter() - started < 1
    await asyncio.sleep(0)
    assert upstream.cancelled == ["a"]


async def test_no_hedge_without_budget() -> None:
    upstream = Upstream(a=(0.1, "ok"), b=(0.01, "ok"))
    reply, _, hedged = await race(upstream, make_call(), A, B, 0.01, lambda: False)
    assert (reply.body, hedged, upstream.started) == (b"a", False, ["a"])


async def test_when_both_fail_the_last_error_is_raised() -> None:
    upstream = Upstream(
        a=(0.05, UpstreamError("a down", status=503)), b=(0.1, UpstreamError("b down", status=503))
    )
    with pytest.raises(UpstreamError, match="b down"):
        await race(upstream, make_call(), A, B, 0.01, lambda: True)


async def test_a_hedge_that_fails_leaves_the_first_to_answer() -> None:
    upstream = Upstream(a=(0.1, "ok"), b=(0.01, UpstreamError("b down", status=503)))
    reply, answered, hedged = await race(upstream, make_call(), A, B, 0.02, lambda: True)
    assert (reply.body, answered.route, hedged) == (b"a", A, True)


def hedging_route(upstream: Upstream, **feature: Any) -> tuple[RouteCall, ModelCatalog]:
    settings = Settings(
        providers={"a": {"kind": "mock"}, "b": {"kind": "mock"}},
        models={"m": {"provider": "a", "weight": 1e9, "deployments": [{"provider": "b", "weight": 1e-9}]}},
    )
    catalog = ModelCatalog(settings)
    features = {"default": FeatureConfig(hedge=True, **feature)}
    return RouteCall(upstream, catalog, ResilienceConfig(), features, draw=lambda: 0.5), catalog


async def test_route_call_hedges_a_late_deployment() -> None:
    upstream = Upstream(a=(5.0, "ok"), b=(0.01, "ok"))
    stage, catalog = hedging_route(upstream, hedge_after_ms=50)
    call = make_call()
    call.route = catalog.resolve("m")
    reply = await stage(call)
    assert reply.body == b"b" and reply.headers["x-sluicegate-hedge"] == "won"
    assert reply.headers["x-sluicegate-deployment"] == "b/m" and call.route.provider == "b"


async def test_route_call_falls_back_when_the_first_fails_before_hedging() -> None:
    upstream = Upstream(a=(0.01, UpstreamError("a down", status=503)), b=(0.01, "ok"))
    stage, catalog = hedging_route(upstream, hedge_after_ms=500)
    call = make_call()
    call.route = catalog.resolve("m")
    reply = await stage(call)
    assert reply.body == b"b" and "x-sluicegate-hedge" not in reply.headers
    assert upstream.started == ["a", "b"]


async def test_a_client_that_leaves_cancels_every_attempt() -> None:
    upstream = Upstream(a=(5.0, "ok"), b=(5.0, "ok"))
    for delay in (1.0, 0.01):  # before the hedge, and after it
        upstream.cancelled.clear()
        racing = asyncio.ensure_future(race(upstream, make_call(), A, B, delay, lambda: True))
        await asyncio.sleep(0.05)
        racing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await racing
        await asyncio.sleep(0)
        assert sorted(upstream.cancelled) == (["a"] if delay == 1.0 else ["a", "b"])


async def test_every_attempt_of_a_hedged_call_has_a_number_of_its_own() -> None:
    """The first attempt retries while the hedge runs, and the hedge retries too: each upstream
    attempt (one ledger row each, unique on request id and attempt) gets its own number."""
    seen: list[tuple[str, int]] = []

    async def retrying(call: Call) -> Reply:
        for _ in range(3):  # as RetryCall does: an attempt, a wait, the next attempt
            seen.append((call.route.provider, call.attempt))
            await asyncio.sleep(0.03)
            call.next_attempt()
        raise UpstreamError(f"{call.route.provider} down", status=503)

    call = make_call()
    with pytest.raises(UpstreamError):
        await race(retrying, call, A, B, 0.04, lambda: True)
    call.next_attempt()  # RouteCall's next option after the race
    seen.append(("next", call.attempt))
    numbers = [attempt for _, attempt in seen]
    assert len(numbers) == 7 and len(set(numbers)) == 7, seen


async def test_a_winner_and_a_failed_copy_ending_in_the_same_turn_is_the_winner() -> None:
    """The failed copy is not a loser to bill (the ledger bills it nothing), and its error is
    not raised in place of the winner's reply."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + 0.2

    async def both_end_together(call: Call) -> Reply:
        await asyncio.sleep(max(0.0, ends - loop.time()))
        if call.route == B:
            raise UpstreamError("the backup failed", status=500)
        return Reply(body=b"a")

    call = make_call()
    reply, answered, hedged = await race(both_end_together, call, A, B, 0.05, lambda: True)
    assert (reply.body, answered.route, hedged) == (b"a", A, True)
    assert call.losers == []


async def test_routing_by_latency_learns_from_a_hedge_that_won() -> None:
    """The slow first deployment is cancelled when the hedge wins: its time so far counts, so
    the next call goes to the fast one first instead of hedging again and again."""
    upstream = Upstream(a=(1.0, "ok"), b=(0.01, "ok"))
    settings = Settings(
        providers={"a": {"kind": "mock"}, "b": {"kind": "mock"}},
        models={"m": {"provider": "a", "deployments": [{"provider": "b"}]}},
    )
    catalog = ModelCatalog(settings)
    features = {"default": FeatureConfig(hedge=True, hedge_after_ms=50)}
    stage = RouteCall(upstream, catalog, ResilienceConfig(routing="latency"), features)
    first = make_call()
    first.route = catalog.resolve("m")
    assert (await stage(first)).headers["x-sluicegate-hedge"] == "won"
    upstream.started.clear()
    second = make_call()
    second.route = catalog.resolve("m")
    reply = await stage(second)
    assert upstream.started == ["b"] and "x-sluicegate-hedge" not in reply.headers
