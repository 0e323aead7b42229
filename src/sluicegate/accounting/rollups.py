"""Daily roll-ups of the usage ledger, and its retention (docs/cost-control.md).

Each ended UTC day is summed inside the database, per org, user, feature and model, into
``usage_daily`` by one ``INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE``: recomputing a
day replaces its sums, never adds to them, so two workers compacting at once are harmless.
The ledger is append-only, so a day's roll-up is current exactly when it counts as many rows
as the ledger holds for that day: that check is what keeps repeated runs cheap, and it catches
rows that reached the database late (a replayed spool, a database outage).

Retention deletes the ledger rows of days older than ``ledger.retention_days``, in batches,
only after every such day was checked current. Their roll-ups are first marked
``ledger_purged``: from then on no recomputation may touch them (the ledger no longer has the
whole day), and the usage report reads those days from the roll-ups (`purged_through`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ..background import stop_between
from ..config import LedgerConfig

__all__ = ["DAY_S", "Compaction", "Compactor", "compact", "days_to_check", "purged_through", "roll_up_day"]

logger = logging.getLogger("sluicegate.ledger")
DAY_S = 86_400
# The newest roll-ups are checked again on each run, for rows that reached the database late.
RECHECK_DAYS = 2

_SUMS = (
    "requests",
    "model_requests",
    "upstream_calls",
    "cache_hits",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_micro",
    "saved_micro",
)
# `nth` numbers a request's rows of the day: its first row carries the request in `requests`.
# SQLite needs the WHERE before ON CONFLICT, or it may read ON as a join's.
_ROLL_UP = f"""
INSERT INTO usage_daily (day, org, "user", feature, model, {", ".join(_SUMS)}, ledger_purged)
SELECT CAST(:day AS INTEGER), org, coalesce("user", ''), feature, model,
    sum(CASE WHEN nth = 1 THEN 1 ELSE 0 END), count(DISTINCT request_id),
    sum(CASE WHEN attempt = 0 THEN 0 ELSE 1 END), sum(CASE WHEN attempt = 0 THEN 1 ELSE 0 END),
    sum(prompt_tokens), sum(cached_tokens), sum(completion_tokens), sum(reasoning_tokens),
    sum(cost_micro), sum(saved_micro), false
FROM (
    SELECT request_id, attempt, org, "user", feature, model, prompt_tokens, cached_tokens,
        completion_tokens, reasoning_tokens, cost_micro, saved_micro,
        row_number() OVER (PARTITION BY request_id ORDER BY attempt, id) AS nth
    FROM usage_ledger WHERE at >= :start AND at < :end
) AS day_rows
WHERE true
GROUP BY org, coalesce("user", ''), feature, model
ON CONFLICT (day, org, "user", feature, model) DO UPDATE SET
    {", ".join(f"{name} = excluded.{name}" for name in _SUMS)}
WHERE NOT usage_daily.ledger_purged
"""
_LEDGER_ROWS = "SELECT count(*) FROM usage_ledger WHERE at >= :start AND at < :end"
_ROLLED_ROWS = "SELECT coalesce(sum(upstream_calls + cache_hits), 0) FROM usage_daily WHERE day = :day"
_STATE = (
    "SELECT (SELECT min(at) FROM usage_ledger), (SELECT max(day) FROM usage_daily), "
    "(SELECT max(day) FROM usage_daily WHERE ledger_purged)"
)
_PURGED_THROUGH = "SELECT max(day) FROM usage_daily WHERE ledger_purged"
_MARK_PURGED = (
    "UPDATE usage_daily SET ledger_purged = true WHERE day > :after AND day < :day AND NOT ledger_purged"
)
_DELETE_BATCH = (
    "DELETE FROM usage_ledger WHERE id IN "
    "(SELECT id FROM usage_ledger WHERE at < :before ORDER BY id LIMIT :n)"
)
_DELETE_ROLLUPS = "DELETE FROM usage_daily WHERE day < :day"


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one compaction did: the days rolled up (days since 1970-01-01) and the rows deleted."""

    rolled_up: tuple[int, ...] = ()
    ledger_rows_deleted: int = 0
    rollups_deleted: int = 0


def days_to_check(
    first: int | None, last: int | None, purged: int | None, today: int, cut: int | None
) -> list[int]:
    """The days whose roll-up a compaction checks (pure): every day of the ledger not rolled up
    yet, the last `RECHECK_DAYS` rolled up, and every day retention is about to delete.

    ``first`` is the ledger's oldest day, ``last`` the newest rolled up, ``purged`` the newest
    whose ledger rows are deleted, ``cut`` the first day retention keeps; today never counts.
    """
    if first is None:
        return []
    low = first if purged is None else max(first, purged + 1)
    recent = low if last is None else max(low, last + 1 - RECHECK_DAYS)
    days = set(range(recent, today))
    if cut is not None:
        days.update(range(low, min(cut, today)))
    return sorted(days)


