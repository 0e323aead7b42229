"""Daily roll-ups of the ledger and its retention, on SQLite and PostgreSQL, and what the usage
report makes of them."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate import load_settings
from sluicegate.accounting.ledger import COLUMNS, Row
from sluicegate.accounting.outbox import insert_rows
from sluicegate.accounting.rollups import (
    DAY_S,
    Compactor,
    compact,
    days_to_check,
    purged_through,
    roll_up_day,
)
from sluicegate.accounting.usage import Period, UsageQuery, report
from sluicegate.config import LedgerConfig
from sluicegate.errors import ConfigError
from sluicegate.store.db import create_engine
from sluicegate.store.tables import usage_daily, usage_ledger

TODAY = (dt.date(2026, 3, 10) - dt.date(1970, 1, 1)).days
NOW = TODAY * DAY_S + 5 * 3600.0  # 05:00 UTC
KEEP_ALL = LedgerConfig(retention_days=None)


def at(day: int, seconds: float = 3600.0) -> float:
    """A time ``seconds`` into ``day`` (days since 1970-01-01)."""
    return day * DAY_S + seconds


def ledger_row(request_id: str, when: float, attempt: int = 1, **values: Any) -> Row:
    """A ledger row with sensible defaults, ``values`` overriding them."""
    row = {
        "request_id": request_id,
        "attempt": attempt,
        "at": when,
        "org": "acme",
        "user": None,
        "key_id": "key1",
        "feature": "chat",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "prompt_tokens": 10,
        "cached_tokens": 2,
        "completion_tokens": 5,
        "reasoning_tokens": 1,
        "cost_micro": 0 if attempt == 0 else 100,
        "saved_micro": 50 if attempt == 0 else 0,
        "cache": "hit-memory" if attempt == 0 else "miss",
        "status": 200,
        "latency_ms": 3,
        "priced_from": "usage",
        **values,
    }
    return tuple(row[name] for name in COLUMNS)


async def rollups(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every roll-up row, in key order, with plain ints."""
    d = usage_daily.c
    async with engine.connect() as connection:
        result = await connection.execute(select(usage_daily).order_by(d.day, d.org, d.user, d.model))
        return [
            {k: (v if isinstance(v, str | bool) else int(v)) for k, v in row._mapping.items()}
            for row in result
        ]


