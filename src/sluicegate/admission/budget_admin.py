"""Budgets set and removed at run time: rows of ``budget_limits``, which override the config's
budgets of the same scope. Every worker reads them at its next controls poll. A budget that
comes into force or changes has its period raised to the ledger's sum for a while (`Changes`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import InvalidRequest, NotFound
from ..store.tables import virtual_keys
from .budget_scopes import Book, Budget, parse_scope

__all__ = ["Changes", "delete_limit", "store_limit"]

REFLOOR_S = 30.0  # how long a budget that changed keeps being raised to the ledger's sum

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


class Changes:
    """The budgets that came into force or changed (set, deleted with the config's coming back,
    set again): for `REFLOOR_S`, at most once a second, a reservation raises their period to
    the ledger's sum. Not once only: the ledger lags by its flush interval, calls under way at
    the change settle later, and another replica counts under the old budget until its poll;
    their rows reach the ledger within the window. Raising is a maximum: nothing counts twice."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, float]] = {}  # scope → (until, last raised)

    def __bool__(self) -> bool:
        return bool(self._windows)

    def mark(self, old: Mapping[str, Budget], new: Mapping[str, Budget], now: float) -> None:
        """Note the budgets of ``new`` that ``old`` did not have as they are."""
        for scope, budget in new.items():
            if old.get(scope) != budget:
                self._windows[scope] = (now + REFLOOR_S, 0.0)

    def due(self, books: Sequence[Book], now: float) -> set[str]:
        """The scopes of ``books`` to raise to the ledger's sum now (and marked raised)."""
        due = set()
        for budget, _, _ in books:
            window = self._windows.get(budget.scope)
            if window is None:
                continue
            until, last = window
            if now >= until:
                del self._windows[budget.scope]
            elif now - last >= 1.0:
                self._windows[budget.scope] = (until, now)
                due.add(budget.scope)
        return due
