"""Tests for sluicegate.resilience.stages and degrade, with a scripted upstream in place of a provider."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from sluicegate.calls import Call, ModelRoute, Reply, RequestContext
from sluicegate.config import FeatureConfig, MockBehaviour, ResilienceConfig, Settings
from sluicegate.errors import (
    AllUpstreamsFailed,
    BudgetExceeded,
    CircuitOpen,
    SluicegateError,
    UpstreamError,
    UpstreamTimeout,
)
from sluicegate.resilience.degrade import Degrade
from sluicegate.resilience.stages import Breakers, GuardDeployment, RetryCall, RouteCall
from sluicegate.upstream.mock import MockEngine, MockTransport
from sluicegate.upstream.providers import Provider
from sluicegate.upstream.router import ModelCatalog

ROUTE = ModelRoute("gpt-4o", "openai", "gpt-4o")


def make_call(*, deadline_in: float = 60.0, stream: bool = False, feature: str = "default") -> Call:
    now = time.perf_counter()
    context = RequestContext("org", feature=feature)
    call = Call("chat", {"model": "gpt-4o", "messages": []}, ROUTE, context, "req_1")
    call.started, call.deadline, call.stream = now, now + deadline_in, stream
    return call


class Script:
    """An upstream that answers from a list: an error to raise, or "ok"."""

    def __init__(self, answers: Iterable[SluicegateError | str]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[ModelRoute, int]] = []

    async def __call__(self, call: Call) -> Reply:
        self.calls.append((call.route, call.attempt))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, SluicegateError):
            raise answer
        if answer == "hang":
            await asyncio.sleep(3600)
        return Reply(body=b"{}")


def status(code: int, **headers: str) -> UpstreamError:
    return UpstreamError(f"upstream {code}", status=code, headers=headers)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def retrying(script: Script, sleeps: Sleeps | None = None, **retry: Any) -> RetryCall:
    config = ResilienceConfig(retry={"base_ms": 100, "cap_ms": 1000, **retry})
    return RetryCall(script, config, Breakers(config), draw=lambda: 0.5, sleep=sleeps or Sleeps())


async def test_a_503_is_retried_until_it_answers() -> None:
    script = Script([status(503), status(503), "ok"])
    sleeps = Sleeps()
    await retrying(script, sleeps)(make_call())
    assert [attempt for _, attempt in script.calls] == [1, 2, 3]
    assert sleeps.delays == [0.1, 0.2]  # half of base·2, base·4: full jitter with the draw at 0.5


async def test_at_most_three_attempts() -> None:
    script = Script([status(503)])
    with pytest.raises(UpstreamError):
        await retrying(script)(make_call())
    assert len(script.calls) == 3


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
async def test_client_errors_are_never_retried(code: int) -> None:
    script = Script([status(code)])
    with pytest.raises(UpstreamError):
        await retrying(script)(make_call())
    assert len(script.calls) == 1


async def test_a_quota_429_is_never_retried() -> None:
    script = Script([UpstreamError("quota", status=429, code="insufficient_quota")])
    with pytest.raises(UpstreamError):
        await retrying(script)(make_call())
    assert len(script.calls) == 1


async def test_retry_after_2_delays_the_next_attempt_by_at_least_2_s() -> None:
    script = Script([status(429, **{"retry-after": "2"}), "ok"])
    sleeps = Sleeps()
    await retrying(script, sleeps)(make_call())
    assert sleeps.delays[0] >= 2.0 and len(script.calls) == 2


async def test_retry_after_beyond_the_deadline_makes_no_retry() -> None:
    script = Script([status(429, **{"retry-after": "120"}), "ok"])
    started = time.perf_counter()
    with pytest.raises(UpstreamError):
        await retrying(script)(make_call(deadline_in=60))
    assert len(script.calls) == 1 and time.perf_counter() - started < 1


async def test_a_429_cools_the_deployment_down() -> None:
    config = ResilienceConfig()
    breakers = Breakers(config, clock=lambda: 100.0)
    script = Script([status(429, **{"retry-after": "30"}), "ok"])
    stage = RetryCall(script, config, breakers, draw=lambda: 0.0, sleep=Sleeps())
    await stage(make_call())
    assert breakers[ROUTE].cool_until == 130.0 and breakers[ROUTE].state == "closed"


async def test_the_retry_budget_caps_retries() -> None:
    script = Script([status(503)])
    stage = retrying(script, budget_ratio=0.0, budget_floor=2)
    for _ in range(5):
        with pytest.raises(UpstreamError):
            await stage(make_call())
    assert len(script.calls) == 5 + 2


async def test_the_deadline_cuts_an_attempt_short() -> None:
    """The provider hands what is left of the deadline to its transport as the exchange's timeout."""
    provider = Provider("openai", MockTransport(MockEngine(MockBehaviour(hang_rate=1.0))))
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout, match="deadline"):
        await provider.send(make_call(deadline_in=0.05))
    assert time.perf_counter() - started < 1
    with pytest.raises(UpstreamTimeout, match="deadline"):
        await provider.send(make_call(deadline_in=-1))


