"""Rate limits without Redis: the sliding logs in the gateway's database, exact across the
worker processes (and, on PostgreSQL, the replicas) that share it.

The checks made in one loop turn are decided together in one short write transaction: one
query counts the windows of every limit they touch, the requests are decided in order (each
seeing the ones admitted before it), and one statement logs the admitted ones. On SQLite the
transaction starts with ``BEGIN IMMEDIATE``, which takes the database's write lock at once, so
two workers never count the same state; on PostgreSQL it takes a transaction-scoped advisory
lock per limit, in key order, so that two transactions cannot deadlock. One transaction at a
time per process. Time is this machine's clock, which every worker of one SQLite database
shares; with Redis configured the limits live there instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from ..cache.batching import Batcher
from ..store.transactions import Query, WriteTransactions
from .limits import Check, Verdict

__all__ = ["SqlLimiter", "decide"]

_INSERT = "INSERT INTO rate_events (key, at) VALUES (:key, :at)"
_PURGE = "DELETE FROM rate_events WHERE at < :before"
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"
_PURGE_EVERY_S = 60.0


def decide(
    batch: Sequence[Sequence[Check]], windows: dict[str, tuple[int, float]], now: float
) -> tuple[list[Verdict], list[str]]:
    """Decide each request of ``batch`` in order, against ``windows`` (each key's requests in its
    window: their count and the time of the oldest), counting the admitted ones in; the
    verdicts, and the keys to log one request under for each admitted request (pure)."""
    verdicts: list[Verdict] = []
    logged: list[str] = []
    for checks in batch:
        seen = [windows.get(check.key, (0, now)) for check in checks]
        refused = next((i for i, c in enumerate(checks) if seen[i][0] >= c.rule.limit), None)
        resets = tuple(
            max(0, math.ceil(oldest + c.rule.window_s - now))
            for c, (_, oldest) in zip(checks, seen, strict=True)
        )
        if refused is not None:  # what each limit has left, and when its oldest request leaves
            left = tuple(max(0, c.rule.limit - count) for c, (count, _) in zip(checks, seen, strict=True))
            verdicts.append(Verdict(False, left, resets, refused, max(1, resets[refused])))
            continue
        for check, (count, oldest) in zip(checks, seen, strict=True):
            windows[check.key] = (count + 1, oldest)
            logged.append(check.key)
        left = tuple(c.rule.limit - count - 1 for c, (count, _) in zip(checks, seen, strict=True))
        verdicts.append(Verdict(True, left, resets))
    return verdicts, logged


class SqlLimiter:
    """Checks requests against their limits in the database, a loop turn's checks at a time."""

    def __init__(
        self, engine: AsyncEngine, longest_window_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._keep_s = longest_window_s
        self._clock = clock
        self._purged_at = 0.0
        self._transactions = WriteTransactions(engine, "limits")
        self._batch: Batcher[tuple[Check, ...], Verdict] = Batcher(self._run)

    def close(self) -> None:
        """Close the SQLite connection and its thread."""
        self._transactions.close()

    async def admit(self, checks: Sequence[Check], member: str) -> Verdict:
        """Log the request in every limit if each has room; otherwise refuse and log nothing."""
        del member  # rows need no identity here: a refused request writes none
        return await self._batch(tuple(checks))

    async def _run(self, batch: list[tuple[Check, ...]]) -> list[Verdict]:
        return await self._transactions.run(lambda q: self._decide(q, batch))

    def _decide(self, q: Query, batch: list[tuple[Check, ...]]) -> list[Verdict]:
        keys = sorted({check.key for checks in batch for check in checks})
        if self._transactions.postgres:
            for key in keys:
                q(_LOCK, {"key": key})
        # Read once the keys are locked (SQLite: the write lock, taken before this runs): a
        # request logged after another is never dated before it.
        now = self._clock()
        # Each key holds one limit's log, so each has its own window.
        window_of = {check.key: check.rule.window_s for checks in batch for check in checks}
        clauses = " OR ".join(f"(key = :k{i} AND at > :s{i})" for i in range(len(keys)))
        params: dict[str, Any] = {}
        for i, key in enumerate(keys):
            params[f"k{i}"], params[f"s{i}"] = key, now - window_of[key]
        rows, _ = q(f"SELECT key, count(*), min(at) FROM rate_events WHERE {clauses} GROUP BY key", params)
        windows = {str(key): (int(count), float(first)) for key, count, first in rows}
        verdicts, logged = decide(batch, windows, now)
        if logged:
            q(_INSERT, [{"key": key, "at": now} for key in logged])
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = now
            q(_PURGE, {"before": now - self._keep_s})
        return verdicts
