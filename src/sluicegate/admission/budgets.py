"""Budgets in the gateway's database: reservations, settlements, leases and the 80 % alert,
exact across every worker and replica that shares it.

Each operation is one short transaction that holds the budget's period row: on SQLite through
``BEGIN IMMEDIATE`` (the database's write lock), on PostgreSQL through ``SELECT … FOR UPDATE``.
The arithmetic is `budget_math`'s. A settlement marks its reservation ``settled``, so a second
delivery changes nothing; a reservation whose lease ended is marked ``expired`` by the reaper
and leaves ``reserved``, and a late settlement of it still adds its cost to ``spent``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..config import BudgetsConfig
from ..store.tables import budget_limits
from ..store.transactions import Query, WriteTransactions
from .budget_math import Decision, Period, decide, forecast, period_bounds, period_start

__all__ = ["Budget", "BudgetStore", "Usage"]

_MICRO = Decimal(1_000_000)
_FORECAST_WINDOW_S = 86_400.0
_RECENT = (
    "SELECT coalesce(sum(cost_micro), 0) FROM usage_ledger WHERE org = :o AND at > :since AND attempt >= 1"
)
logger = logging.getLogger("sluicegate.budgets")
_NEW_PERIOD = (
    "INSERT INTO budget_periods (scope, period, spent_micro, reserved_micro) "
    "VALUES (:s, :p, 0, 0) ON CONFLICT (scope, period) DO NOTHING"
)
_RESERVATION = "SELECT scope, period, amount_micro, state FROM budget_reservations WHERE id = :id"
_SETTLED = "UPDATE budget_reservations SET state = 'settled' WHERE id = :id"
_EXPIRED = (
    "SELECT id, scope, period, amount_micro FROM budget_reservations "
    "WHERE state = 'open' AND expires_at <= :now"
)
_RELEASE = "UPDATE budget_periods SET reserved_micro = reserved_micro - :a WHERE scope = :s AND period = :p"
_EXPIRE = "UPDATE budget_reservations SET state = 'expired' WHERE id = :id"
_SET_LIMIT = "INSERT INTO budget_limits (scope, limit_micro, period, updated_at) VALUES (:s, :l, :p, :t)"
_PERIOD = "SELECT spent_micro, reserved_micro FROM budget_periods WHERE scope = :s AND period = :p"
_RESERVE = (
    "INSERT INTO budget_reservations (id, scope, period, amount_micro, expires_at, state) "
    "VALUES (:id, :s, :p, :a, :e, 'open')"
)
_RESERVED = "UPDATE budget_periods SET reserved_micro = :r WHERE scope = :s AND period = :p"
_SETTLE = "UPDATE budget_periods SET spent_micro = :sp, reserved_micro = :r WHERE scope = :s AND period = :p"


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget in force: its scope (``org:<org>``), limit and period."""

    scope: str
    limit_micro: int
    period: Period


@dataclass(frozen=True, slots=True)
class Usage:
    """A budget's period as it stands."""

    budget: Budget
    period: str
    ends_at: float
    spent_micro: int
    reserved_micro: int
    forecast_micro: int | None = None  # the period's end, at the last day's burn rate

    def to_dict(self) -> dict[str, Any]:
        limit = self.budget.limit_micro
        return {
            "scope": self.budget.scope,
            "period": self.period,
            "limit_usd": limit / 1_000_000,
            "spent_usd": self.spent_micro / 1_000_000,
            "reserved_usd": self.reserved_micro / 1_000_000,
            "used": round((self.spent_micro + self.reserved_micro) / limit, 4) if limit else None,
            "resets_at": self.ends_at,
            "forecast_usd": None if self.forecast_micro is None else self.forecast_micro / 1_000_000,
        }


