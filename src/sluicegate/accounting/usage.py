"""Usage reports from the ledger: requests, tokens, cost, cache hits and cost saved, grouped by
org, user, key, feature, model and period (day, week or month, in UTC).

The database sums per group and per day (`query_days`); folding days into weeks or months and
the totals are pure (`fold`). Days whose ledger rows retention deleted are read from their daily
roll-ups (`accounting/rollups.py`) instead: whole days, with no ``key_id``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from sqlalchemy import Integer, case, cast, func, null, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import InvalidRequest
from ..store.tables import usage_daily, usage_ledger
from .rollups import purged_through

__all__ = ["DIMENSIONS", "PERIODS", "UsageQuery", "fold", "query_days", "report"]

_LAST_S = 253_402_300_799.0  # 9999-12-31 23:59:59 UTC

DIMENSIONS = ("org", "user", "key_id", "feature", "model")
PERIODS = ("day", "week", "month", "all")
Period = Literal["day", "week", "month", "all"]
METRICS = (
    "requests",
    "upstream_calls",
    "cache_hits",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_micro",
    "saved_micro",
)
_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What to report: a time range (Unix seconds, ``until`` excluded), grouping and filters."""

    since: float
    until: float
    group_by: tuple[str, ...] = ("org",)
    period: Period = "day"
    org: str | None = None
    user: str | None = None
    feature: str | None = None
    model: str | None = None

    @classmethod
    def parse(cls, params: dict[str, str], now: float, org: str | None) -> UsageQuery:
        """A query from URL parameters (``days``, ``since``, ``until``, ``group_by``, ``period``,
        filters); ``org`` forces the org filter (an org's key sees only its own org)."""
        try:
            until = float(params["until"]) if "until" in params else now
            if "since" in params:
                since = float(params["since"])
            else:
                since = until - float(params.get("days", "30")) * _DAY_S
        except ValueError:
            raise InvalidRequest(
                "since and until are Unix seconds, days a number", code="invalid_range"
            ) from None
        if not all(map(math.isfinite, (since, until))):
            raise InvalidRequest(
                "since, until and days are finite numbers (days=3650 reaches ten years back)",
                code="invalid_range",
            )
        # The ledger holds nothing before 1970 or past 9999: a wider range is clamped to that
        # (the days of a range of 1e300 s overflowed PostgreSQL's integers, a 503).
        since, until = max(since, 0.0), min(until, _LAST_S)
        if not since < until:
            raise InvalidRequest("the range is empty: since must be before until", code="invalid_range")
        group_by = tuple(g for g in params.get("group_by", "org").split(",") if g)
        unknown = [g for g in group_by if g not in DIMENSIONS]
        if unknown or len(set(group_by)) != len(group_by):
            raise InvalidRequest(
                f"group_by takes distinct values among {', '.join(DIMENSIONS)}; "
                f"got {params.get('group_by')!r}",
                param="group_by",
                code="invalid_group_by",
            )
        period = params.get("period", "day")
        if period not in PERIODS:
            raise InvalidRequest(
                f"period is one of {', '.join(PERIODS)}", param="period", code="invalid_period"
            )
        forced = org if org is not None else params.get("org")
        return cls(
            since,
            until,
            group_by,
            period,  # type: ignore[arg-type]
            forced,
            params.get("user"),
            params.get("feature"),
            params.get("model"),
        )


_TOKENS_AND_MONEY = METRICS[3:]  # summed as they are (the first three are counted)


def _day_number(engine: AsyncEngine) -> Any:
    at = usage_ledger.c.at
    if engine.dialect.name == "postgresql":
        return cast(func.floor(at / _DAY_S), Integer)
    return cast(at / _DAY_S, Integer)  # SQLite truncates, and every `at` is positive


