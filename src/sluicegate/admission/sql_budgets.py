"""Budgets in the gateway's database: reservations, settlements and leases, exact across every
worker and replica that shares it. The store without Redis, and the fallback while Redis is down.

Each operation is one short transaction that holds the budgets' period rows (in scope order, so
that two calls never wait on each other in a cycle): on SQLite through ``BEGIN IMMEDIATE``
(the database's write lock), on PostgreSQL through ``SELECT … FOR UPDATE``. A call under
several budgets holds one reservation row under each (``<id>``, ``<id>#1``, …). A settlement
marks its reservations ``settled``, so a second delivery changes nothing; a reservation whose
lease ended is marked ``expired`` by the reaper and leaves ``reserved``, and a late settlement
of it still adds its cost to ``spent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.transactions import Query, WriteTransactions
from .budget_math import Decision, Outcome, Throttle, decide_all
from .budget_scopes import Budget

__all__ = ["SqlBudgets", "reservation_id"]

_NEW_PERIOD = (
    "INSERT INTO budget_periods (scope, period, spent_micro, reserved_micro) "
    "VALUES (:s, :p, 0, 0) ON CONFLICT (scope, period) DO NOTHING"
)
_PERIOD = "SELECT spent_micro, reserved_micro FROM budget_periods WHERE scope = :s AND period = :p"
_RESERVATION = "SELECT scope, period, amount_micro, state FROM budget_reservations WHERE id = :id"
_SETTLED = "UPDATE budget_reservations SET state = 'settled' WHERE id = :id"
_EXPIRED = (
    "SELECT id, scope, period, amount_micro FROM budget_reservations "
    "WHERE state = 'open' AND expires_at <= :now"
)
_RELEASE = "UPDATE budget_periods SET reserved_micro = reserved_micro - :a WHERE scope = :s AND period = :p"
_EXPIRE = "UPDATE budget_reservations SET state = 'expired' WHERE id = :id"
# What the ledger billed the call from the reserved attempt on (its retries, fallbacks, hedges).
_BILLED = (
    "SELECT coalesce(sum(cost_micro), 0), count(*) FROM usage_ledger WHERE request_id = :r AND attempt >= :a"
)
_CHARGE = (
    "UPDATE budget_periods SET spent_micro = spent_micro + :c, reserved_micro = reserved_micro - :a "
    "WHERE scope = :s AND period = :p"
)
_RESERVE = (
    "INSERT INTO budget_reservations (id, scope, period, amount_micro, expires_at, state) "
    "VALUES (:id, :s, :p, :a, :e, 'open')"
)
_RESERVED = "UPDATE budget_periods SET reserved_micro = :r WHERE scope = :s AND period = :p"
_SETTLE = "UPDATE budget_periods SET spent_micro = :sp, reserved_micro = :r WHERE scope = :s AND period = :p"
_RECENT = "SELECT count(*) FROM budget_reservations WHERE scope = :s AND period = :p AND expires_at > :after"
_OPEN = "SELECT count(*) FROM budget_reservations WHERE state = 'open' AND scope = :s AND period = :p"
_FLOOR = "UPDATE budget_periods SET spent_micro = :f WHERE scope = :s AND period = :p AND spent_micro < :f"
_OPEN_IDS = "SELECT id FROM budget_reservations WHERE state = 'open' AND scope = :s AND period = :p"


def _attempt_of(rid: str) -> dict[str, Any]:
    """The ledger's request id and first attempt of a reservation's row id (`_BILLED`'s)."""
    request_id, _, attempt = rid.split("#")[0].rstrip("~").rpartition(":")
    return {"r": request_id, "a": int(attempt) if attempt.isdigit() else 1 << 30}


def _held(q: Query, scope: str, period: str) -> int:
    """What the ledger already has of the calls whose reservations under a period are still
    open: their settlement, or the reaper, counts it; a floor from the ledger must not too (a
    dead process's calls, replayed from its spool, were counted twice)."""
    rows, _ = q(_OPEN_IDS, {"s": scope, "p": period})
    return sum(int(q(_BILLED, _attempt_of(str(rid)))[0][0][0]) for (rid,) in rows)


def reservation_id(rid: str, index: int) -> str:
    """The row of a call's reservation under its ``index``-th budget."""
    return rid if index == 0 else f"{rid}#{index}"


class SqlBudgets:
    """Reserves, settles and reaps in the database (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._transactions = WriteTransactions(engine, "budgets")

    def close(self) -> None:
        """Close the SQLite connection and its thread."""
        self._transactions.close()

    def _period_row(self, q: Query, scope: str, period: str) -> tuple[int, int]:
        q(_NEW_PERIOD, {"s": scope, "p": period})
        lock = " FOR UPDATE" if self._transactions.postgres else ""
        rows, _ = q(_PERIOD + lock, {"s": scope, "p": period})
        return int(rows[0][0]), int(rows[0][1])

    async def reserve(
        self,
        books: Sequence[tuple[Budget, str]],
        rid: str,
        prompt_micro: int,
        out_pico: int,
        asked: int,
        lease_end: float,
        floors: Sequence[int | None],
        throttle: Throttle | None = None,
        lease_s: float = 0.0,
    ) -> Outcome:
        """Reserve under every budget (each with its period's name) or none. A floor raises a
        period's ``spent`` to at least the ledger's sum (after Redis was in charge); past the
        throttle's share, a budget admits only while fewer than its cap of calls are open."""
        order = sorted(range(len(books)), key=lambda i: books[i][0].scope)

        def work(q: Query) -> Outcome:
            state: dict[int, tuple[int, int]] = {}
            for i in order:
                budget, period = books[i]
                floor = floors[i]
                if floor is not None:
                    q(_NEW_PERIOD, {"s": budget.scope, "p": period})
                    floor -= _held(q, budget.scope, period)
                    q(_FLOOR, {"f": floor, "s": budget.scope, "p": period})
                state[i] = self._period_row(q, budget.scope, period)
            after = [state[i] for i in range(len(books))]
            if throttle is not None:
                for i, (budget, period) in enumerate(books):
                    cap = self._throttled(q, throttle, budget, period, after[i], lease_end - lease_s, lease_s)
                    if cap:
                        return Outcome(Decision(False, 0, 0), i, after, cap)
            ledgers = [(books[i][0].limit_micro, *after[i]) for i in range(len(books))]
            decision, refused = decide_all(ledgers, prompt_micro, out_pico, asked)
            if not decision.admitted:
                return Outcome(decision, refused, after)
            amount = decision.reserve_micro
            for i, (budget, period) in enumerate(books):
                reserved = after[i][1] + amount
                q(_RESERVED, {"r": reserved, "s": budget.scope, "p": period})
                row = {"id": reservation_id(rid, i), "s": budget.scope, "p": period, "a": amount}
                q(_RESERVE, {**row, "e": lease_end})
                after[i] = (after[i][0], reserved)
            return Outcome(decision, -1, after)

        result: Outcome = await self._transactions.run(work)
        return result

    @staticmethod
    def _throttled(
        q: Query,
        throttle: Throttle,
        budget: Budget,
        period: str,
        book: tuple[int, int],
        now: float,
        lease_s: float,
    ) -> str:
        """Past the share: the cap the budget's calls in flight (``concurrency``), or admitted in
        the last minute (``per_minute``), are at; empty when neither. (Reservations made in the
        last minute have leases ending in the last one.)"""
        if sum(book) < throttle.share * budget.limit_micro:
            return ""
        where = {"s": budget.scope, "p": period}
        if throttle.concurrency is not None:
            rows, _ = q(_OPEN, where)
            if int(rows[0][0]) >= throttle.concurrency:
                return "concurrency"
        if throttle.per_minute is not None:
            rows, _ = q(_RECENT, {**where, "after": now - 60.0 + lease_s})
            if int(rows[0][0]) >= throttle.per_minute:
                return "per_minute"
        return ""

    async def settle(self, rid: str, count: int, cost_micro: int) -> list[tuple[str, str, int, int]]:
        """Count the call's actual cost once under each of its ``count`` budgets, releasing its
        reservations: (scope, period, spent, reserved) of each that this settlement counted."""

        def work(q: Query) -> list[tuple[str, str, int, int]]:
            counted = []
            for i in range(count):
                rows, _ = q(_RESERVATION, {"id": reservation_id(rid, i)})
                if not rows or rows[0][3] == "settled":
                    continue
                scope, period, amount, state = rows[0]
                spent, reserved = self._period_row(q, scope, period)
                spent, reserved = spent + cost_micro, reserved - (int(amount) if state == "open" else 0)
                q(_SETTLE, {"sp": spent, "r": reserved, "s": scope, "p": period})
                q(_SETTLED, {"id": reservation_id(rid, i)})
                counted.append((scope, period, spent, reserved))
            return counted

        result: list[tuple[str, str, int, int]] = await self._transactions.run(work)
        return result

    async def reap(self, now: float) -> int:
        """End the reservations whose lease ended (their settlement was lost: the process died,
        or the database was down when it settled); how many. One whose attempt the ledger has
        is settled at the ledger's cost (a late settlement then counts nothing more); any
        other is released, and a late settlement of it still counts."""

        def work(q: Query) -> int:
            rows, _ = q(_EXPIRED, {"now": now})
            for rid, scope, period, amount in rows:
                billed, _ = q(_BILLED, _attempt_of(str(rid)))
                if int(billed[0][1]):
                    q(_CHARGE, {"c": int(billed[0][0]), "a": int(amount), "s": scope, "p": period})
                    q(_SETTLED, {"id": rid})
                else:
                    q(_RELEASE, {"a": int(amount), "s": scope, "p": period})
                    q(_EXPIRE, {"id": rid})
            return len(rows)

        reaped: int = await self._transactions.run(work)
        return reaped
