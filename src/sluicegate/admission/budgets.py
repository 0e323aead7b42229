"""Budgets: which are in force, where their periods are counted, and what they say.

A call's budgets (its org's, and its user's, feature's and key's if set, see `budget_scopes`)
are counted in Redis when it is configured (`redis_budgets`: one script per reservation and
one per settlement) and in the database otherwise (`sql_budgets`), each period raised at its
first reservation to what the ledger has recorded (so a budget set mid-period counts what was
spent before it). While Redis is down or slow the database takes over, its periods first
raised to what the ledger has recorded; when Redis answers again, each of its periods is
raised the same way before its next reservation (and the reservations it may have applied
late are released). With neither reachable, calls under a budget are refused
(``budget_unavailable``): a hard cap fails closed. The 80 % alert is a unique row per budget,
period and level, so it fires once across every replica.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from redis.asyncio import Redis
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..calls import RequestContext
from ..config_money import BudgetsConfig, limit_micro
from ..observe.alerts import Alerts
from ..store.tables import budget_limits
from ..store.transactions import in_time
from .budget_admin import Changes, delete_limit, store_limit
from .budget_alerts import Reservation, Usage, announce
from .budget_ledger import ledger_spent, unavailable
from .budget_math import (
    Outcome,
    Period,
    Throttle,
    forecast,
    period_bounds,
    period_end,
    period_start,
)
from .budget_scopes import Budget, BudgetIndex, scope_of
from .outage import REDIS_ERRORS, Outage
from .redis_budgets import Book, NeedsFloor, RedisBudgets
from .sql_budgets import SqlBudgets

__all__ = ["Budget", "BudgetStore", "Reservation", "Usage"]

_FORECAST_WINDOW_S = 86_400.0
_PERIOD = "SELECT spent_micro, reserved_micro FROM budget_periods WHERE scope = :s AND period = :p"
logger = logging.getLogger("sluicegate.budgets")


class BudgetStore:
    """The budgets of the config, overridden by those set at run time, and their periods."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: BudgetsConfig,
        clock: Callable[[], float] = time.time,
        redis: Redis | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self._engine = engine
        self._alerts = alerts or Alerts()
        self._config = config
        self.clock = clock
        self._reaped_at = 0.0
        self._sql = SqlBudgets(engine)
        self._redis = RedisBudgets(redis, config.redis_timeout_ms / 1000) if redis is not None else None
        self._redis_outage = Outage(
            self._alerts, "redis-down:budgets", "budgets", "the database counts budgets"
        )
        self._floored_in_redis: set[str] | None = None  # after an outage: periods raised since
        self._floored_in_sql: set[str] = set()  # periods raised to the ledger here since start or outage
        self._changes = Changes()  # budgets that came into force or changed: raised to the ledger
        self._held: dict[str, tuple[bool, Sequence[Book]]] = {}  # id → (in Redis, its books)
        # Reservations that failed here but a stalled Redis may apply on resuming: released later.
        self._abandoned: collections.deque[tuple[Sequence[Book], str]] = collections.deque(maxlen=10_000)
        self._alerted: set[tuple[str, str, str]] = set()
        self._periods: dict[Period, tuple[str, float, float]] = {}  # name, start, end
        cap, rate = config.throttle_concurrency, config.throttle_per_minute
        self._throttle = None if cap is None and rate is None else Throttle(config.throttle_at, cap, rate)
        self._configured = {b.scope: Budget(b.scope, limit_micro(b.limit_usd), b.period) for b in config.orgs}
        self.index = BudgetIndex(dict(self._configured))

    @property
    def budgets(self) -> dict[str, Budget]:
        """Every budget in force, by scope."""
        return self.index.budgets

    def budgets_for(self, context: RequestContext) -> list[Budget]:
        """The budgets a call is under (hot path: one lookup for an org without any)."""
        return self.index.applicable(context) if self.index else []

    def budget_for(self, org: str) -> Budget | None:
        """The org's own budget, if it has one."""
        return self.budgets.get(scope_of(org))

    async def refresh(self) -> None:
        """Read the budgets set at run time (they override the config's)."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(budget_limits))
            runtime = {row.scope: Budget(row.scope, int(row.limit_micro), row.period) for row in rows}
        budgets = {**self._configured, **runtime}
        if budgets != self.budgets:
            self._install(budgets)

    def _install(self, budgets: dict[str, Budget]) -> None:
        """Put ``budgets`` in force. One that comes into force or changes (set, deleted with the
        config's coming back, set again) has its period raised to the ledger's sum for a while
        (`Changes`): its count missed what was spent while it was not in force."""
        self._changes.mark(self.budgets, budgets, self.clock())
        self.index = BudgetIndex(budgets)

    async def poll(self) -> None:
        """Each controls poll: the budgets set at run time, and (every 5 s, when there are
        budgets) the reservations whose lease ended, and the forecasts."""
        await self.refresh()
        now = self.clock()
        if self.budgets and now - self._reaped_at >= 5.0:
            self._reaped_at = now
            await self.reap()
            await self.check_forecasts()

    async def set_limit(self, budget: Budget) -> Budget:
        """Set (or replace) a budget at run time (made by `new_budget`); every worker applies it
        at its next poll. `InvalidRequest` for a key that is not one of the org's (its budget
        would never apply)."""
        await store_limit(self._engine, budget, self.clock())
        self._install({**self.budgets, budget.scope: budget})
        return budget

    async def remove_limit(self, scope: str) -> Budget | None:
        """Remove the budget set at run time for ``scope`` (made by `budget_scope`); every worker
        stops applying it at its next poll. The budget in force for the scope afterwards: the
        config's, or None. `NotFound` when none was set at run time (`delete_limit`)."""
        configured = self._configured.get(scope)
        await delete_limit(self._engine, scope, configured)
        budgets = {name: budget for name, budget in self.budgets.items() if name != scope}
        if configured is not None:
            budgets[scope] = configured
        self._install(budgets)
        return configured

    def close(self) -> None:
        """Close the store's SQLite connection and its thread."""
        self._sql.close()

    async def _ledger_spent(self, budget: Budget, now: float) -> int:
        """What the ledger has recorded under a budget since its period began."""
        return await ledger_spent(self._engine, budget, period_start(budget.period, now))

    async def _floors(self, books: Sequence[Book], done: set[str] | None, now: float) -> list[int | None]:
        """The ledger's sum for each period not yet in ``done`` (all of them without it)."""
        floors: list[int | None] = []
        for budget, period, _ in books:
            fresh = done is not None and f"{budget.scope}@{period}" in done
            floors.append(None if fresh else await self._ledger_spent(budget, now))
        return floors

    def _bounds(self, period: Period, now: float) -> tuple[str, float]:
        """`period_bounds`, computed once per period rather than once per call."""
        known = self._periods.get(period)
        if known is None or not known[1] <= now < known[2]:
            name, ends = period_bounds(period, now)
            known = self._periods[period] = (name, period_start(period, now), ends)
        return known[0], known[2]

    def _redis_failed(self, exc: BaseException, now: float) -> None:
        self._redis_outage.failed(exc, now)
        self._floored_in_redis = set()
        self._floored_in_sql = set()

    async def reserve(
        self,
        budgets: Budget | Sequence[Budget],
        rid: str,
        prompt_micro: int,
        out_pico: int,
        asked_tokens: int,
    ) -> Reservation:
        """Reserve the call's worst case under every one of its budgets if it fits (clamping its
        completion tokens), or under none."""
        budgets = [budgets] if isinstance(budgets, Budget) else budgets
        now = self.clock()
        books = [(budget, *self._bounds(budget.period, now)) for budget in budgets]
        outcome = None
        if self._redis is not None and self._redis_outage.usable(now):
            try:
                outcome = await self._reserve_in_redis(books, rid, prompt_micro, out_pico, asked_tokens, now)
            except REDIS_ERRORS as exc:
                self._redis_failed(exc, now)
                self._abandoned.append((books, rid))
            else:
                self._redis_outage.answered()
                while self._abandoned:  # Redis answers again: release what it may have applied late
                    self._redis.release_soon(*self._abandoned.popleft())
        in_redis = outcome is not None
        if outcome is None:
            outcome = await self._reserve_in_sql(books, rid, prompt_micro, out_pico, asked_tokens, now)
        if outcome.decision.admitted:
            self._held[rid] = (in_redis, books)
        return Reservation(outcome.decision, books, outcome.after, outcome.refused, outcome.throttled)

    async def _floors_or_refuse(
        self, books: Sequence[Book], done: set[str] | None, now: float, floor: str
    ) -> list[int | None]:
        try:
            return await self._floors(books, done, now)
        except (SQLAlchemyError, OSError) as exc:
            raise unavailable(books[0][0], exc, floor, self._redis is not None) from exc

    async def _reserve_in_redis(
        self, books: Sequence[Book], rid: str, prompt_micro: int, out_pico: int, asked: int, now: float
    ) -> Outcome:
        assert self._redis is not None
        done = self._floored_in_redis
        lease = self._config.lease_s
        floors: list[int | None] | None = None
        due = self._changes.due(books, now) if self._changes else ()
        if done is not None or due:
            # Back from an outage: catch up with what the database counted, once per period;
            # and a budget that changed lately is raised to the ledger's sum, outage or not.
            kept = _not_due(done if done is not None else _periods(books), due)
            floors = await self._floors_or_refuse(
                books, kept, now, "catch_up" if done is not None else "changed"
            )
        try:
            result = await self._redis.reserve(
                books, rid, prompt_micro, out_pico, asked, lease, floors, now, self._throttle
            )
        except NeedsFloor:  # a new period, or Redis lost it: rebuild it from the ledger
            floors = await self._floors_or_refuse(books, None, now, "rebuild")
            result = await self._redis.reserve(
                books, rid, prompt_micro, out_pico, asked, lease, floors, now, self._throttle
            )
        if done is not None:
            done.update(_periods(books))
        return result

    async def _reserve_in_sql(
        self,
        books: Sequence[Book],
        rid: str,
        prompt_micro: int,
        out_pico: int,
        asked: int,
        now: float,
    ) -> Outcome:
        try:
            # A period's first reservation here (in this process) starts from what the ledger
            # has: a budget set mid-period, or the database taking over from Redis; and a budget
            # that changed, for a while (`Changes.due`).
            done = self._floored_in_sql
            if self._changes and (due := self._changes.due(books, now)):
                done = _not_due(done, due)
            floors = await self._floors(books, done, now)
            lease_end = now + self._config.lease_s
            result = await self._sql.reserve(
                [(budget, name) for budget, name, _ in books],
                rid,
                prompt_micro,
                out_pico,
                asked,
                lease_end,
                floors,
                self._throttle,
                self._config.lease_s,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise unavailable(books[0][0], exc, "", self._redis is not None) from exc
        self._floored_in_sql.update(_periods(books))
        return result

    async def settle(self, rid: str, cost_micro: int) -> list[Usage]:
        """Count the call's actual cost once under each of its budgets, releasing its
        reservations; each period this settlement counted in (none when it had been counted)."""
        held = self._held.pop(rid, None)
        now = self.clock()
        if held is not None and held[0]:
            assert self._redis is not None
            try:
                counted = await self._redis.settle(held[1], rid, cost_micro)
            except REDIS_ERRORS as exc:  # its lease releases it; the ledger still has the cost
                self._redis_failed(exc, now)
                raise
            return self._counted(held[1], counted)
        rows = await self._sql.settle(rid, len(held[1]) if held else 1, cost_micro)
        usages = []
        for scope, period, spent, reserved in rows:
            budget = self.budgets.get(scope) or Budget(scope, 0, "month")
            # The reservation's period, which may have ended since (or the budget's period may
            # have been changed meanwhile): the end its name says, not today's period's.
            usages.append(Usage(budget, period, period_end(period), spent, reserved))
        return usages

    def settle_soon(
        self, rid: str, cost_micro: int, done: Callable[[list[Usage], BaseException | None], None]
    ) -> bool:
        """`settle` without waiting, when the reservation is held in Redis: the settlement leaves
        with this loop turn's other commands (the cache's store of the same answer, say) and
        ``done`` gets the periods it counted in, or the error. False, with nothing done, when
        the reservation is in the database: then call `settle`.

        Until Redis has applied it, the call's reservation (its worst case) still counts, so
        nothing can overspend in the meantime; commands on the one connection are applied in
        order, so this process's next reservation sees it."""
        held = self._held.get(rid)
        if held is None or not held[0] or self._redis is None:
            return False
        del self._held[rid]
        books = held[1]

        def counted(usages: list[Usage] | None, error: BaseException | None) -> None:
            if usages is not None:
                done(usages, None)
                return
            if isinstance(error, REDIS_ERRORS):
                self._redis_failed(error, self.clock())
            done([], error)

        self._redis.settle_soon(books, rid, cost_micro, counted)
        return True

    def _counted(self, books: Sequence[Book], counted: Sequence[tuple[bool, int, int]]) -> list[Usage]:
        return [
            Usage(budget, period, ends, spent, reserved)
            for (budget, period, ends), (ok, spent, reserved) in zip(books, counted, strict=True)
            if ok
        ]

    async def reap(self) -> int:
        """Release the database's reservations whose lease ended (their process died); how
        many. Redis releases its own at the next reservation under the same budget."""
        return await self._sql.reap(self.clock())

    async def usage(self, budget: Budget) -> Usage:
        """The budget's current period, with its forecast: the spend at the period's end if the
        burn rate of the last day (from the ledger, whatever period it fell in) goes on. A
        shorter window early in a period would extrapolate a few seconds' spend to the month."""
        now = self.clock()
        period, ends = period_bounds(budget.period, now)
        window = _FORECAST_WINDOW_S
        counted = None
        if self._redis is not None and not self._redis_outage.failing:  # a report is no probe
            with contextlib.suppress(*REDIS_ERRORS):
                counted = await self._redis.read(budget, period)
        recent = await ledger_spent(self._engine, budget, now - window)
        if counted is None:
            async with in_time(), self._engine.connect() as connection:
                row = (await connection.execute(text(_PERIOD), {"s": budget.scope, "p": period})).first()
            counted = (int(row[0]), int(row[1])) if row else (0, 0)
        if counted[0] == 0:  # nothing counted this period yet: the ledger may have spend already
            counted = (max(counted[0], await self._ledger_spent(budget, now)), counted[1])
        spent, reserved = counted
        projected = forecast(spent, recent, window, now, ends)
        return Usage(budget, period, ends, spent, reserved, projected)

    async def notify(self, usage: Usage, level: str) -> None:
        """Log an alert, and POST it to the webhook if there is one."""
        await announce(usage, level, self._config.webhook_url)

    async def check_forecasts(self) -> None:
        """One alert per budget and period whose forecast passes its limit."""
        for budget in list(self.budgets.values()):
            usage = await self.usage(budget)
            over = usage.forecast_micro is not None and usage.forecast_micro > budget.limit_micro
            if over and await self.alert_once(usage, "forecast"):
                await self.notify(usage, "forecast")

    async def alert_once(self, usage: Usage, level: str) -> bool:
        """Record that ``level`` was reached in this period; True for the one caller that did it
        first, across every replica. Once known, asking again costs no query."""
        seen = (usage.budget.scope, usage.period, level)
        if seen in self._alerted:
            return False
        async with self._engine.begin() as connection:
            result = await connection.execute(
                text(
                    "INSERT INTO budget_alerts (scope, period, level, at) VALUES (:s, :p, :l, :t) "
                    "ON CONFLICT (scope, period, level) DO NOTHING"
                ),
                {"s": usage.budget.scope, "p": usage.period, "l": level, "t": self.clock()},
            )
        self._alerted.add(seen)
        return bool(result.rowcount)


def _periods(books: Sequence[Book]) -> Iterator[str]:
    """The ``scope@period`` names of ``books``, as the sets of periods raised hold them."""
    return (f"{budget.scope}@{name}" for budget, name, _ in books)


def _not_due(periods: Iterable[str], due: Collection[str]) -> set[str]:
    """``periods`` (``scope@period`` names) but those of the scopes ``due`` to be raised to the
    ledger's sum again: a set of periods raised, without them."""
    return {period for period in periods if period.rpartition("@")[0] not in due}