async def query_days(engine: AsyncEngine, query: UsageQuery) -> list[dict[str, Any]]:
    """Sums per group and per UTC day (``day`` is days since 1970-01-01): from the ledger, and
    from the roll-ups for the days whose ledger rows were deleted (each counted whole)."""
    purged = await purged_through(engine)
    if purged is None or query.since >= (purged + 1) * _DAY_S:
        return await _ledger_days(engine, query, query.since)
    last = min(purged, math.ceil(query.until / _DAY_S) - 1)
    days = await _rollup_days(engine, query, int(query.since // _DAY_S), last)
    since = float((purged + 1) * _DAY_S)
    if since < query.until:
        days += await _ledger_days(engine, query, since)
    return days


async def _ledger_days(engine: AsyncEngine, query: UsageQuery, since: float) -> list[dict[str, Any]]:
    """Sums per group and per UTC day of the ledger's rows from ``since`` to ``query.until``.

    A request counts once, in the day and group of its first row (as in the roll-ups'
    ``requests``); in a report per model, once under each model it used (``model_requests``).
    """
    c = usage_ledger.c
    where = [c.at >= since, c.at < query.until]
    where += [
        getattr(c, n) == getattr(query, n) for n in ("org", "user", "feature", "model") if getattr(query, n)
    ]
    per_model = "model" in query.group_by or query.model is not None
    request = (c.request_id, c.model) if per_model else (c.request_id,)
    nth = func.row_number().over(partition_by=request, order_by=(c.attempt, c.id))
    rows = select(usage_ledger, _day_number(engine).label("day"), nth.label("nth")).where(*where).subquery()
    r = rows.c
    served = r.attempt == 0
    requests = func.sum(case((r.nth == 1, 1), else_=0))
    columns = [getattr(r, name) for name in query.group_by]
    statement = select(
        *columns,
        r.day,
        func.sum(case((served, 1), else_=0)).label("cache_hits"),
        func.sum(case((served, 0), else_=1)).label("upstream_calls"),
        requests.label("requests"),
        *(func.sum(getattr(r, name)).label(name) for name in _TOKENS_AND_MONEY),
    ).group_by(*columns, r.day)
    async with engine.connect() as connection:
        result = await connection.execute(statement)
        return [dict(row._mapping) for row in result]


async def _rollup_days(engine: AsyncEngine, query: UsageQuery, first: int, last: int) -> list[dict[str, Any]]:
    """Sums per group and per UTC day of the roll-ups of days ``first`` to ``last``."""
    d = usage_daily.c
    # A request counts once per group: in each model's row when the report is per model (or for
    # one model), else in the row of its first ledger row of the day.
    per_model = "model" in query.group_by or query.model is not None
    requests = d.model_requests if per_model else d.requests
    grouped = {"org": d.org, "user": d.user, "feature": d.feature, "model": d.model}
    shown = {**grouped, "user": func.nullif(d.user, "").label("user"), "key_id": null().label("key_id")}
    columns = [shown[name] for name in query.group_by]  # roll-ups keep no key: key_id is null
    statement = (
        select(
            *columns,
            d.day,
            *(func.sum(getattr(d, name)).label(name) for name in METRICS if name != "requests"),
            func.sum(requests).label("requests"),
        )
        .where(d.day >= first, d.day <= last)
        .group_by(*(grouped[name] for name in query.group_by if name in grouped), d.day)
    )
    for name in ("org", "user", "feature", "model"):
        value = getattr(query, name)
        if value is not None:
            statement = statement.where(grouped[name] == value)
    async with engine.connect() as connection:
        result = await connection.execute(statement)
        return [dict(row._mapping) for row in result]


def _bucket(day: int, period: Period) -> str:
    date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    if period == "day":
        return date.isoformat()
    if period == "week":
        return (date - dt.timedelta(days=date.weekday())).isoformat()  # the Monday it starts on
    if period == "month":
        return date.strftime("%Y-%m")
    return "all"


def fold(days: Iterable[dict[str, Any]], group_by: Sequence[str], period: Period) -> list[dict[str, Any]]:
    """Day sums folded into the period's buckets, sorted by bucket then group (pure)."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for day in days:
        bucket = _bucket(int(day["day"]), period)
        key = (bucket, *(day[name] for name in group_by))
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"period": bucket, **{name: day[name] for name in group_by}}
            row.update(dict.fromkeys(METRICS, 0))
        for metric in METRICS:
            row[metric] += int(day[metric] or 0)
    ordered = sorted(rows.values(), key=lambda r: (r["period"], *(str(r[n]) for n in group_by)))
    for row in ordered:
        _dollars(row)
    return ordered


def _dollars(row: dict[str, Any]) -> None:
    row["cost_usd"] = row["cost_micro"] / 1_000_000
    row["saved_usd"] = row["saved_micro"] / 1_000_000


async def report(engine: AsyncEngine, query: UsageQuery) -> dict[str, Any]:
    """The usage report: one row per period and group, and the totals."""
    rows = fold(await query_days(engine, query), query.group_by, query.period)
    totals: dict[str, Any] = dict.fromkeys(METRICS, 0)
    for row in rows:
        for metric in METRICS:
            totals[metric] += row[metric]
    if "model" in query.group_by and query.model is None:
        # Per model, a request that fell back counts under each model it used: its total is
        # the distinct requests, counted as without the grouping.
        alone = replace(query, group_by=tuple(n for n in query.group_by if n != "model"))
        totals["requests"] = sum(int(day["requests"] or 0) for day in await query_days(engine, alone))
    _dollars(totals)
    return {
        "object": "usage",
        "since": query.since,
        "until": query.until,
        "period": query.period,
        "group_by": list(query.group_by),
        "filters": {n: getattr(query, n) for n in ("org", "user", "feature", "model") if getattr(query, n)},
        "data": rows,
        "totals": totals,
    }
