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
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ..accounting.ledger import completion_limit, prompt_bytes, reply_usage, stream_usage, usage_or_estimate
from ..accounting.pricing import PriceBook
from ..background import spawn
from ..calls import Call, CallKind, ModelRoute, Reply, ReplyStream
from ..config import BudgetsConfig
from ..config_money import usd
from ..errors import BudgetExceeded
from ..upstream.router import ModelCatalog
from .budget_math import MIN_COMPLETION_TOKENS, PERIOD_ADJECTIVES
from .budget_scopes import parse_scope
from .budgets import BudgetStore, Reservation, Usage

__all__ = ["ReserveBudget", "worst_prompt_tokens"]

logger = logging.getLogger("sluicegate.budgets")


def worst_prompt_tokens(body: dict[str, Any]) -> int:
    """A generous count of a request's prompt tokens, for the worst case a budget reserves: two
    bytes a token (English runs near four) of everything the model reads, plus each message's
    framing. The settlement then counts what the provider reports."""
    messages = body.get("messages")
    framing = 3 + 4 * (len(messages) if isinstance(messages, list) else 1)
    return framing + -(-prompt_bytes(body) // 2)


def _not_settled(rid: str, error: BaseException) -> None:
    """A settlement failed: its lease releases the reservation, and the ledger has the cost."""
    logger.warning("budgets: could not settle %s (%s); its lease will release it", rid, error)


def _limit_fields(body: dict[str, Any]) -> tuple[str, ...]:
    """The fields a clamp lowers: each one set (a provider may read either), else the one the
    request named (``max_completion_tokens`` even as null), else ``max_tokens``."""
    named = tuple(field for field in ("max_completion_tokens", "max_tokens") if body.get(field) is not None)
    return named or (("max_completion_tokens",) if "max_completion_tokens" in body else ("max_tokens",))


def _without(usage: Usage, reserved_micro: int) -> Usage:
    """``usage`` without a reservation of the call's own, given back as it is refused."""
    return replace(usage, reserved_micro=usage.reserved_micro - reserved_micro)


def _room(usage: Usage) -> int:
    """What is left of a budget's period."""
    return usage.budget.limit_micro - usage.spent_micro - usage.reserved_micro


Send = Callable[[Call], Awaitable[Reply]]


class ReserveBudget:
    """Reserves, clamps, settles, alerts, throttles and refuses (see the module's docstring)."""

    def __init__(
        self, send: Send, store: BudgetStore, prices: PriceBook, catalog: ModelCatalog, config: BudgetsConfig
    ) -> None:
        self._send = send
        self._store = store
        self._prices = prices
        self._config = config
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catalog = catalog
        self._dearest_of: dict[str, tuple[int, int]] = {}
        # The settings made sure that the model exists (a typo would show only past throttle_at).
        self._cheaper: ModelRoute | None = (
            catalog.resolve(config.throttle_model) if config.throttle_model is not None else None
        )

    async def __call__(self, call: Call) -> Reply:
        budgets = self._store.budgets_for(call.context)
        if not budgets:
            return await self._send(call)
        rid = f"{call.request_id}:{call.attempt}"
        body = call.body
        choices = body.get("n") or 1
        # An embedding has no completion: its input is its whole cost.
        asked = 0 if call.kind == "embeddings" else completion_limit(body, self._config.default_max_tokens)
        in_pico, out_pico = self._dearest(call.route.name)
        prompt_pico = worst_prompt_tokens(body) * in_pico
        prompt_micro = math.ceil(prompt_pico / 1_000_000)
        held = await self._store.reserve(budgets, rid, prompt_micro, out_pico, asked)
        past = self._past_throttle(held)  # the first budget past throttle_at, or -1
        cheaper = self._cheaper
        if (
            cheaper is not None
            and not held.throttled
            and call.route.name != cheaper.name
            and (not held.decision.admitted or past >= 0)
            and self._catalog.serves(cheaper.name, call.kind)
        ):
            # Past throttle_at the cheaper model answers: reserved at its prices, since the asked
            # model's worst case may not fit in the budget's last share (nor should it clamp the
            # cheaper model's answer). Below the share, the asked model's refusal stands.
            if held.decision.admitted:
                await self._store.settle(rid, 0)
            in_cheap, out_cheap = self._dearest(cheaper.name)
            cheap_micro = math.ceil(worst_prompt_tokens(body) * in_cheap / 1_000_000)
            cheap = await self._store.reserve(budgets, rid + "~", cheap_micro, out_cheap, asked)
            cheap_past = self._past_throttle(cheap)
            if cheap.decision.admitted and (held.decision.admitted or cheap_past >= 0):
                rid, held, past, prompt_micro, out_pico = rid + "~", cheap, cheap_past, cheap_micro, out_cheap
                call.route, call.own_answer = cheaper, True
            elif cheap.decision.admitted:  # below the share: the asked model's refusal stands
                await self._store.settle(rid + "~", 0)
            elif held.decision.admitted:  # released for the cheaper one, which was refused
                held = cheap
        decision = held.decision
        if not decision.admitted:
            code = "budget_throttled" if held.throttled else "budget_exceeded"
            raise self._refusal(held.usages[held.refused_by], code, call.kind, held.throttled)
        if past >= 0:
            if self._cheaper is not None and self._catalog.serves(self._cheaper.name, call.kind):
                call.route = self._cheaper
                call.own_answer = True
            elif self._config.throttle_concurrency is None and self._config.throttle_per_minute is None:
                await self._store.settle(rid, 0)
                mine = _without(held.usages[past], decision.reserve_micro)
                raise self._refusal(mine, "budget_throttled", call.kind)
        if decision.max_tokens < asked:
            each = decision.max_tokens // choices
            if each < min(asked // choices, MIN_COMPLETION_TOKENS):  # the stores' floor is for all n
                await self._store.settle(rid, 0)
                mine = _without(min(held.usages, key=_room), decision.reserve_micro)
                raise self._refusal(mine, "budget_exceeded", call.kind)
            call.body = {**body, **dict.fromkeys(_limit_fields(body), max(1, each))}
            call.clamped = True
        try:
            reply = await self._send(call)
        except asyncio.CancelledError:  # the client left: the provider had the prompt
            left = self._prices.cost_micro(call.route, usage_or_estimate(call.body, None, 499)[0])
            amount = (prompt_micro if left is None else left) + self._timed_out_cost(call)  # as the ledger
            spawn(self._tasks, self._settle(rid, amount))
            raise
        except Exception:  # refused further in (an emergency stop, a breaker) or failed: unbilled,
            # but for each attempt that timed out after its request left (at its prompt's estimate)
            spawn(self._tasks, self._settle(rid, self._timed_out_cost(call)))
            raise
        if reply.stream is None:
            cost = self._prices.cost_micro(call.route, reply_usage(call.body, reply))  # as the ledger
            amount = (decision.reserve_micro if cost is None else cost) + self._timed_out_cost(call)
            if call.losers:
                amount += self._losers_cost(call.losers)
            # In Redis the settlement is sent, not awaited: it leaves in one write with the
            # cache's store of this answer (one round trip after the call, which nobody waits for).
            if not self._store.settle_soon(rid, amount, self._settled_soon(rid)):
                await self._settle(rid, amount)
        else:
            reserved = decision.reserve_micro

            def settle_stream(relay: ReplyStream) -> None:
                # Cut by the client, it costs what the ledger records: its estimate, not its worst case.
                cost = self._prices.cost_micro(call.route, stream_usage(call.body, relay))
                amount = (reserved if cost is None else cost) + self._timed_out_cost(call)
                if call.losers:
                    amount += self._losers_cost(call.losers)
                if not self._store.settle_soon(rid, amount, self._settled_soon(rid)):
                    spawn(self._tasks, self._settle(rid, amount))

            reply.stream.on_close(settle_stream)
        return reply

    def _past_throttle(self, held: Reservation) -> int:
        """The index of the first of the call's budgets that was past ``throttle_at`` before its
        reservation, or -1 (none was)."""
        share = self._config.throttle_at
        for index, ((budget, _, _), (spent, reserved)) in enumerate(zip(held.books, held.after, strict=True)):
            if spent + reserved - held.decision.reserve_micro >= share * budget.limit_micro:
                return index
        return -1

    def _timed_out_cost(self, call: Call) -> int:
        """What the call's attempts that timed out after their request left cost, as the ledger
        bills them: each its prompt's estimate, at its route's prices."""
        if not call.timed_out:
            return 0
        usage = usage_or_estimate(call.body, None, 499)[0]
        return sum(self._prices.cost_micro(route, usage) or 0 for route in call.timed_out)

    def _losers_cost(self, losers: list[tuple[Call, Reply | None]]) -> int:
        """What the copies a hedge race left behind cost, as the ledger records them: one that
        was cancelled, its prompt's estimate; one that answered too, its answer's usage."""
        total = 0
        for loser, reply in losers:
            if reply is not None and reply.stream is None:
                usage = reply_usage(loser.body, reply)
            else:
                usage = usage_or_estimate(loser.body, None, 499)[0]
            total += self._prices.cost_micro(loser.route, usage) or 0
        return total

    def _dearest(self, model: str) -> tuple[int, int]:
        """The dearest input and output prices (pico-USD a token; reasoning counts as output)
        among ``model`` and its fallbacks: the worst case is priced as if a fallback answered."""
        known = self._dearest_of.get(model)
        if known is None:
            chain = (model, *self._catalog.fallbacks.get(model, ()))
            rates = [found for found in map(self._prices.rates, chain) if found is not None]
            known = self._dearest_of[model] = (
                max((r.input for r in rates), default=0),
                max((max(r.output, r.reasoning) for r in rates), default=0),
            )
        return known

    def _refusal(self, usage: Usage, code: str, kind: CallKind, cap: str = "") -> BudgetExceeded:
        """The 429 for ``usage``'s budget: ``budget_exceeded``, or ``budget_throttled`` (by
        ``cap``, the throttle's cap that refused, or, with none, because only cached answers
        are served past the share)."""
        budget = usage.budget
        resets = datetime.fromtimestamp(usage.ends_at, UTC)
        wait = max(1, math.ceil(usage.ends_at - self._store.clock()))  # at the reset, not before
        remedy = ""
        past = f"is past {self._config.throttle_at:.0%} of its limit"
        if code == "budget_exceeded":
            what = "has no room left for this call"
            remedy = ", or send a smaller max_tokens" if kind == "chat" else ", or send a shorter input"
        elif cap == "concurrency":
            wait = min(wait, 1)  # as soon as one of its calls ends
            what = f"{past}: it is held to {self._config.throttle_concurrency} of its calls at once"
            remedy = f", or try again in {wait} s"
        elif cap == "per_minute":
            wait = min(wait, 60)  # within the minute
            what = f"{past}: it is held to {self._config.throttle_per_minute} calls a minute"
            remedy = f", or try again in {wait} s"
        else:
            what = f"{past}: only cached answers are served"
        org, scope_kind, name = parse_scope(budget.scope)
        where = f"--org {org}" + ("" if scope_kind is None else f" --{scope_kind} {name}")
        adjective = PERIOD_ADJECTIVES[budget.period]
        return BudgetExceeded(
            f"the {adjective} budget of {budget.describe()} ({usd(budget.limit_micro)}, "
            f"{usd(usage.spent_micro)} spent, {usd(usage.reserved_micro)} reserved) "
            f"{what}; it resets at {resets:%Y-%m-%d %H:%M} UTC. Ask an admin to raise it "
            f"(sluicegate budgets set {where} --limit-usd N){remedy}",
            code=code,
            headers={"retry-after": str(wait)},
        )

    async def _settle(self, rid: str, cost_micro: int) -> None:
        try:
            usages = await self._store.settle(rid, cost_micro)
        except Exception as exc:  # the lease releases it; the ledger still has the cost
            _not_settled(rid, exc)
            return
        await self._alert(usages)

    def _settled_soon(self, rid: str) -> Callable[[list[Usage], BaseException | None], None]:
        """What `BudgetStore.settle_soon` calls back: a warning on failure, the alerts past the line."""

        def done(usages: list[Usage], error: BaseException | None) -> None:
            if error is not None:
                _not_settled(rid, error)
                return
            for usage in usages:
                if self._past_alert(usage):
                    spawn(self._tasks, self._alert(usages))
                    return

        return done

    def _past_alert(self, usage: Usage) -> bool:
        limit = usage.budget.limit_micro
        return bool(limit) and usage.spent_micro >= self._config.alert_at * limit

    async def _alert(self, usages: list[Usage]) -> None:
        """Alert once per budget and period past ``alert_at``."""
        level = f"{self._config.alert_at:g}"
        for usage in usages:
            if not self._past_alert(usage):
                continue
            try:
                if await self._store.alert_once(usage, level):
                    await self._store.notify(usage, level)
            except Exception as exc:  # the next settlement past the line tries again
                logger.warning("budgets: could not record the alert of %s (%r)", usage.budget.scope, exc)