async def roll_up_day(engine: AsyncEngine, day: int) -> None:
    """Recompute the roll-up of ``day`` (days since 1970-01-01) from the ledger, in the database."""
    params = {"day": day, "start": float(day * DAY_S), "end": float((day + 1) * DAY_S)}
    async with engine.begin() as connection:
        await connection.execute(text(_ROLL_UP), params)


async def _is_current(engine: AsyncEngine, day: int) -> bool:
    """Whether the roll-up of ``day`` counts every ledger row of that day."""
    span = {"start": float(day * DAY_S), "end": float((day + 1) * DAY_S)}
    async with engine.connect() as connection:
        ledger = (await connection.execute(text(_LEDGER_ROWS), span)).scalar_one()
        rolled = (await connection.execute(text(_ROLLED_ROWS), {"day": day})).scalar_one()
    return int(ledger) == int(rolled)


async def purged_through(engine: AsyncEngine) -> int | None:
    """The newest day whose ledger rows retention deleted: the report reads it, and every day
    before it, from the roll-ups."""
    async with engine.connect() as connection:
        day = (await connection.execute(text(_PURGED_THROUGH))).scalar_one()
    return None if day is None else int(day)


async def _delete_ledger_before(engine: AsyncEngine, cut: int, purged: int | None, batch: int) -> int:
    """Mark the roll-ups of the days before ``cut`` (after ``purged``, marked before) as the only
    record, then delete those days' ledger rows ``batch`` at a time; how many were deleted."""
    async with engine.begin() as connection:
        await connection.execute(text(_MARK_PURGED), {"after": -1 if purged is None else purged, "day": cut})
    deleted = 0
    while True:
        async with engine.begin() as connection:
            result = await connection.execute(text(_DELETE_BATCH), {"before": float(cut * DAY_S), "n": batch})
        deleted += result.rowcount
        if result.rowcount < batch:
            return deleted


async def compact(engine: AsyncEngine, config: LedgerConfig, now: float) -> Compaction:
    """Roll up the ended days that need it, then apply ``retention_days`` and
    ``rollup_retention_days``; idempotent, and safe to run on several workers at once."""
    today = int(now // DAY_S)
    cut = None if config.retention_days is None else today - config.retention_days
    async with engine.connect() as connection:
        first_at, last, purged = (await connection.execute(text(_STATE))).one()
    first = None if first_at is None else int(first_at // DAY_S)
    rolled = []
    for day in days_to_check(first, last, purged, today, cut):
        if not await _is_current(engine, day):
            await roll_up_day(engine, day)
            rolled.append(day)
    deleted = 0
    if cut is not None:
        # Every day before the cut was checked current above: its rows may go.
        deleted = await _delete_ledger_before(engine, cut, purged, config.compact_batch)
    rollups_deleted = 0
    if config.rollup_retention_days is not None:
        async with engine.begin() as connection:
            result = await connection.execute(
                text(_DELETE_ROLLUPS), {"day": today - config.rollup_retention_days}
            )
        rollups_deleted = result.rowcount
    return Compaction(tuple(rolled), deleted, rollups_deleted)


class Compactor:
    """Runs `compact` in the background of each worker, every ``ledger.compact_interval_s``."""

    def __init__(
        self, engine: AsyncEngine, config: LedgerConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._config = config
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._compacting = asyncio.Lock()  # held while compacting: see stop

    def start(self) -> None:
        """Compact in the background, first at a random point of the first interval."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        interval = self._config.compact_interval_s
        # Workers started together spread out, and a short-lived process does no compaction.
        delay = interval * random.uniform(0.1, 1.0)
        while True:
            await asyncio.sleep(delay)
            delay = interval
            try:
                async with self._compacting:
                    done = await compact(self._engine, self._config, self._clock())
            except Exception as exc:  # the database is down: the next interval tries again
                logger.warning("ledger: compaction failed, tried again in %g s (%r)", interval, exc)
                continue
            if done.rolled_up or done.ledger_rows_deleted or done.rollups_deleted:
                logger.info(
                    "ledger: rolled up %d day(s), deleted %d ledger row(s) and %d roll-up(s)",
                    len(done.rolled_up),
                    done.ledger_rows_deleted,
                    done.rollups_deleted,
                )

    async def stop(self) -> None:
        """Stop compacting: a compaction under way may finish for up to 2 s (cut midway, an SQLite
        write may keep the database's write lock); one cut short is done again next time."""
        await stop_between(self._task, self._compacting, wait_s=2.0)
        self._task = None
