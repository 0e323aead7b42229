"""The SQL tier: the ``cache_entries`` table, in SQLite on the embedded default or PostgreSQL.

Writes go through a write-behind queue: a response does not wait for its row, a background
task writes queued rows in batches, and `SqlTier.flush` (run at shutdown) writes what is left.
Expired rows are purged by SQL in batches, never loaded into Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from ..background import cancel_and_wait
from ..store.db import write_batch
from ..store.tables import cache_entries, cache_namespaces, cache_stats
from .batching import Batcher
from .entry import Entry, decode, encode

__all__ = ["SqlTier"]

logger = logging.getLogger("sluicegate.cache")
_BATCH = 200
_c = cache_entries.c
_SELECT = select(_c.key, _c.value, _c.hits).where(_c.key.in_(bindparam("keys", expanding=True)))


def _tag_token(tag: str) -> str:
    """A tag as stored between bars: ``%`` and ``|`` percent-encoded, so no tag holds a bar."""
    return tag.replace("%", "%25").replace("|", "%7C")


def _tags(tags: Sequence[str]) -> str:
    return "|" + "|".join(_tag_token(t) for t in tags) + "|" if tags else ""


def _tag_pattern(tag: str) -> str:
    """A LIKE pattern that matches exactly one stored tag: its wildcards escaped with a backslash."""
    token = _tag_token(tag).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%|{token}|%"


class SqlTier:
    """Entries as rows of ``cache_entries``."""

    name = "sql"

    def __init__(self, engine: AsyncEngine, compress_min_bytes: int, timeout_s: float | None = None) -> None:
        self.engine = engine
        self._compress_min = compress_min_bytes
        self._insert: Any = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._queue: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._write_lock = asyncio.Lock()
        self.pending_failures = 0
        self._gets: Batcher[str, Entry | None] = Batcher(self._get_many, max_batch=200, timeout_s=timeout_s)

    async def get(self, key: str) -> Entry | None:
        return await self._gets(key)

    async def _get_many(self, keys: list[str]) -> list[Entry | None]:
        """The entries under ``keys``, in one query (the lookups of one loop turn)."""
        async with self.engine.connect() as conn:
            rows = {row[0]: row for row in await conn.execute(_SELECT, {"keys": list(set(keys))})}
        found: list[Entry | None] = []
        for key in keys:
            row = rows.get(key)
            entry = decode(row[1]) if row is not None else None
            if entry is not None and row is not None:
                entry.hits = max(entry.hits, row[2])
            found.append(entry)
        return found

    def _row(self, key: str, entry: Entry, keep_s: float) -> dict[str, Any]:
        value = encode(entry, self._compress_min)
        namespace = int(key.split(":")[-3]) if key.count(":") >= 5 else 0
        return {
            "key": key,
            "feature": entry.feature,
            "org": entry.org,
            "user": entry.user,
            "model": entry.model,
            "namespace": namespace,
            "kind": entry.kind,
            "value": value,
            "size_bytes": len(value),
            "tags": _tags(entry.tags),
            "hits": entry.hits,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "keep_until": entry.created_at + keep_s,
        }

    async def set(self, key: str, entry: Entry, keep_s: float) -> None:
        """Write the row now (the write-behind path is `enqueue`)."""
        await self._upsert([self._row(key, entry, keep_s)])

    def enqueue(self, key: str, entry: Entry, keep_s: float) -> None:
        """Queue the row for the background writer; a later write of the same key replaces it."""
        self._queue[key] = self._row(key, entry, keep_s)
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_behind())

    async def _upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        statement = self._insert(cache_entries)
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[_c.key],
            set_={name: excluded[name] for name in rows[0] if name not in ("key", "hits")},
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, rows)

    async def _write_behind(self) -> None:
        while self._queue:
            await self._write_batch()
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()

    async def _write_batch(self) -> None:
        async with self._write_lock:
            failed = await self._write_batch_locked()
        if failed:
            await asyncio.sleep(min(5.0, 0.1 * 2**self.pending_failures))

    async def _write_batch_locked(self) -> bool:
        """Write one batch; True when it failed and was put back."""
        keys = list(self._queue)[:_BATCH]
        rows = [self._queue.pop(key) for key in keys]
        if not rows:
            return False
        try:
            await write_batch(rows, self._upsert, "cache")  # a row refused for its values is dropped
        except asyncio.CancelledError:
            self._requeue(rows)
            raise
        except Exception as exc:  # the database is down (or read only, or deadlocked): they wait
            self.pending_failures += 1
            self._requeue(rows)
            if self.pending_failures in (1, 10, 100):
                logger.warning("cache: %d SQL writes are waiting (%r)", len(self._queue), exc)
            return True
        self.pending_failures = 0
        return False

    def _requeue(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._queue.setdefault(row["key"], row)

    async def drop_queued(self, wait_s: float = 2.0) -> None:
        """Forget the rows not yet written, once the batch being written now (if any) has
        landed, waiting at most ``wait_s``: an invalidation came, and they may be what it
        deletes. They were copies of answers to keep; the next miss stores them again."""
        self._queue.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s), self._write_lock:
                self._queue.clear()

    @property
    def pending(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Write every queued row (at shutdown); give up after ``timeout_s``."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                if self._writer is not None:
                    await self._writer
                while self._queue and self.pending_failures < 3:
                    await self._write_batch()
        await cancel_and_wait(self._writer)
        self._writer = None
        if self._queue:
            logger.warning("cache: %d SQL writes were lost at shutdown", len(self._queue))

    async def delete(self, key: str) -> None:
        self._queue.pop(key, None)
        async with self.engine.begin() as conn:
            await conn.execute(delete(cache_entries).where(_c.key == key))

    async def touch(self, key: str, hits: int) -> None:
        await self.add_hits({key: hits})

    async def add_hits(self, hits: Mapping[str, int]) -> None:
        """Add hit counts to many rows in one statement."""
        statement = (
            update(cache_entries).where(_c.key == bindparam("k")).values(hits=_c.hits + bindparam("n"))
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, [{"k": k, "n": n} for k, n in hits.items()])

    async def purge(self, now: float, batch: int) -> int:
        """Delete rows kept past ``keep_until``, ``batch`` at a time; how many went."""
        total = 0
        while True:
            deleted = await self.purge_batch(now, batch)
            total += deleted
            if deleted < batch:
                return total

    async def purge_batch(self, now: float, batch: int) -> int:
        """Delete at most ``batch`` rows kept past ``keep_until``, in one statement; how many went."""
        doomed = select(_c.key).where(_c.keep_until < now).limit(batch).scalar_subquery()
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(cache_entries).where(_c.key.in_(doomed)))
        return result.rowcount or 0

    async def delete_where(self, **match: str) -> int:
        """Delete the rows of a ``feature``, ``org``, ``user``, ``model``, ``tag`` or ``key``."""
        statement = delete(cache_entries)
        for name, value in match.items():
            if name == "tag":
                statement = statement.where(_c.tags.like(_tag_pattern(value), escape="\\"))
            else:
                statement = statement.where(getattr(_c, name) == value)
        # Under the write lock: a batch being written now cannot land after the delete.
        async with self._write_lock:
            for key in [k for k, row in self._queue.items() if _matches(row, match)]:
                del self._queue[key]
            async with self.engine.begin() as conn:
                result = await conn.execute(statement)
        return result.rowcount or 0

    async def size(self) -> dict[str, tuple[int, int]]:
        """Entries and bytes per feature."""
        query = select(_c.feature, func.count(), func.coalesce(func.sum(_c.size_bytes), 0)).group_by(
            _c.feature
        )
        async with self.engine.connect() as conn:
            return {row[0]: (int(row[1]), int(row[2])) for row in await conn.execute(query)}

    # Namespace versions and counters, kept in the same database.

    async def namespaces(self) -> dict[str, int]:
        """Every feature's namespace version (features never bumped are at 0)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(cache_namespaces.c.feature, cache_namespaces.c.version))
            return {row[0]: int(row[1]) for row in rows}

    async def bump(self, feature: str) -> int:
        """Increment ``feature``'s namespace version; the new version."""
        table = cache_namespaces
        statement = self._insert(table).values(feature=feature, version=1)
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.feature], set_={"version": table.c.version + 1}
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement)
            row = (await conn.execute(select(table.c.version).where(table.c.feature == feature))).one()
        return int(row[0])

    async def add_stats(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Add to the shared counters, keyed by (feature, metric)."""
        rows = [{"feature": f, "metric": m, "value": v} for (f, m), v in counts.items()]
        statement = self._insert(cache_stats)
        statement = statement.on_conflict_do_update(
            index_elements=[cache_stats.c.feature, cache_stats.c.metric],
            set_={"value": cache_stats.c.value + statement.excluded.value},
        )
        async with self.engine.begin() as conn:
            await conn.execute(statement, rows)

    async def stats(self) -> dict[tuple[str, str], int]:
        """The shared counters."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(cache_stats.c.feature, cache_stats.c.metric, cache_stats.c.value)
            )
            return {(row[0], row[1]): int(row[2]) for row in rows}


def _matches(row: Mapping[str, Any], match: Mapping[str, str]) -> bool:
    for name, value in match.items():
        if name == "tag":
            if f"|{_tag_token(value)}|" not in row["tags"]:
                return False
        elif row.get(name) != value:
            return False
    return True
