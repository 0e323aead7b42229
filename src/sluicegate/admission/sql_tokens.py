"""Token limits without Redis: the buckets are rows of the gateway's database, exact across the
worker processes (and, on PostgreSQL, the replicas) that share it.

A take or a give-back is one short write transaction that holds the call's bucket rows (in key
order): on SQLite ``BEGIN IMMEDIATE`` takes the database's write lock at once, on PostgreSQL
``SELECT … FOR UPDATE`` locks the rows. A missing row is a full bucket. Time is this machine's
clock, which every worker of one SQLite database shares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from ..store.transactions import Query, WriteTransactions
from .token_bucket import Taken, TokenCheck, refill, take

__all__ = ["SqlTokens"]

_NEW = "INSERT INTO token_buckets (key, level, at) VALUES (:k, :l, :t) ON CONFLICT (key) DO NOTHING"
_READ = "SELECT level, at FROM token_buckets WHERE key = :k"
_WRITE = "UPDATE token_buckets SET level = :l, at = :t WHERE key = :k"


class SqlTokens:
    """Takes and gives back tokens in the database (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._transactions = WriteTransactions(engine, "tokens")

    def close(self) -> None:
        """Close the SQLite connection and its thread."""
        self._transactions.close()

    def _levels(self, q: Query, checks: Sequence[TokenCheck]) -> tuple[list[float], float]:
        """Each bucket's level now, and now: read once every bucket is locked (SQLite's write
        lock, PostgreSQL's row locks), so that no writer dates a bucket before the last one did
        and an interval is never refilled twice."""
        lock = " FOR UPDATE" if self._transactions.postgres else ""
        found = []
        for check in checks:
            capacity = float(check.rule.tokens_per_minute)
            q(_NEW, {"k": check.key, "l": capacity, "t": self._clock()})
            rows, _ = q(_READ + lock, {"k": check.key})
            found.append((float(rows[0][0]), float(rows[0][1]), capacity, check.rate))
        now = self._clock()
        return [refill(level, at, capacity, rate, now) for level, at, capacity, rate in found], now

    async def take(self, checks: Sequence[TokenCheck], cost: int) -> Taken:
        """Take ``cost`` from every bucket, or from none."""
        ordered = sorted(checks, key=lambda check: check.key)

        def work(q: Query) -> Taken:
            levels, now = self._levels(q, ordered)
            for check, level in zip(ordered, levels, strict=True):
                ok, wait = take(level, check.rule.tokens_per_minute, check.rate, cost)
                if not ok:
                    return Taken(False, list(checks).index(check), wait, max(0, math.floor(level)))
            for check, level in zip(ordered, levels, strict=True):
                q(_WRITE, {"k": check.key, "l": level - cost, "t": now})
            return Taken(True, remaining=max(0, math.floor(min(levels) - cost)))

        taken: Taken = await self._transactions.run(work)
        return taken

    async def give_back(self, checks: Sequence[TokenCheck], tokens: int) -> None:
        """Return unused tokens to every bucket (never above its capacity)."""
        ordered = sorted(checks, key=lambda check: check.key)

        def work(q: Query) -> None:
            levels, now = self._levels(q, ordered)
            for check, level in zip(ordered, levels, strict=True):
                full = float(check.rule.tokens_per_minute)
                q(_WRITE, {"k": check.key, "l": min(full, level + tokens), "t": now})

        await self._transactions.run(work)