# The breaker stage


def guarded(script: Script, clock: list[float]) -> GuardDeployment:
    config = ResilienceConfig()
    return GuardDeployment(script, Breakers(config, clock=lambda: clock[0]), config)


async def test_the_breaker_opens_and_refuses_without_calling() -> None:
    clock = [0.0]
    script = Script([status(500)])
    stage = guarded(script, clock)
    for _ in range(10):
        with pytest.raises(UpstreamError):
            await stage(make_call())
    with pytest.raises(CircuitOpen) as caught:
        await stage(make_call())
    assert len(script.calls) == 10
    assert caught.value.headers["retry-after"] == "30" and "30 s" in caught.value.message


async def test_client_errors_do_not_open_it() -> None:
    script = Script([status(400)])
    stage = guarded(script, [0.0])
    for _ in range(30):
        with pytest.raises(UpstreamError):
            await stage(make_call())
    assert len(script.calls) == 30


async def test_half_open_lets_exactly_three_of_a_hundred_through() -> None:
    clock = [0.0]
    failing = Script([status(500)])
    stage = guarded(failing, clock)
    for _ in range(10):
        with pytest.raises(UpstreamError):
            await stage(make_call())
    clock[0] = 31.0
    slow = Script(["hang"])
    stage._inner = slow  # the same breakers, a hanging upstream
    tasks = [asyncio.create_task(stage(make_call())) for _ in range(100)]
    await asyncio.sleep(0.05)
    refused = sum(1 for t in tasks if t.done() and isinstance(t.exception(), CircuitOpen))
    assert len(slow.calls) == 3 and refused == 97
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# Routing and fallbacks


def catalog(**models: Any) -> ModelCatalog:
    settings = Settings(
        providers={"a": {"kind": "mock"}, "b": {"kind": "mock"}},
        models=models or {"gpt-4o": {"provider": "a", "fallbacks": ["small"]}, "small": {"provider": "b"}},
    )
    return ModelCatalog(settings)


async def test_a_failing_model_falls_back_and_says_so() -> None:
    cat = catalog()
    script = Script([status(503), "ok"])
    call = make_call()
    call.route = cat.resolve("gpt-4o")
    reply = await RouteCall(script, cat, ResilienceConfig(), {})(call)
    assert [(route.name, attempt) for route, attempt in script.calls] == [("gpt-4o", 1), ("small", 2)]
    assert reply.headers["x-sluicegate-model"] == "small"
    assert reply.headers["x-sluicegate-deployment"] == "b/small"
    assert reply.headers["x-sluicegate-fallback"] == "gpt-4o via a/gpt-4o (server_error: 503)"


async def test_a_client_error_does_not_fall_back() -> None:
    cat = catalog()
    script = Script([status(400), "ok"])
    call = make_call()
    call.route = cat.resolve("gpt-4o")
    with pytest.raises(UpstreamError):
        await RouteCall(script, cat, ResilienceConfig(), {})(call)
    assert len(script.calls) == 1


async def test_fallback_causes_are_configurable() -> None:
    cat = catalog()
    script = Script([UpstreamTimeout("slow"), "ok"])
    call = make_call()
    call.route = cat.resolve("gpt-4o")
    with pytest.raises(UpstreamTimeout):
        await RouteCall(script, cat, ResilienceConfig(fallback_on=("server_error",)), {})(call)


async def test_a_fallback_that_does_not_serve_the_kind_of_call_is_skipped() -> None:
    """A model serving chat and embeddings, with a chat-only fallback: a failed embedding call
    is not sent to the chat model (its vectors would come from another model), a chat call is."""
    cat = catalog(
        both={"provider": "a", "serves": ["chat", "embeddings"], "fallbacks": ["chatty"]},
        chatty={"provider": "b"},
    )
    assert cat.fallbacks_for("both", "chat") == ("chatty",)
    assert cat.fallbacks_for("both", "embeddings") == ()
    script = Script([status(503)])
    call = Call(
        "embeddings", {"model": "both", "input": "x"}, cat.resolve("both"), RequestContext("org"), "r"
    )
    call.started = time.perf_counter()
    with pytest.raises(UpstreamError):
        await RouteCall(script, cat, ResilienceConfig(), {})(call)
    assert [route.name for route, _ in script.calls] == ["both"]
    script = Script([status(503), "ok"])
    call = make_call()
    call.route = cat.resolve("both")
    await RouteCall(script, cat, ResilienceConfig(), {})(call)
    assert [route.name for route, _ in script.calls] == ["both", "chatty"]