async def ledger_days(engine: AsyncEngine) -> list[int]:
    """The day of every ledger row, sorted."""
    async with engine.connect() as connection:
        result = await connection.execute(select(usage_ledger.c.at))
        return sorted(int(when // DAY_S) for (when,) in result)


async def eventually(check: Callable[[], Awaitable[object]]) -> None:
    """Wait up to 10 s for ``check`` to return something true."""
    for _ in range(500):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not within 10 s")


# Which days a compaction looks at (pure)


def test_an_empty_ledger_has_nothing_to_check() -> None:
    """Without ledger rows no day is checked, whatever else is known."""
    assert days_to_check(None, None, None, TODAY, TODAY - 90) == []


def test_the_first_run_checks_every_ended_day_and_never_today() -> None:
    """With no roll-up yet, every day from the ledger's first to yesterday is checked."""
    assert days_to_check(10, None, None, 15, None) == [10, 11, 12, 13, 14]


def test_a_steady_run_rechecks_only_the_newest_roll_ups() -> None:
    """Once every day is rolled up, only the last two (for late rows) and new ones are checked."""
    assert days_to_check(10, 14, None, 15, None) == [13, 14]
    assert days_to_check(10, 12, None, 15, None) == [11, 12, 13, 14]


def test_every_day_retention_is_about_to_delete_is_checked_and_purged_days_never() -> None:
    """The days before the cut that are still in the ledger are checked; purged ones are not."""
    assert days_to_check(10, 18, None, 20, 13) == [10, 11, 12, 17, 18, 19]
    assert days_to_check(5, 18, 11, 20, 13) == [12, 17, 18, 19]


# Roll-ups


async def test_a_day_rolls_up_to_its_sums(engine: AsyncEngine) -> None:
    """Each group's sums are right: retries, a fallback to another model, a cache hit, no user."""
    day = TODAY - 1
    await insert_rows(
        engine,
        [
            ledger_row("r1", at(day), 1),
            ledger_row("r1", at(day, 10), 2, cost_micro=150),  # a retry
            ledger_row("r2", at(day, 20), 1, user="ann", cost_micro=0, status=503),
            ledger_row("r2", at(day, 30), 2, user="ann", model="gpt-4o", cost_micro=300),  # fallback
            ledger_row("r3", at(day, 40), 0, user="ann"),  # a cache hit
            ledger_row("r4", at(day - 1), 1, org="globex"),
            ledger_row("r5", at(TODAY), 1),  # today: not yet
        ],
    )
    done = await compact(engine, KEEP_ALL, NOW)
    assert done.rolled_up == (day - 1, day)
    rows = [r for r in await rollups(engine) if r["day"] == day]
    common = {"day": day, "org": "acme", "feature": "chat", "ledger_purged": False}
    assert rows == [
        {
            **common,
            "user": "",
            "model": "gpt-4o-mini",
            "requests": 1,
            "model_requests": 1,
            "upstream_calls": 2,
            "cache_hits": 0,
            "prompt_tokens": 20,
            "cached_tokens": 4,
            "completion_tokens": 10,
            "reasoning_tokens": 2,
            "cost_micro": 250,
            "saved_micro": 0,
        },
        {
            **common,
            "user": "ann",
            "model": "gpt-4o",
            "requests": 0,  # r2 counts under the model of its first attempt
            "model_requests": 1,
            "upstream_calls": 1,
            "cache_hits": 0,
            "prompt_tokens": 10,
            "cached_tokens": 2,
            "completion_tokens": 5,
            "reasoning_tokens": 1,
            "cost_micro": 300,
            "saved_micro": 0,
        },
        {
            **common,
            "user": "ann",
            "model": "gpt-4o-mini",
            "requests": 2,
            "model_requests": 2,
            "upstream_calls": 1,
            "cache_hits": 1,
            "prompt_tokens": 20,
            "cached_tokens": 4,
            "completion_tokens": 10,
            "reasoning_tokens": 2,
            "cost_micro": 0,
            "saved_micro": 50,
        },
    ]
    assert all(r["day"] < TODAY for r in await rollups(engine))


async def test_today_is_not_rolled_up(engine: AsyncEngine) -> None:
    """Rows of the day under way, from its first second, are left for after midnight."""
    await insert_rows(engine, [ledger_row("a", at(TODAY, 0)), ledger_row("b", NOW - 1)])
    assert (await compact(engine, KEEP_ALL, NOW)).rolled_up == ()
    assert await rollups(engine) == []
    assert (await compact(engine, KEEP_ALL, (TODAY + 1) * DAY_S)).rolled_up == (TODAY,)


async def test_recomputing_a_day_is_idempotent_and_a_late_row_replaces_the_sums(engine: AsyncEngine) -> None:
    """Rolling a day up again changes nothing, a second run skips it, and a late row is counted once."""
    day = TODAY - 1
    await insert_rows(engine, [ledger_row("a", at(day)), ledger_row("b", at(day, 60), 0)])
    await compact(engine, KEEP_ALL, NOW)
    first = await rollups(engine)
    await roll_up_day(engine, day)
    assert await rollups(engine) == first
    assert (await compact(engine, KEEP_ALL, NOW)).rolled_up == ()  # nothing changed: no work
    await insert_rows(engine, [ledger_row("c", at(day, 120), cost_micro=7)])  # a replayed spool
    assert (await compact(engine, KEEP_ALL, NOW)).rolled_up == (day,)
    (again,) = await rollups(engine)
    assert (again["requests"], again["upstream_calls"], again["cost_micro"]) == (3, 2, 107)


# Retention


async def test_retention_deletes_only_rolled_up_old_rows_in_batches(engine: AsyncEngine) -> None:
    """Rows of days before the cut go, in batches of compact_batch, after their roll-up; the rest stay."""
    cut = TODAY - 90
    old = [ledger_row(f"o{i}", at(cut - 2, i)) for i in range(5)]
    old += [ledger_row(f"p{i}", at(cut - 1, DAY_S - 1 - i)) for i in range(2)]
    kept = [ledger_row("k1", at(cut, 0)), ledger_row("k2", at(TODAY - 1))]
    await insert_rows(engine, old + kept)
    deletes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE FROM usage_ledger"):
            deletes.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    done = await compact(engine, LedgerConfig(retention_days=90, compact_batch=2), NOW)
    event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert done.ledger_rows_deleted == 7 and len(deletes) == 4  # 2 + 2 + 2 + 1
    assert await ledger_days(engine) == [cut, TODAY - 1]
    rolled = {
        r["day"]: (r["upstream_calls"], r["cost_micro"], r["ledger_purged"]) for r in await rollups(engine)
    }
    assert rolled == {
        cut - 2: (5, 500, True),
        cut - 1: (2, 200, True),
        cut: (1, 100, False),
        TODAY - 1: (1, 100, False),
    }
    assert await purged_through(engine) == cut - 1


async def test_a_purged_day_keeps_its_roll_up_whatever_arrives_later(engine: AsyncEngine) -> None:
    """A row that reaches a purged day is never folded into (nor overwrites) its roll-up."""
    cut = TODAY - 90
    config = LedgerConfig(retention_days=90)
    await insert_rows(engine, [ledger_row("a", at(cut - 1)), ledger_row("b", at(cut - 1, 60))])
    await compact(engine, config, NOW)
    before = await rollups(engine)
    await insert_rows(engine, [ledger_row("late", at(cut - 1, 120), cost_micro=9)])
    await roll_up_day(engine, cut - 1)  # would shrink the day to the one late row
    assert await rollups(engine) == before
    done = await compact(engine, config, NOW)
    assert (done.rolled_up, done.ledger_rows_deleted) == ((), 1)
    assert await rollups(engine) == before


async def test_roll_ups_past_their_own_retention_are_deleted(engine: AsyncEngine) -> None:
    """rollup_retention_days deletes the roll-ups of days that old, once their ledger rows are gone."""
    await insert_rows(engine, [ledger_row("a", at(TODAY - 40)), ledger_row("b", at(TODAY - 20))])
    config = LedgerConfig(retention_days=10, rollup_retention_days=30)
    done = await compact(engine, config, NOW)
    assert (done.ledger_rows_deleted, done.rollups_deleted) == (2, 1)
    assert [r["day"] for r in await rollups(engine)] == [TODAY - 20]


# The usage report


PERIODS: tuple[Period, ...] = ("day", "week", "month", "all")
GROUPINGS = [
    ("org",),
    ("user",),
    ("model",),
    ("org", "user"),
    ("feature", "model"),
    ("org", "user", "feature", "model"),
]


async def spread_usage(engine: AsyncEngine) -> None:
    """Usage on both sides of the retention cut (TODAY - 90), for two orgs."""
    rows = []
    for offset in (-95, -93, -92, -91, -90, -89, -60, -1):
        day = TODAY + offset
        for i, (org, user, model) in enumerate(
            [("acme", None, "gpt-4o-mini"), ("acme", "ann", "gpt-4o"), ("globex", "bob", "gpt-4o-mini")]
        ):
            rid = f"{day}-{i}"
            rows.append(ledger_row(rid, at(day, 100 * i), 1, org=org, user=user, model=model))
            if i == 1:  # a fallback: the same request on another model
                rows.append(ledger_row(rid, at(day, 100 * i + 5), 2, org=org, user=user, cost_micro=40))
            rows.append(ledger_row(rid + "h", at(day, 100 * i + 50), 0, org=org, user=user, feature="okr"))
    await insert_rows(engine, rows)


async def reports(engine: AsyncEngine, since: float) -> list[dict[str, Any]]:
    """The report for every grouping, period and a few filters, from ``since`` to now."""
    bodies = []
    for group_by in GROUPINGS:
        for period in PERIODS:
            bodies.append(await report(engine, UsageQuery(since, NOW, group_by, period)))
    for filters in ({"org": "acme"}, {"user": "ann"}, {"model": "gpt-4o-mini"}, {"feature": "okr"}):
        bodies.append(await report(engine, UsageQuery(since, NOW, ("org",), "week", **filters)))
    return bodies


async def test_the_report_is_unchanged_by_compaction(engine: AsyncEngine) -> None:
    """Over days purged and kept, every grouping and period reports the same before and after."""
    await spread_usage(engine)
    since = float((TODAY - 100) * DAY_S)
    before = await reports(engine, since)
    done = await compact(engine, LedgerConfig(retention_days=90), NOW)
    assert done.ledger_rows_deleted == 4 * 7 and await purged_through(engine) == TODAY - 91
    assert min(await ledger_days(engine)) == TODAY - 90
    assert await reports(engine, since) == before
    assert before[3]["totals"]["requests"] == 8 * 6 and before[3]["totals"]["upstream_calls"] == 8 * 4


async def test_a_report_by_key_shows_purged_days_without_a_key(engine: AsyncEngine) -> None:
    """Roll-ups keep no key: a purged day's usage appears under key_id null, with the same totals."""
    await spread_usage(engine)
    query = UsageQuery(float((TODAY - 100) * DAY_S), NOW, ("key_id",), "day")
    before = await report(engine, query)
    await compact(engine, LedgerConfig(retention_days=90), NOW)
    after = await report(engine, query)
    assert after["totals"] == before["totals"]
    assert {r["key_id"] for r in after["data"] if r["period"] < "2025-12-10"} == {None}
    assert {r["key_id"] for r in after["data"] if r["period"] >= "2025-12-10"} == {"key1"}


# In the background


async def test_the_compactor_rolls_up_in_the_background(engine: AsyncEngine) -> None:
    """A started Compactor rolls up the ended days by itself."""
    await insert_rows(engine, [ledger_row("a", at(TODAY - 1))])
    compactor = Compactor(engine, LedgerConfig(compact_interval_s=0.01), clock=lambda: NOW)
    compactor.start()
    try:
        await eventually(lambda: rollups(engine))
    finally:
        await compactor.stop()
    assert [r["day"] for r in await rollups(engine)] == [TODAY - 1]


async def test_the_compactor_survives_a_database_outage(caplog: pytest.LogCaptureFixture) -> None:
    """With the database unreachable, each run logs a warning and the next one tries again."""
    unreachable = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    compactor = Compactor(unreachable, LedgerConfig(compact_interval_s=0.01))
    caplog.set_level(logging.WARNING, logger="sluicegate.ledger")
    compactor.start()

    async def retried() -> bool:
        return sum("compaction failed" in r.getMessage() for r in caplog.records) >= 2

    try:
        await eventually(retried)
    finally:
        await compactor.stop()
        await unreachable.dispose()


# Configuration


def test_the_ledger_config_has_retention_defaults_and_checks_them() -> None:
    """Ledger rows are kept 90 days and roll-ups forever by default; bad combinations are named."""
    ledger = load_settings().ledger
    assert (ledger.retention_days, ledger.rollup_retention_days) == (90, None)
    assert (ledger.compact_interval_s, ledger.compact_batch) == (3600.0, 5000)
    assert load_settings(ledger={"retention_days": None}).ledger.retention_days is None
    assert load_settings(ledger={"rollup_retention_days": 400}).ledger.rollup_retention_days == 400
    for bad in (
        {"retention_days": 0},
        {"rollup_retention_days": 30},  # shorter than the ledger's 90 days
        {"retention_days": None, "rollup_retention_days": 400},
        {"compact_interval_s": 0},
    ):
        with pytest.raises(ConfigError, match="ledger"):
            load_settings(ledger=bad)
