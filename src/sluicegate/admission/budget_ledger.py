"""What the ledger has recorded under a budget: a new period's starting spend, and the recent
burn rate its forecast runs to the period's end; and the refusal when neither Redis nor the
database (with its ledger) can count a budget."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import BudgetUnavailable
from ..store.transactions import in_time
from .budget_scopes import Budget

__all__ = ["ledger_spent", "unavailable"]

# A ledger row's `at` is when its attempt ended; it counts from when it began, as its
# reservation (and settlement) did: a call that runs past midnight is not counted in both days.
_SPENT = (
    "SELECT coalesce(sum(cost_micro), 0) FROM usage_ledger WHERE {where} AND at >= :since "
    "AND at - latency_ms / 1000.0 >= :since AND attempt >= 1"
)


async def ledger_spent(engine: AsyncEngine, budget: Budget, since: float) -> int:
    """What the ledger has recorded under ``budget`` for the calls begun since ``since``; a
    `TimeoutError` after `TIMEOUT_S` (a hung database costs a request that long at most)."""
    where, params = budget.ledger_filter()
    async with in_time(), engine.connect() as connection:
        spent = await connection.scalar(text(_SPENT.format(where=where)), {**params, "since": since})
    return int(spent or 0)


_WHY = {
    "rebuild": "Redis holds no count of its period, and the database to rebuild it from is unreachable",
    "catch_up": (
        "Redis failed a moment ago (its count must catch up with the database's before it counts "
        "again), and the database is unreachable"
    ),
    "changed": "it changed a moment ago, and the database, whose ledger its count starts from, is down",
}


def unavailable(budget: Budget, exc: BaseException, floor: str, with_redis: bool) -> BudgetUnavailable:
    """The 503 when ``budget`` cannot be counted (``floor``: why Redis needed the database
    first: ``rebuild`` a period it does not hold, ``catch_up`` after an outage, ``changed``
    after the budget changed; empty when the database counts alone)."""
    why = _WHY.get(floor) or (
        # The database counts while Redis failed in the last few seconds (one request tries it
        # again every 5 s, and its count must then catch up with the database's first).
        "Redis failed lately (it is tried again every 5 s), and the database is unreachable"
        if with_redis
        else "the database is unreachable"
    )
    return BudgetUnavailable(
        f"the budget of {budget.describe()} cannot be checked: {why} ({type(exc).__name__}). "
        "Calls under a budget are refused until it can be; cached answers are still served",
        headers={"retry-after": "1"},
    )