async def test_weights_share_the_traffic() -> None:
    cat = catalog(
        **{
            "gpt-4o": {
                "provider": "a",
                "weight": 3,
                "deployments": [{"provider": "b", "upstream_model": "gpt-4o-eu", "weight": 1}],
            }
        }
    )
    script = Script(["ok"])
    stage = RouteCall(script, cat, ResilienceConfig(), {})
    for _ in range(4000):
        call = make_call()
        call.route = cat.resolve("gpt-4o")
        await stage(call)
    firsts = collections.Counter(route.provider for route, _ in script.calls)
    assert firsts["a"] / 4000 == pytest.approx(0.75, abs=0.03)


async def test_latency_routing_prefers_the_fastest() -> None:
    cat = catalog(**{"gpt-4o": {"provider": "a", "deployments": [{"provider": "b"}]}})
    stage = RouteCall(Script(["ok"]), cat, ResilienceConfig(routing="latency"), {})
    a, b = (route for route, _ in cat.deployments["gpt-4o"])
    stage.latencies.update({a: 0.9, b: 0.1})
    assert stage._ordered("gpt-4o") == [b, a]


async def test_a_feature_deadline_is_set_on_the_call() -> None:
    cat = catalog()
    call = make_call(feature="insights")
    call.route = cat.resolve("small")
    features = {"insights": FeatureConfig(deadline_s=7)}
    await RouteCall(Script(["ok"]), cat, ResilienceConfig(), features)(call)
    assert call.deadline == pytest.approx(call.started + 7)


# Degradation


async def test_a_static_answer_when_every_option_failed() -> None:
    features = {"insights": FeatureConfig(fallback_answer="Insights are resting; try again soon.")}
    stage = Degrade(Script([status(503)]), ResilienceConfig(), features)
    reply = await stage(make_call(feature="insights"))
    body = orjson.loads(reply.body)
    assert body["choices"][0]["message"]["content"] == "Insights are resting; try again soon."
    assert body["sluicegate"]["degraded"] == "static"
    assert reply.headers["x-sluicegate-degraded"] == "static"


async def test_a_static_answer_streams_when_a_stream_was_asked_for() -> None:
    features = {"chat": FeatureConfig(fallback_answer="Back in a moment.")}
    stage = Degrade(Script([CircuitOpen("open", headers={"retry-after": "9"})]), ResilienceConfig(), features)
    reply = await stage(make_call(feature="chat", stream=True))
    assert reply.stream is not None
    data = b"".join([chunk async for chunk in reply.stream])
    events = [orjson.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "Back in a moment." and events[-1]["choices"][0]["finish_reason"] == "stop"
    assert data.endswith(b"data: [DONE]\n\n") and reply.headers["x-sluicegate-degraded"] == "static"


async def test_a_static_stream_ends_with_its_zero_usage_when_the_client_asked() -> None:
    features = {"chat": FeatureConfig(fallback_answer="Back in a moment.")}
    stage = Degrade(Script([CircuitOpen("open")]), ResilienceConfig(), features)
    call = make_call(feature="chat", stream=True)
    call.body = {**call.body, "stream_options": {"include_usage": True}}
    reply = await stage(call)
    assert reply.stream is not None
    data = b"".join([chunk async for chunk in reply.stream])
    events = [orjson.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 0


async def test_without_a_static_answer_a_503_with_retry_after() -> None:
    stage = Degrade(Script([CircuitOpen("open", headers={"retry-after": "9"})]), ResilienceConfig(), {})
    with pytest.raises(AllUpstreamsFailed) as caught:
        await stage(make_call())
    assert caught.value.status_code == 503 and caught.value.headers["retry-after"] == "9"


@pytest.mark.parametrize("error", [BudgetExceeded("spent"), status(400)])
async def test_refusals_are_not_degraded(error: SluicegateError) -> None:
    features = {"default": FeatureConfig(fallback_answer="nope")}
    with pytest.raises(type(error)):
        await Degrade(Script([error]), ResilienceConfig(), features)(make_call())


async def test_retries_and_hedges_spend_one_budget_per_provider(tmp_path: Any) -> None:
    """The gateway hands one RetryBudgets to RetryCall and RouteCall (an empty one included)."""
    from sluicegate import create_gateway
    from sluicegate.testing import mock_settings

    gateway = create_gateway(mock_settings(data_dir=tmp_path))
    stages: dict[str, Any] = {}
    stage: Any = gateway.send
    while stage is not None:
        stages[type(stage).__name__] = stage
        stage = getattr(stage, "_inner", None) or getattr(stage, "_send", None)
    assert stages["RouteCall"]._budgets is stages["RetryCall"]._budgets
    await gateway.aclose()
