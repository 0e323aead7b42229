"""The SQL engine and schema migrations.

The embedded default is SQLite (aiosqlite) under ``./.sluicegate/``; production uses
PostgreSQL (asyncpg). Migrations are Alembic's, run in-process by `migrate`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "SQLITE_PRAGMAS",
    "create_engine",
    "each_alone",
    "first_line",
    "migrate",
    "ping",
    "refused_for_content",
    "with_migrated",
    "write_batch",
]

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


def first_line(error: BaseException, empty: str | None = None) -> str:
    """The first line of ``error``'s message (SQLAlchemy adds a second, a link to its docs);
    ``empty`` (by default the error's type) when it has none, as a bare TimeoutError."""
    text = str(error).strip()
    return text.splitlines()[0] if text else empty or type(error).__name__


def refused_for_content(error: BaseException) -> bool:
    """Whether the database refused a statement for the values it holds (a string too long, a
    NUL byte, a number out of range: SQLSTATE classes 22 and 23), not for its own state (read
    only, a deadlock, a timeout, too many connections), which passes."""
    if isinstance(error, DataError | IntegrityError):
        return True
    state = getattr(getattr(error, "orig", None), "sqlstate", None)
    return isinstance(state, str) and state[:2] in ("22", "23")


logger = logging.getLogger("sluicegate.store")
R = TypeVar("R")


async def each_alone(rows: Sequence[R], write: Callable[[Sequence[R]], Awaitable[None]], what: str) -> int:
    """After the database refused a batch for what it holds (`refused_for_content`), ``write`` its
    rows one by one, dropping (with an error in the log) each one it refuses for that still: one
    bad row must not hold back every other for ever. How many were dropped; any other error is
    raised, and the rows wait for the next try."""
    dropped = 0
    for row in rows:
        try:
            await write([row])
        except DBAPIError as exc:
            if not refused_for_content(exc):
                raise
            dropped += 1
            reason = first_line(exc.orig or exc, "refused")
            logger.error("%s: the database refused a row, which is dropped (%s)", what, reason)
    return dropped


async def write_batch(rows: Sequence[R], write: Callable[[Sequence[R]], Awaitable[None]], what: str) -> None:
    """``write(rows)``; when the database refuses the batch for a row's values, the rows go one
    by one (`each_alone`) and those it refuses are dropped. Any other error is raised."""
    try:
        await write(rows)
    except DBAPIError as exc:
        if not refused_for_content(exc):
            raise
        await each_alone(rows, write, what)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; for SQLite, the database's folder is created if missing, the
    file is its owner's alone (it holds cached answers and key digests; SQLite gives its
    journal files the same mode), and every connection uses `SQLITE_PRAGMAS`."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # an existing file keeps its mode
    # hide_parameters: a database error's message (which gets logged) never carries the values
    # written, such as a cached answer.
    # asyncpg waits 60 s for a server that accepts the connection and never answers (a hung
    # database, a black-holed network): a request under a budget would wait as long. Give up
    # after 5 s, and on a statement after 60 s.
    connect_args = {"timeout": 5.0, "command_timeout": 60.0} if parsed.get_driver_name() == "asyncpg" else {}
    engine = create_async_engine(
        url, pool_pre_ping=not sqlite, hide_parameters=True, connect_args=connect_args
    )
    if sqlite and parsed.database and parsed.database != ":memory:":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


# Write-ahead logging: readers and the writer of several worker processes no longer block each
# other, and a commit appends to the log instead of rewriting a rollback journal with three
# fsyncs. With synchronous=NORMAL a commit survives a crash of the process (the ledger's spool
# covers the rest); only a power loss may take the last commits back. A writer waits up to 5 s
# for another process's lock instead of failing at once; the wait is set first, so that
# switching a new database to WAL waits too (processes starting together on a new data folder
# failed with "database is locked").
SQLITE_PRAGMAS = ("PRAGMA busy_timeout=5000", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _upgrade(connection: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


# Any fixed number: the PostgreSQL advisory lock that serialises replicas migrating at once.
_MIGRATION_LOCK = 0x51C3_6A7E


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema up to date (idempotent, and safe when several replicas start together).

    On SQLite, processes that start together on one new file can still be told "database is
    locked" at once, without the busy timeout's wait: the migration, one transaction, is tried
    again for up to about 10 s."""
    for attempt in range(40):
        try:
            await _migrate_once(engine)
            return
        except OperationalError as exc:
            if engine.dialect.name != "sqlite" or "locked" not in str(exc) or attempt == 39:
                raise
            await asyncio.sleep(0.25)


async def _migrate_once(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
        elif engine.dialect.name == "sqlite":
            # The database's write lock, taken at once: workers that start together on one
            # file migrate one after the other (the others wait up to the busy timeout).
            await connection.exec_driver_sql("BEGIN IMMEDIATE")
        await connection.run_sync(_upgrade)


async def with_migrated(
    url: str, action: Callable[[AsyncEngine], Awaitable[T]], *, upgrade: bool = True
) -> T:
    """Bring the schema at ``url`` up to date (unless not ``upgrade``), run ``action`` on an
    engine for it, and dispose of the engine (the CLI's commands that work on the database)."""
    engine = create_engine(url)
    try:
        if upgrade:
            await migrate(engine)
        return await action(engine)
    finally:
        await engine.dispose()


async def ping(engine: AsyncEngine) -> None:
    """Run ``SELECT 1``; raise when the database cannot answer."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
