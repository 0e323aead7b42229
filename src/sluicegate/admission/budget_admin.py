"""Budgets set and removed at run time: rows of ``budget_limits``, which override the config's
budgets of the same scope. Every worker reads them at its next controls poll."""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import InvalidRequest, NotFound
from ..store.tables import virtual_keys
from .budget_scopes import Budget, parse_scope

__all__ = ["delete_limit", "store_limit"]

_SET_LIMIT = "INSERT INTO budget_limits (scope, limit_micro, period, updated_at) VALUES (:s, :l, :p, :t)"
_DELETE_LIMIT = "DELETE FROM budget_limits WHERE scope = :s"


async def store_limit(engine: AsyncEngine, budget: Budget, now: float) -> None:
    """Set (or replace) ``budget``; `InvalidRequest` for a key that is not one of the org's (its
    budget would never apply)."""
    org, kind, name = parse_scope(budget.scope)
    async with engine.begin() as connection:
        if kind == "key":
            owner = await connection.scalar(select(virtual_keys.c.org).where(virtual_keys.c.id == name))
            if owner != org:
                raise InvalidRequest(
                    f"the org {org!r} has no key with the id {name!r} (`sluicegate keys list` "
                    "shows them): its budget would never apply",
                    param="key",
                )
        await connection.execute(text(_DELETE_LIMIT), {"s": budget.scope})
        await connection.execute(
            text(_SET_LIMIT), {"s": budget.scope, "l": budget.limit_micro, "p": budget.period, "t": now}
        )


async def delete_limit(engine: AsyncEngine, scope: str, configured: Budget | None) -> None:
    """Remove the budget set at run time for ``scope`` (the config's, ``configured``, applies
    again). `NotFound` when none was set at run time; `InvalidRequest` when the only budget of
    the scope is the config's, which only the config file can remove."""
    async with engine.begin() as connection:
        removed = (await connection.execute(text(_DELETE_LIMIT), {"s": scope})).rowcount
    if removed:
        return
    what = Budget(scope, 0, "month").describe()
    if configured is not None:
        raise InvalidRequest(
            f"the budget of {what} is set in the config file (budgets.orgs), not at run time: "
            "remove it there, and restart the gateway",
            param=parse_scope(scope)[1] or "org",
            code="budget_in_config",
        )
    raise NotFound(
        f"no budget is set for {what} (`sluicegate budgets list` shows them)", code="budget_not_found"
    )