class BudgetStore:
    """The budgets of the config, overridden by those set at run time, and their periods."""

    def __init__(
        self, engine: AsyncEngine, config: BudgetsConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._config = config
        self.clock = clock
        self._reaped_at = 0.0
        self._transactions = WriteTransactions(engine, "budgets")
        self._configured = {
            "org:" + b.org: Budget("org:" + b.org, int(b.limit_usd * _MICRO), b.period) for b in config.orgs
        }
        self.budgets: dict[str, Budget] = dict(self._configured)

    def budget_for(self, org: str) -> Budget | None:
        """The org's budget, if it has one (hot path: one lookup)."""
        return self.budgets.get("org:" + org) if self.budgets else None

    async def refresh(self) -> None:
        """Read the budgets set at run time (they override the config's)."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(budget_limits))
            runtime = {row.scope: Budget(row.scope, int(row.limit_micro), row.period) for row in rows}
        self.budgets = {**self._configured, **runtime}

    async def poll(self) -> None:
        """Each controls poll: the budgets set at run time, and (every 5 s, when there are
        budgets) the reservations whose lease ended."""
        await self.refresh()
        now = self.clock()
        if self.budgets and now - self._reaped_at >= 5.0:
            self._reaped_at = now
            await self.reap()
            await self.check_forecasts()

    async def set_limit(self, org: str, limit_usd: Decimal, period: Period) -> Budget:
        """Set (or replace) an org's budget at run time; every worker applies it at its next poll."""
        budget = Budget("org:" + org, int(limit_usd * _MICRO), period)
        async with self._engine.begin() as connection:
            await connection.execute(text("DELETE FROM budget_limits WHERE scope = :s"), {"s": budget.scope})
            await connection.execute(
                text(_SET_LIMIT),
                {"s": budget.scope, "l": budget.limit_micro, "p": period, "t": self.clock()},
            )
        self.budgets = {**self.budgets, budget.scope: budget}
        return budget

    def close(self) -> None:
        """Close the store's SQLite connection and its thread."""
        self._transactions.close()

    def _period_row(self, q: Query, scope: str, period: str) -> tuple[int, int]:
        q(_NEW_PERIOD, {"s": scope, "p": period})
        rows, _ = q(
            _PERIOD + (" FOR UPDATE" if self._transactions.postgres else ""), {"s": scope, "p": period}
        )
        return int(rows[0][0]), int(rows[0][1])

    async def usage(self, budget: Budget) -> Usage:
        """The budget's current period, with its forecast: the spend at the period's end if the
        burn rate of the last day (from the ledger; less early in a period) goes on."""
        now = self.clock()
        period, ends = period_bounds(budget.period, now)
        window = min(_FORECAST_WINDOW_S, now - period_start(budget.period, now))
        org = budget.scope.removeprefix("org:")
        async with self._engine.connect() as connection:
            row = (await connection.execute(text(_PERIOD), {"s": budget.scope, "p": period})).first()
            recent = await connection.scalar(text(_RECENT), {"o": org, "since": now - window})
        spent, reserved = (int(row[0]), int(row[1])) if row else (0, 0)
        projected = forecast(spent, int(recent or 0), window, now, ends)
        return Usage(budget, period, ends, spent, reserved, projected)

    async def notify(self, usage: Usage, level: str) -> None:
        """Log an alert, and POST it to the webhook if there is one."""
        limit = usage.budget.limit_micro / 1_000_000
        if level == "forecast":
            logger.warning(
                "budget forecast: %s is on course to spend $%.4f of $%.2f by the end of %s",
                usage.budget.scope,
                (usage.forecast_micro or 0) / 1_000_000,
                limit,
                usage.period,
            )
        else:
            logger.warning(
                "budget alert: %s has spent $%.4f of $%.2f this %s (%s)",
                usage.budget.scope,
                usage.spent_micro / 1_000_000,
                limit,
                usage.budget.period,
                usage.period,
            )
        url = self._config.webhook_url
        if url:
            report = {"event": "budget_" + ("forecast" if level == "forecast" else "alert"), "level": level}
            with contextlib.suppress(Exception):
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
                    session.post(url, json={**report, **usage.to_dict()}) as response,
                ):
                    await response.read()

    async def check_forecasts(self) -> None:
        """One alert per budget and period whose forecast passes its limit."""
        for budget in list(self.budgets.values()):
            usage = await self.usage(budget)
            over = usage.forecast_micro is not None and usage.forecast_micro > budget.limit_micro
            if over and await self.alert_once(usage, "forecast"):
                await self.notify(usage, "forecast")

    async def reserve(
        self, budget: Budget, rid: str, prompt_micro: int, out_pico: int, asked_tokens: int
    ) -> tuple[Decision, Usage]:
        """Reserve the call's worst case if it fits (clamping its completion tokens); the
        decision, and the period as it stands after it."""
        now = self.clock()
        period, ends = period_bounds(budget.period, now)
        lease_end = now + self._config.lease_s

        def work(q: Query) -> tuple[Decision, int, int]:
            spent, reserved = self._period_row(q, budget.scope, period)
            decision = decide(budget.limit_micro, spent, reserved, prompt_micro, out_pico, asked_tokens)
            if decision.admitted:
                reserved += decision.reserve_micro
                q(_RESERVED, {"r": reserved, "s": budget.scope, "p": period})
                amount = decision.reserve_micro
                q(_RESERVE, {"id": rid, "s": budget.scope, "p": period, "a": amount, "e": lease_end})
            return decision, spent, reserved

        decision, spent, reserved = await self._transactions.run(work)
        return decision, Usage(budget, period, ends, spent, reserved)

    async def settle(self, rid: str, cost_micro: int) -> Usage | None:
        """Count the call's actual cost once, releasing its reservation; the period after it, or
        None when this settlement had already been counted (or was never reserved)."""

        def work(q: Query) -> tuple[str, str, int, int] | None:
            rows, _ = q(_RESERVATION, {"id": rid})
            if not rows or rows[0][3] == "settled":
                return None
            scope, period, amount, state = rows[0]
            spent, reserved = self._period_row(q, scope, period)
            spent, reserved = spent + cost_micro, reserved - (int(amount) if state == "open" else 0)
            q(_SETTLE, {"sp": spent, "r": reserved, "s": scope, "p": period})
            q(_SETTLED, {"id": rid})
            return scope, period, spent, reserved

        outcome = await self._transactions.run(work)
        if outcome is None:
            return None
        scope, period, spent, reserved = outcome
        budget = self.budgets.get(scope) or Budget(scope, 0, "month")
        _, ends = period_bounds(budget.period, self.clock())
        return Usage(budget, period, ends, spent, reserved)

    async def reap(self) -> int:
        """Release the reservations whose lease ended (their process died); how many."""
        now = self.clock()

        def work(q: Query) -> int:
            rows, _ = q(_EXPIRED, {"now": now})
            for rid, scope, period, amount in rows:
                q(_RELEASE, {"a": int(amount), "s": scope, "p": period})
                q(_EXPIRE, {"id": rid})
            return len(rows)

        reaped: int = await self._transactions.run(work)
        return reaped

    async def alert_once(self, usage: Usage, level: str) -> bool:
        """Record that ``level`` was reached in this period; True for the one caller that did it
        first, across every replica."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                text(
                    "INSERT INTO budget_alerts (scope, period, level, at) VALUES (:s, :p, :l, :t) "
                    "ON CONFLICT (scope, period, level) DO NOTHING"
                ),
                {"s": usage.budget.scope, "p": usage.period, "l": level, "t": self.clock()},
            )
        return bool(result.rowcount)
