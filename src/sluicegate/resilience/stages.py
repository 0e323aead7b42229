"""The resilience stages, outermost first: route (deployments and fallbacks), breaker, retry.

    RouteCall         orders the model's deployments, then its fallback models', and tries
                      them in turn on the failures listed in ``resilience.fallback_on``
      GuardDeployment the deployment's circuit breaker: refuse at once while it is open
        RetryCall     retries with full-jitter backoff inside the provider's retry budget

All three respect the request's deadline (``call.deadline``), which `RouteCall` sets and the
provider hands to its transport as the exchange's timeout (so no timer of ours runs). A stream
is retried only until its reply has begun: once the first byte has gone to the client, a cut
stream ends with an error event instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..calls import Call, CallKind, ModelRoute, Reply
from ..config import FeatureConfig, ResilienceConfig
from ..errors import CircuitOpen, SluicegateError, UpstreamError
from ..upstream.router import ModelCatalog
from .breaker import REFUSED, CircuitBreaker
from .classify import classify
from .hedging import HEDGE_HEADER, hedge_delay_s, race
from .retry import RetryBudget, backoff_s, retry_after_s

__all__ = ["Breakers", "GuardDeployment", "RetryCall", "RouteCall"]

Send = Callable[[Call], Awaitable[Reply]]
MODEL_HEADER = "x-sluicegate-model"
DEPLOYMENT_HEADER = "x-sluicegate-deployment"
FALLBACK_HEADER = "x-sluicegate-fallback"


class RetryBudgets(dict[str, RetryBudget]):
    """The retry budget of each provider in this process, made on first use; retries and
    hedges both spend from it. (A dict: a lookup costs no Python call.)"""

    def __init__(self, config: ResilienceConfig) -> None:
        super().__init__()
        self._retry = config.retry

    def __missing__(self, provider: str) -> RetryBudget:
        retry = self._retry
        budget = self[provider] = RetryBudget(retry.budget_ratio, retry.budget_floor, retry.budget_window_s)
        return budget


class Breakers(dict[ModelRoute, CircuitBreaker]):
    """The circuit breakers of this process, one per deployment, made on first use. (A dict:
    a lookup costs no Python call.)"""

    def __init__(self, config: ResilienceConfig, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._config = config.breaker
        self.clock = clock

    def __missing__(self, route: ModelRoute) -> CircuitBreaker:
        breaker = self[route] = CircuitBreaker(self._config)
        return breaker

    def states(self) -> dict[str, str]:
        """Each known deployment's breaker state, for the status page."""
        return {route.deployment: breaker.state for route, breaker in self.items()}


