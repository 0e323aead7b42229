"""The budget stage, between the cache and the provider (a cached answer costs nothing and is
never refused for budget): reserve a miss's worst case, clamp ``max_tokens`` to what is left,
settle the actual cost after the call, alert once at ``alert_at``, throttle past
``throttle_at``, and refuse at the limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from ..accounting.pricing import PriceBook
from ..calls import Call, Reply, ReplyStream
from ..config import BudgetsConfig
from ..errors import BudgetExceeded, UpstreamError
from ..upstream.router import ModelCatalog
from .budgets import Budget, BudgetStore, Usage

__all__ = ["ReserveBudget", "worst_prompt_tokens"]

logger = logging.getLogger("sluicegate.budgets")
_ADVERB = {"day": "daily", "week": "weekly", "month": "monthly"}


def worst_prompt_tokens(body: dict[str, Any]) -> int:
    """A generous count of a request's prompt tokens, for the worst case a budget reserves: two
    bytes a token (English runs near four) of everything the model reads, plus each message's
    framing. The settlement then counts what the provider reports."""
    read = [body.get("messages", body.get("input", "")), body.get("tools"), body.get("response_format")]
    messages = body.get("messages")
    framing = 3 + 4 * (len(messages) if isinstance(messages, list) else 1)
    return framing + -(-len(orjson.dumps(read)) // 2)


def _usd(micro: int) -> str:
    """``$0.0012``, ``$250``: dollars with as many decimals as the amount needs."""
    return "$" + f"{micro / 1_000_000:,.6f}".rstrip("0").rstrip(".")


Send = Callable[[Call], Awaitable[Reply]]


class ReserveBudget:
    """Reserves, clamps, settles, alerts, throttles and refuses (see the module's docstring)."""

    def __init__(
        self, send: Send, store: BudgetStore, prices: PriceBook, catalog: ModelCatalog, config: BudgetsConfig
    ) -> None:
        self._send = send
        self._store = store
        self._prices = prices
        self._catalog = catalog
        self._config = config
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, call: Call) -> Reply:
        budget = self._store.budget_for(call.context.org)
        if budget is None:
            return await self._send(call)
        rid = f"{call.request_id}:{call.attempt}"
        body = call.body
        choices = body.get("n") or 1
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        asked = (body.get(field) or self._config.default_max_tokens) * choices
        rates = self._prices.rates(call.route.name)
        out_pico = rates.output if rates is not None else 0
        prompt_pico = worst_prompt_tokens(body) * (rates.input if rates is not None else 0)
        prompt_micro = math.ceil(prompt_pico / 1_000_000)
        decision, usage = await self._store.reserve(budget, rid, prompt_micro, out_pico, asked)
        if not decision.admitted:
            raise self._refusal(budget, usage, "budget_exceeded")
        before = usage.spent_micro + usage.reserved_micro - decision.reserve_micro
        if before >= self._config.throttle_at * budget.limit_micro:
            cheaper = self._config.throttle_model
            if cheaper is None:
                await self._store.settle(rid, 0)
                raise self._refusal(budget, usage, "budget_throttled")
            call.route = self._catalog.resolve(cheaper)
        if decision.max_tokens < asked:
            call.body = {**body, field: max(1, decision.max_tokens // choices)}
        try:
            reply = await self._send(call)
        except UpstreamError:
            self._spawn(self._settle(rid, 0, budget))
            raise
        except asyncio.CancelledError:
            self._spawn(self._settle(rid, prompt_micro, budget))  # the provider had the prompt
            raise
        if reply.stream is None:
            cost = self._prices.cost_micro(call.route, reply.usage)
            await self._settle(rid, decision.reserve_micro if cost is None else cost, budget)
        else:
            reserved = decision.reserve_micro

            def settle_stream(relay: ReplyStream) -> None:
                cost = self._prices.cost_micro(call.route, relay.usage)
                self._spawn(self._settle(rid, reserved if cost is None else cost, budget))

            reply.stream.on_close(settle_stream)
        return reply

    def _refusal(self, budget: Budget, usage: Usage, code: str) -> BudgetExceeded:
        org = budget.scope.removeprefix("org:")
        resets = datetime.fromtimestamp(usage.ends_at, UTC)
        wait = max(1, int(usage.ends_at - self._store.clock()))
        what = (
            "has no room left for this call"
            if code == "budget_exceeded"
            else f"is past {self._config.throttle_at:.0%} of its limit: only cached answers are served"
        )
        return BudgetExceeded(
            f"the {_ADVERB[budget.period]} budget of the org {org!r} ({_usd(budget.limit_micro)}, "
            f"{_usd(usage.spent_micro)} spent, {_usd(usage.reserved_micro)} reserved) "
            f"{what}; it resets at {resets:%Y-%m-%d %H:%M} UTC. Ask an admin to raise it "
            f"(sluicegate budgets set --org {org} --limit-usd N), or send a smaller max_tokens",
            code=code,
            headers={"retry-after": str(wait)},
        )

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, rid: str, cost_micro: int, budget: Budget) -> None:
        try:
            usage = await self._store.settle(rid, cost_micro)
        except Exception as exc:  # the lease releases it; the ledger still has the cost
            logger.warning("budgets: could not settle %s (%s); its lease will release it", rid, exc)
            return
        if usage is None or not budget.limit_micro:
            return
        crossed = usage.spent_micro >= self._config.alert_at * budget.limit_micro
        level = f"{self._config.alert_at:g}"
        if crossed and await self._store.alert_once(usage, level):
            await self._store.notify(usage, level)
