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

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..cache.batching import Batcher
from .limits import Check, Verdict

__all__ = ["SqlLimiter", "decide"]

_INSERT = text("INSERT INTO rate_events (key, at) VALUES (:key, :at)")
_PURGE = text("DELETE FROM rate_events WHERE at < :before")
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
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
        refused: Verdict | None = None
        for index, check in enumerate(checks):
            count, oldest = windows.get(check.key, (0, now))
            if count >= check.rule.limit:
                retry = max(1, math.ceil(oldest + check.rule.window_s - now))
                zeros = tuple(0 for _ in checks)
                refused = Verdict(False, zeros, tuple(c.rule.window_s for c in checks), index, retry)
                break
        if refused is not None:
            verdicts.append(refused)
            continue
        remaining, resets = [], []
        for check in checks:
            count, oldest = windows.get(check.key, (0, now))
            windows[check.key] = (count + 1, oldest)
            logged.append(check.key)
            remaining.append(check.rule.limit - count - 1)
            resets.append(max(0, math.ceil(oldest + check.rule.window_s - now)))
        verdicts.append(Verdict(True, tuple(remaining), tuple(resets)))
    return verdicts, logged


class SqlLimiter:
    """Checks requests against their limits in the database, a loop turn's checks at a time."""

    def __init__(
        self, engine: AsyncEngine, longest_window_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._keep_s = longest_window_s
        self._clock = clock
        self._postgres = engine.dialect.name == "postgresql"
        self._purged_at = 0.0
        self._lock = asyncio.Lock()
        self._batch: Batcher[tuple[Check, ...], Verdict] = Batcher(self._run)
        database = engine.url.database
        self._sqlite_path = database if engine.dialect.name == "sqlite" and database else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluicegate-limits")
        self._sqlite: sqlite3.Connection | None = None

    def _run_sqlite(self, batch: list[tuple[Check, ...]], now: float) -> list[Verdict]:
        if self._sqlite is None:
            assert self._sqlite_path is not None
            # autocommit mode: the transaction is ours, opened with BEGIN IMMEDIATE below
            self._sqlite = sqlite3.connect(self._sqlite_path, timeout=5.0, isolation_level=None)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA synchronous=NORMAL")
        db = self._sqlite
        keys = sorted({check.key for checks in batch for check in checks})
        window_of = {check.key: check.rule.window_s for checks in batch for check in checks}
        clauses = " OR ".join("(key = ? AND at > ?)" for _ in keys)
        params: list[Any] = []
        for key in keys:
            params += [key, now - window_of[key]]
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                f"SELECT key, count(*), min(at) FROM rate_events WHERE {clauses} GROUP BY key", params
            ).fetchall()
            windows = {str(key): (int(count), float(first)) for key, count, first in rows}
            verdicts, logged = decide(batch, windows, now)
            if logged:
                db.executemany("INSERT INTO rate_events (key, at) VALUES (?, ?)", [(k, now) for k in logged])
            if now - self._purged_at > _PURGE_EVERY_S:
                self._purged_at = now
                db.execute("DELETE FROM rate_events WHERE at < ?", (now - self._keep_s,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return verdicts

    def close(self) -> None:
        """Close the SQLite connection and its thread."""
        if self._sqlite is not None:
            sqlite = self._sqlite
            self._thread.submit(sqlite.close).result(5)
            self._sqlite = None
        self._thread.shutdown(wait=False)

    async def admit(self, checks: Sequence[Check], member: str) -> Verdict:
        """Log the request in every limit if each has room; otherwise refuse and log nothing."""
        del member  # rows need no identity here: a refused request writes none
        return await self._batch(tuple(checks))

    async def _run(self, batch: list[tuple[Check, ...]]) -> list[Verdict]:
        if self._sqlite_path is not None:
            # One trip to a thread of our own for the whole transaction: through aiosqlite each
            # statement, cursor and fetch was a trip of its own, a dozen per check.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, self._run_sqlite, batch, self._clock())
        async with self._lock, self._engine.connect() as connection:
            if not self._postgres:
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                verdicts = await self._decide(connection, batch)
            except BaseException:
                await connection.rollback()
                raise
            await connection.commit()
        return verdicts

    async def _decide(self, connection: AsyncConnection, batch: list[tuple[Check, ...]]) -> list[Verdict]:
        keys = sorted({check.key for checks in batch for check in checks})
        if self._postgres:
            for key in keys:
                await connection.execute(_LOCK, {"key": key})
        now = self._clock()
        # Each key holds one limit's log, so each has its own window.
        window_of = {check.key: check.rule.window_s for checks in batch for check in checks}
        clauses = " OR ".join(f"(key = :k{i} AND at > :s{i})" for i in range(len(keys)))
        params: dict[str, Any] = {}
        for i, key in enumerate(keys):
            params[f"k{i}"], params[f"s{i}"] = key, now - window_of[key]
        rows = await connection.execute(
            text(f"SELECT key, count(*), min(at) FROM rate_events WHERE {clauses} GROUP BY key"), params
        )
        windows = {str(key): (int(count), float(first)) for key, count, first in rows}
        verdicts, logged = decide(batch, windows, now)
        if logged:
            await connection.execute(_INSERT, [{"key": key, "at": now} for key in logged])
        if now - self._purged_at > _PURGE_EVERY_S:
            self._purged_at = now
            await connection.execute(_PURGE, {"before": now - self._keep_s})
        return verdicts