class RetryCall:
    """Retry one deployment on the retryable failures (`classify`), with full-jitter backoff,
    honouring ``Retry-After``, at most ``max_attempts`` times, inside the retry budget and the
    request's deadline."""

    def __init__(
        self,
        inner: Send,
        config: ResilienceConfig,
        breakers: Breakers,
        *,
        budgets: RetryBudgets | None = None,
        wall: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._inner = inner
        self._retry = config.retry
        self._breakers = breakers
        self._budgets = budgets if budgets is not None else RetryBudgets(config)
        self._wall = wall
        self._draw = draw
        self._sleep = sleep

    async def __call__(self, call: Call) -> Reply:
        clock = self._breakers.clock
        budget = self._budgets[call.route.provider]
        budget.first(clock())
        retry = self._retry
        tries = 1
        while True:
            try:
                return await self._inner(call)
            except SluicegateError as exc:
                verdict = classify(exc)
                if not verdict.retry:
                    raise
                waited = retry_after_s(exc.headers, self._wall()) if exc.headers else None
                now = clock()
                if verdict.cools_down and waited:
                    self._breakers[call.route].cool_down(now + waited)
                if tries >= retry.max_attempts:
                    raise
                delay = backoff_s(tries, retry.base_ms / 1000, retry.cap_ms / 1000, self._draw)
                if waited is not None:
                    delay = max(delay, waited)
                # No retry that the deadline would cut short, none past the budget.
                if time.perf_counter() + delay >= call.deadline or not budget.try_retry(now):
                    raise
            await self._sleep(delay)
            tries += 1
            call.next_attempt()


class GuardDeployment:
    """The deployment's circuit breaker: refuse at once while it is open or cooling down,
    and tell it how each call ended."""

    def __init__(self, inner: Send, breakers: Breakers, config: ResilienceConfig) -> None:
        self._inner = inner
        self._breakers = breakers
        self._slow_s = config.breaker.slow_call_s

    async def __call__(self, call: Call) -> Reply:
        breakers = self._breakers
        breaker = breakers[call.route]
        clock = breakers.clock
        started = clock()
        ticket = breaker.acquire(started)
        if ticket == REFUSED:
            raise _refused(call.route, breaker.retry_at(started) - started)
        try:
            reply = await self._inner(call)
        except SluicegateError as exc:
            verdict = classify(exc)
            if verdict.breaker_failure:
                now = clock()
                breaker.record(ticket, now, failed=True, slow=now - started >= self._slow_s)
            else:
                breaker.release(ticket)
            raise
        except BaseException:
            breaker.release(ticket)  # cancelled: the client left; no verdict
            raise
        now = clock()
        slow = now - started >= self._slow_s
        stream = reply.stream
        if stream is None:
            breaker.record(ticket, now, False, slow)
        else:
            # A stream's verdict comes when it ends: cut by the upstream, or whole.
            def ended(relay: Any) -> None:
                if isinstance(relay.error, UpstreamError):
                    breaker.record(ticket, clock(), failed=classify(relay.error).breaker_failure, slow=slow)
                elif relay.done:
                    breaker.record(ticket, clock(), failed=False, slow=slow)
                else:
                    breaker.release(ticket)

            stream.on_close(ended)
        return reply


def _refused(route: ModelRoute, wait_s: float) -> CircuitOpen:
    seconds = max(1, round(wait_s + 0.499))
    return CircuitOpen(
        f"the deployment {route.deployment} is failing and its circuit breaker is open: "
        f"no call goes to it for {seconds} s",
        headers={"retry-after": str(seconds)},
    )


class RouteCall:
    """Try the model's deployments, then its fallback models', on the configured failures.

    The answer says who gave it: ``X-Sluicegate-Model`` and ``X-Sluicegate-Deployment``, and
    ``X-Sluicegate-Fallback`` with the model and deployment that failed first when another
    answered.
    """

    def __init__(
        self,
        inner: Send,
        catalog: ModelCatalog,
        config: ResilienceConfig,
        features: Mapping[str, FeatureConfig],
        *,
        budgets: RetryBudgets | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._inner = inner
        self._budgets = budgets if budgets is not None else RetryBudgets(config)
        self._hedges = {name: feature for name, feature in features.items() if feature.hedge}
        self._timeouts = {
            name: (feature.connect_timeout_s, feature.first_byte_timeout_s)
            for name, feature in features.items()
            if feature.connect_timeout_s is not None or feature.first_byte_timeout_s is not None
        }
        self._recent: dict[ModelRoute, deque[float]] = {}  # recent times to reply, for hedge delays
        self._catalog = catalog
        self._fallback_on = frozenset(config.fallback_on)
        self._deadline_s = config.deadline_s
        self._deadlines = {
            name: feature.deadline_s for name, feature in features.items() if feature.deadline_s is not None
        }
        self._latency = config.routing == "latency"
        self._draw = draw
        self.latencies: dict[ModelRoute, float] = {}  # recent latency per deployment (an EWMA)
        self._alone = frozenset(name for name in catalog.deployments if not catalog.has_alternatives(name))
        self._labels = {  # the headers naming each deployment, made once
            route: (route.name, route.deployment)
            for deployments in catalog.deployments.values()
            for route, _ in deployments
        }

    async def __call__(self, call: Call) -> Reply:
        call.deadline = call.started + self._deadlines.get(call.context.feature, self._deadline_s)
        if self._timeouts:
            call.timeouts = self._timeouts.get(call.context.feature)
        name = call.route.name
        if name in self._alone:
            reply = await self._inner(call)
            self._label(reply, call.route, None)
            return reply
        asked = call.route  # given back when nothing answers: a stale answer is the asked model's
        first: tuple[ModelRoute, SluicegateError] | None = None
        options = self._options(name, call.kind)
        hedge = self._hedges.get(call.context.feature)
        hedged: list[bool] = []  # set when a hedge was sent: the second option has been tried
        for index, route in enumerate(options):
            if index == 1 and hedged:
                continue
            if index:
                call.next_attempt()
            call.route = route
            started = time.perf_counter()
            try:
                if hedge is not None and index == 0 and len(options) > 1:
                    reply = await self._hedged(call, hedge, route, options[1], hedged)
                    route = call.route
                else:
                    reply = await self._inner(call)
                    self._observe(route, time.perf_counter() - started)
            except SluicegateError as exc:
                cause = classify(exc).cause
                if cause is None or cause not in self._fallback_on or time.perf_counter() >= call.deadline:
                    call.route = asked
                    raise
                if first is None:
                    first = (route, exc)
                last = exc
                continue
            self._label(reply, route, first)
            return reply
        call.route = asked
        raise last

    def _label(
        self, reply: Reply, route: ModelRoute, first: tuple[ModelRoute, SluicegateError] | None
    ) -> None:
        """Say who answered; after a fallback, also who failed first and why."""
        headers = reply.headers
        label = self._labels.get(route)
        headers[MODEL_HEADER], headers[DEPLOYMENT_HEADER] = label or (route.name, route.deployment)
        if first is not None:
            failed, error = first
            # The cause that `fallback_on` names, and what the upstream said: (server_error: 503).
            cause, detail = classify(error).cause, str(error.code or error.status_code)
            reason = detail if cause is None or cause == detail else f"{cause}: {detail}"
            headers[FALLBACK_HEADER] = f"{failed.name} via {failed.deployment} ({reason})"

    def _options(self, name: str, kind: CallKind) -> list[ModelRoute]:
        options = self._ordered(name)
        for fallback in self._catalog.fallbacks_for(name, kind):
            options.extend(self._ordered(fallback))
        return options

    def _ordered(self, name: str) -> list[ModelRoute]:
        deployments = self._catalog.deployments[name]
        if len(deployments) == 1:
            return [deployments[0][0]]
        if self._latency:
            # Least recent latency first; a deployment not yet measured goes first.
            latencies = self.latencies
            return sorted((route for route, _ in deployments), key=lambda r: latencies.get(r, 0.0))
        # A weighted random order: each key is u^(1/w), largest first.
        keyed = sorted(deployments, key=lambda item: self._draw() ** (1 / item[1]), reverse=True)
        return [route for route, _ in keyed]

    def _observe(self, route: ModelRoute, seconds: float) -> None:
        old = self.latencies.get(route)
        self.latencies[route] = seconds if old is None else old * 0.8 + seconds * 0.2
        recent = self._recent.get(route)
        if recent is None:
            recent = self._recent[route] = deque(maxlen=100)
        recent.append(seconds)

    async def _hedged(
        self, call: Call, feature: FeatureConfig, first: ModelRoute, second: ModelRoute, sent: list[bool]
    ) -> Reply:
        """Race ``first`` against a hedge to ``second`` sent if ``first`` is late (hedging.py);
        ``sent`` gets True when the hedge goes."""
        delay = hedge_delay_s(feature.hedge_after_ms, feature.latency_target_ms, self._recent.get(first, ()))
        delay = min(delay, max(0.0, call.deadline - time.perf_counter()))
        budget = self._budgets[second.provider]

        def may_hedge() -> bool:
            if budget.try_retry(time.monotonic()):
                sent.append(True)
                return True
            return False

        started = time.perf_counter()
        reply, answered, hedged = await race(self._inner, call, first, second, delay, may_hedge)
        elapsed = time.perf_counter() - started
        # The first deployment took this long, or more when the hedge won (it was cancelled
        # then): recorded either way, so that routing by latency learns it is slow.
        self._observe(first, elapsed)
        if answered.route == second:
            self._observe(second, max(0.0, elapsed - delay))
        call.route, call.attempt = answered.route, max(call.attempt, answered.attempt)
        if hedged:
            reply.headers[HEDGE_HEADER] = "won" if answered.route == second else "sent"
        return reply
