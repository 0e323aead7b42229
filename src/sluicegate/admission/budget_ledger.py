"""What the ledger has recorded under a budget: a new period's starting spend, and the recent
burn rate its forecast runs to the period's end."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.transactions import in_time
from .budget_scopes import Budget

__all__ = ["ledger_spent"]

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
