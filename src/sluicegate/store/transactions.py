"""Short write transactions that must see and change shared state atomically (rate limits,
budgets): one at a time per process, and holding a lock that serialises them across processes.

On a SQLite file each transaction starts with ``BEGIN IMMEDIATE``, which takes the database's
write lock at once, and runs whole on a ``sqlite3`` connection in a thread of its own: one trip
per transaction, where through aiosqlite every statement, cursor and fetch was a trip of its own
(a dozen per rate-limit check, 7-8 ms of CPU per budget reservation and settlement). On
PostgreSQL the work runs through the engine, and locks what it needs itself (``FOR UPDATE``,
advisory locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import SQLITE_PRAGMAS

__all__ = ["TIMEOUT_S", "Query", "Rows", "WriteTransactions", "in_time", "timed_out"]

TIMEOUT_S = 5.0  # the longest a request waits for the database's rate limits, budgets or keys


def timed_out() -> TimeoutError:
    """The error of a wait on the database that `TIMEOUT_S` cut short."""
    return TimeoutError(f"the database did not answer within {TIMEOUT_S:g} s")


@contextlib.asynccontextmanager
async def in_time() -> AsyncIterator[None]:
    """Bound what the block waits on the database by `TIMEOUT_S` (a database that accepts
    connections and never answers: not asyncpg's 60 s statement timeout), `timed_out` past it."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            yield
    except TimeoutError:
        raise timed_out() from None


T = TypeVar("T")
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]
Rows = tuple[list[Any], int]
# One statement with named (``:name``) parameters, or a list of them for executemany: the rows
# it returned, and the rows it changed.
Query = Callable[[str, Params], Rows]


class WriteTransactions:
    """Runs ``work(query)`` in one write transaction (see the module's docstring)."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self._engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        database = engine.url.database
        sqlite_file = engine.dialect.name == "sqlite" and database and database != ":memory:"
        self._sqlite_path = database if sqlite_file else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sluicegate-{name}")
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[Query], T]) -> T:
        """``work``'s outcome, committed; rolled back if it raises. On PostgreSQL, a
        `TimeoutError` once `TIMEOUT_S` have passed, waiting for the transaction before it
        included: a database that accepts connections and never answers (a hung server, a
        black-holed network) costs a request that long, not asyncpg's 60 s statement timeout.
        (SQLite's own wait for another process's lock is its busy timeout, 5 s too.)"""
        if self._sqlite_path is not None:
            async with self._lock:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, self._sqlite_transaction, work)
        # A task of its own: when the caller gives up, the cancelled transaction's clean-up (a
        # rollback on a connection that does not answer) goes on without it, holding the lock.
        task = asyncio.ensure_future(self._locked(work))
        try:
            return await asyncio.wait_for(asyncio.shield(task), TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError) as exc:
            task.cancel()
            task.add_done_callback(_retrieved)
            if isinstance(exc, TimeoutError):
                raise timed_out() from None
            raise

    async def _locked(self, work: Callable[[Query], T]) -> T:
        async with self._lock:
            return await self._postgres_transaction(work)

    async def _postgres_transaction(self, work: Callable[[Query], T]) -> T:
        async with self._engine.connect() as connection:

            def run(sync: Any) -> T:
                def query(sql: str, params: Params) -> Rows:
                    result = sync.execute(text(sql), params)
                    return (result.all() if result.returns_rows else [], result.rowcount)

                return work(query)

            outcome = await connection.run_sync(run)
            await connection.commit()  # leaving the block without it rolls back
            return outcome

    def _sqlite_transaction(self, work: Callable[[Query], T]) -> T:
        if self._db is None:
            assert self._sqlite_path is not None
            # Autocommit mode: the transaction is ours, opened with BEGIN IMMEDIATE below.
            self._db = sqlite3.connect(self._sqlite_path, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                self._db.execute(pragma)
        db = self._db

        def query(sql: str, params: Params) -> Rows:
            one = isinstance(params, Mapping)
            cursor = db.execute(sql, params) if one else db.executemany(sql, params)
            return (cursor.fetchall(), cursor.rowcount)

        db.execute("BEGIN IMMEDIATE")
        try:
            outcome = work(query)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return outcome

    def close(self) -> None:
        """Close the SQLite connection and its thread."""
        if self._db is not None:
            db, self._db = self._db, None
            self._thread.submit(db.close).result(5)
        self._thread.shutdown(wait=False)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a transaction given up on: its outcome is nobody's now
