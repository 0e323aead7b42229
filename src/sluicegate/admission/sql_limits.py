"""Rate limits without Redis: the sliding logs in the gateway's database, exact across the
worker processes (and, on PostgreSQL, the replicas) that share it.

Each check is one short write transaction that counts the requests of each limit's window and
logs the request only if every limit has room. On SQLite the transaction starts with
``BEGIN IMMEDIATE``, which takes the database's write lock at once, so two workers never
count the same state; on PostgreSQL it takes a transaction-scoped advisory lock per limit (in
key order, so that two checks cannot deadlock). Time is this machine's clock, which every
worker of one SQLite database shares. It costs a database write per request
(``bench/RESULTS.md``); with Redis configured the limits live there instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .limits import Check, Verdict

__all__ = ["SqlLimiter"]

_COUNT = text("SELECT count(*), min(at) FROM rate_events WHERE key = :key AND at > :since")
_INSERT = text("INSERT INTO rate_events (key, at) VALUES (:key, :at)")
_PURGE = text("DELETE FROM rate_events WHERE at < :before")
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_PURGE_EVERY_S = 60.0


class SqlLimiter:
    """Checks requests against their limits in the database."""

    def __init__(
        self, engine: AsyncEngine, longest_window_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._keep_s = longest_window_s
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._purged_at = 0.0

    async def admit(self, checks: Sequence[Check], member: str) -> Verdict:
        """Log the request in every limit if each has room; otherwise refuse and log nothing."""
        del member  # rows need no identity here: a refused request writes none
        async with self._engine.connect() as connection:
            if not self._postgres:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                verdict = await self._decide(connection, checks)
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()
        return verdict

    async def _decide(self, connection: AsyncConnection, checks: Sequence[Check]) -> Verdict:
        now = self._clock()
        if self._postgres:
            for key in sorted({check.key for check in checks}):
                await connection.execute(_LOCK, {"key": key})
        counts: list[int] = []
        oldest: list[float] = []
        for index, check in enumerate(checks):
            window = check.rule.window_s
            row = (await connection.execute(_COUNT, {"key": check.key, "since": now - window})).one()
            count, first = int(row[0]), float(row[1]) if row[1] is not None else now
            if count >= check.rule.limit:
                retry = max(1, math.ceil(first + window - now))
                zeros = tuple(0 for _ in checks)
                resets = tuple(c.rule.window_s for c in checks)
                return Verdict(False, zeros, resets, index, retry)
            counts.append(count)
            oldest.append(first)
        for check in checks:
            await connection.execute(_INSERT, {"key": check.key, "at": now})
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = now
            await connection.execute(_PURGE, {"before": now - self._keep_s})
        remaining = tuple(c.rule.limit - n - 1 for c, n in zip(checks, counts, strict=True))
        resets = tuple(
            max(0, math.ceil(first + c.rule.window_s - now)) for c, first in zip(checks, oldest, strict=True)
        )
        return Verdict(True, remaining, resets)
