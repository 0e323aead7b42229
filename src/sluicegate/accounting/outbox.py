"""The ledger's outbox: every row is made durable in a local spool file first, then written to
the database in batches, idempotently.

Before an attempt goes upstream its ``pending`` row is written to the spool at once (`begin`);
its outcome replaces it. A pending row found without an outcome in the spool of a process that
died becomes ``interrupted`` and is billed at its estimate (the prompt, plus the completion's
limit), so that a call the provider served while the gateway died is still in the ledger.

Each process appends its rows to a spool file of its own (``<data_dir>/ledger-spool``), once
per loop turn, holding an exclusive ``flock`` on it for its lifetime. Rows are inserted with
``ON CONFLICT (request_id, attempt) DO NOTHING``, in the order they were recorded; when every
row spooled so far is in the database the file is truncated. When the database is down the
rows wait in memory (up to ``max_pending``; beyond that they are read back from the file) and
go in when it returns. A process that dies leaves its file behind, unlocked: every process
replays such files at start and every ``replay_interval_s``, then deletes them. A row that
reached the database before the crash is skipped by the unique key, so nothing is counted
twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from ..background import stop_between
from ..store.db import write_batch
from ..store.tables import usage_ledger
from .ledger import COLUMNS, Row

__all__ = ["Outbox", "insert_rows"]

logger = logging.getLogger("sluicegate.ledger")
_SUFFIX = ".jsonl"


def _insert_sql(paramstyle: str) -> str:
    """The driver-level INSERT of one row, idempotent on (request_id, attempt)."""
    if paramstyle == "qmark":
        marks = ", ".join("?" for _ in COLUMNS)
    elif paramstyle == "numeric_dollar":
        marks = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
    else:
        marks = ", ".join("%s" for _ in COLUMNS)
    names = ", ".join(f'"{name}"' for name in COLUMNS)
    return (
        f"INSERT INTO {usage_ledger.name} ({names}) VALUES ({marks}) "
        "ON CONFLICT (request_id, attempt) DO NOTHING"
    )


# SQLite: rows go in chunks of a power of two, each one statement with a VALUES tuple per row
# (at most 7 distinct statements, each prepared once by the driver's statement cache).
_CHUNK = 64


@functools.cache
def _insert_many_sql(rows: int) -> str:
    """SQLite's INSERT of ``rows`` rows in one statement, idempotent as `_insert_sql`'s."""
    names = ", ".join(f'"{name}"' for name in COLUMNS)
    one = "(" + ", ".join("?" for _ in COLUMNS) + ")"
    return (
        f"INSERT INTO {usage_ledger.name} ({names}) VALUES {', '.join([one] * rows)} "
        "ON CONFLICT (request_id, attempt) DO NOTHING"
    )


def _chunks(rows: Sequence[Row]) -> list[tuple[str, tuple[Any, ...]]]:
    """``rows`` as SQLite statements of `_CHUNK`, 32, … or 1 rows, with their flat parameters."""
    statements = []
    start, size = 0, _CHUNK
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        part = rows[start : start + size]
        statements.append((_insert_many_sql(size), tuple(value for row in part for value in row)))
        start += size
    return statements


async def insert_rows(engine: AsyncEngine, rows: Sequence[Row]) -> None:
    """Insert ``rows``; a row whose (request_id, attempt) is already there is left as it is.

    The rows go to the driver as they are (tuples in `COLUMNS` order), not through SQLAlchemy's
    per-row parameter handling, which cost several times what the database itself did. On
    SQLite a batch is a few statements of many rows each (`_chunks`): ``executemany`` binds
    each row with the GIL held, from the connection's thread, and under load that thread and
    the event loop's took the GIL in turns, row after row (a quarter of a worker's CPU in the
    whole pipeline); a batch as one JSON parameter that SQLite unpacked (``json_each``) did
    not, but cost 2.4 times the CPU per row of the statements here.
    """
    if not rows:
        return
    async with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            for statement, values in _chunks(rows):
                await connection.exec_driver_sql(statement, values)
        else:
            await connection.exec_driver_sql(_insert_sql(engine.dialect.paramstyle), list(rows))


async def write_rows(engine: AsyncEngine, rows: Sequence[Row]) -> None:
    """`insert_rows`, where a row the database refuses for its values is dropped, logged, and
    the rest of the batch goes in; any other failure raises, and the rows wait, spooled."""
    await write_batch(rows, lambda batch: insert_rows(engine, batch), "ledger")


_PRICED_FROM = COLUMNS.index("priced_from")
PENDING, INTERRUPTED = "pending", "interrupted"


def _interrupted(row: Row) -> Row:
    """A pending row whose outcome will never come, billed at its estimate."""
    return (*row[:_PRICED_FROM], INTERRUPTED, *row[_PRICED_FROM + 1 :])


def _read_rows(path: Path, end: int | None = None, *, interrupt: bool = True) -> list[Row]:
    """The rows spooled in ``path`` (up to byte ``end``), settled: a pending row whose outcome
    is also there gives way to it, one that was dropped goes, and one left alone (its process
    died during the call) becomes ``interrupted``, billed at its estimate; with ``interrupt``
    False (this process's own file, whose pending attempts are still under way) it is left
    out. A torn line is skipped.
    """
    with path.open("rb") as handle:
        data = handle.read() if end is None else handle.read(end)
    done: dict[tuple[Any, Any], Row] = {}
    pending: dict[tuple[Any, Any], Row] = {}
    dropped: set[tuple[Any, Any]] = set()
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            values = orjson.loads(line)
        except orjson.JSONDecodeError:
            logger.warning("ledger: skipped an unreadable spooled row in %s", path)
            continue
        if not isinstance(values, list):
            continue
        if len(values) == 3 and values[0] == "drop":
            dropped.add((values[1], values[2]))
        elif len(values) == len(COLUMNS):
            key = (values[0], values[1])
            if values[_PRICED_FROM] == PENDING:
                pending[key] = tuple(values)
            else:
                done[key] = tuple(values)
    rows = list(done.values())
    for key, row in pending.items():
        if interrupt and key not in done and key not in dropped:
            rows.append(_interrupted(row))
    return rows


class Outbox:
    """Spools rows, then writes them to the database in batches (see the module's docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        spool_dir: Path,
        *,
        batch: int = 500,
        interval_s: float = 0.2,
        max_pending: int = 100_000,
        replay_interval_s: float = 30.0,
    ) -> None:
        self._engine = engine
        self._dir = spool_dir
        self._batch = batch
        self._interval = interval_s
        self._max_pending = max_pending
        self._replay_interval = replay_interval_s
        self._pending: list[Row] = []  # spooled, not yet in the database, in order
        self._overflowed = False  # rows were spooled without being kept in memory
        self._lines: list[bytes] = []  # recorded this loop turn, not yet spooled
        self._open: dict[tuple[str, int], bytes] = {}  # pending attempts: their spooled lines
        self._fd = -1
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.written = 0  # rows this process has written to the database (for tests and status)

    # The hot path

    def begin(self, row: Row) -> None:
        """Spool an attempt's pending row now, before the attempt goes upstream."""
        line = orjson.dumps(row) + b"\n"
        self._open[(row[0], row[1])] = line
        self._write(line)

    def drop(self, request_id: str, attempt: int) -> None:
        """Forget a pending attempt that never went upstream."""
        if self._open.pop((request_id, attempt), None) is not None:
            self._queue(orjson.dumps(["drop", request_id, attempt]) + b"\n")

    def _queue(self, line: bytes) -> None:
        if not self._lines:
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._spool)
        self._lines.append(line)

    def add(self, row: Row) -> None:
        """Keep ``row``: spooled at the end of this loop turn, in the database soon after."""
        if self._open:
            self._open.pop((row[0], row[1]), None)
        if not self._lines:
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._spool)
        self._lines.append(orjson.dumps(row) + b"\n")
        if self._overflowed or len(self._pending) >= self._max_pending:
            self._overflowed = True  # from here on the file is the only copy
        else:
            self._pending.append(row)
        if len(self._pending) >= self._batch:
            self._wake.set()

    def _spool(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self._write(b"".join(lines))

    def _write(self, data: bytes) -> None:
        if self._fd < 0:
            self._open_file()
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    # Lifecycle

    def _open_file(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._fd, self._path = fd, path

    async def start(self) -> None:
        """Write in the background, and replay what dead processes left behind; raises when the
        database is unreachable (the writer is running all the same: it retries every
        ``interval_s``, and replays the orphans every ``replay_interval_s``)."""
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run())
        async with self._lock:
            await self.replay_orphans()

    async def _run(self) -> None:
        since_replay = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            since_replay += self._interval
            try:
                async with self._lock:  # see aclose
                    await self._flush_locked()
                    if since_replay >= self._replay_interval:
                        since_replay = 0.0
                        await self.replay_orphans()
            except Exception as exc:  # the database is down: the rows wait, spooled
                logger.debug("ledger: rows not written yet (%s)", exc)

    async def flush(self) -> None:
        """Write every spooled row to the database; raises when the database is unreachable."""
        async with self._lock:  # one writer at a time: each batch leaves the queue once
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        self._spool()
        if self._overflowed:
            await self._flush_from_file()
            return
        while self._pending:
            batch = self._pending[: self._batch]
            await write_rows(self._engine, batch)
            del self._pending[: len(batch)]
            self.written += len(batch)
        self._truncate_if_done()

    async def _flush_from_file(self) -> None:
        # Rows were spooled that are not in memory: the file has them all, in order.
        assert self._path is not None
        while True:
            end = os.fstat(self._fd).st_size
            rows = _read_rows(self._path, end, interrupt=False)
            for start in range(0, len(rows), self._batch):
                await write_rows(self._engine, rows[start : start + self._batch])
            self._spool()
            if os.fstat(self._fd).st_size == end:
                # Nothing was added while writing: everything is in (no await from here on).
                self.written += len(rows)
                self._pending.clear()
                self._overflowed = False
                self._truncate_if_done()
                return

    def _truncate_if_done(self) -> None:
        if self._fd >= 0 and not self._pending and not self._lines and not self._overflowed:
            os.ftruncate(self._fd, 0)
            if self._open:  # attempts still under way keep their pending rows
                self._write(b"".join(self._open.values()))

    async def replay_orphans(self) -> int:
        """Write the rows of spool files no live process holds, then delete them; how many rows."""
        if not self._dir.is_dir():
            return 0
        replayed = 0
        for path in sorted(self._dir.glob("*" + _SUFFIX)):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # another process replayed it meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                rows = _read_rows(path)
                for start in range(0, len(rows), self._batch):
                    await write_rows(self._engine, rows[start : start + self._batch])
                path.unlink(missing_ok=True)
                replayed += len(rows)
            finally:
                os.close(fd)
        if replayed:
            logger.warning("ledger: replayed %d rows left behind by a process that stopped", replayed)
        return replayed

    def _interrupt_open(self) -> None:
        """At shutdown: attempts still open are recorded as interrupted, at their estimate."""
        lines, self._open = list(self._open.values()), {}
        for line in lines:
            row = tuple(orjson.loads(line))
            self.add(_interrupted(row))

    @property
    def backlog(self) -> int:
        """Rows recorded and not yet in the database (at least; more when they overflowed)."""
        return len(self._pending) + (1 if self._overflowed else 0)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Write what is left; rows the database did not take stay spooled for the next start."""
        # Between writes, never in one: cut midway, a write left SQLite's write lock held, and
        # the last flush waited out the busy timeout and failed, leaving every row spooled. A
        # write still going after ``timeout_s`` (a hung database) is cut all the same: its rows
        # stay spooled for the next start, and the process can exit.
        await stop_between(self._task, self._lock, wait_s=timeout_s)
        self._task = None
        self._interrupt_open()
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except Exception as exc:
            logger.warning("ledger: %d rows stay spooled for the next start (%r)", self.backlog, exc)
        if self._fd >= 0:
            done = not self._pending and not self._overflowed and os.fstat(self._fd).st_size == 0
            os.close(self._fd)
            self._fd = -1
            if done and self._path is not None:
                self._path.unlink(missing_ok=True)
