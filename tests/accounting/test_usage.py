"""Usage reports: folding day sums into weeks and months (pure), and the query on both databases."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate.accounting.outbox import insert_rows
from sluicegate.accounting.usage import UsageQuery, fold, report
from sluicegate.errors import InvalidRequest
from tests.accounting.test_outbox import make_row


def day_number(date: str) -> int:
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days


def day_sum(date: str, org: str, **metrics: int) -> dict[str, Any]:
    base = dict.fromkeys(
        (
            "requests",
            "upstream_calls",
            "cache_hits",
            "prompt_tokens",
            "cached_tokens",
            "completion_tokens",
            "reasoning_tokens",
            "cost_micro",
            "saved_micro",
        ),
        0,
    )
    return {"day": day_number(date), "org": org, **base, **metrics}


def test_days_fold_into_iso_weeks_and_months() -> None:
    days = [
        day_sum("2026-11-22", "acme", requests=1, cost_micro=10),  # a Sunday: the week of the 16th
        day_sum("2026-11-23", "acme", requests=2, cost_micro=20),  # Monday
        day_sum("2026-11-29", "acme", requests=3, cost_micro=30),  # Sunday, same week
        day_sum("2026-12-01", "acme", requests=4, cost_micro=40),
    ]
    weeks = fold(days, ["org"], "week")
    assert [(w["period"], w["requests"], w["cost_micro"]) for w in weeks] == [
        ("2026-11-16", 1, 10),
        ("2026-11-23", 5, 50),
        ("2026-11-30", 4, 40),
    ]
    months = fold(days, ["org"], "month")
    assert [(m["period"], m["requests"]) for m in months] == [("2026-11", 6), ("2026-12", 4)]
    (everything,) = fold(days, ["org"], "all")
    assert (everything["requests"], everything["cost_usd"]) == (10, 0.0001)


def test_the_query_is_checked_and_an_org_key_is_pinned_to_its_org() -> None:
    query = UsageQuery.parse({"days": "7", "org": "globex"}, now=1_000_000.0, org="acme")
    assert (query.org, query.since, query.until) == ("acme", 1_000_000.0 - 7 * 86_400, 1_000_000.0)
    assert UsageQuery.parse({"org": "globex"}, now=1e6, org=None).org == "globex"
    with pytest.raises(InvalidRequest):
        UsageQuery.parse({"group_by": "org,org"}, now=1e6, org=None)


@pytest.mark.parametrize("params", [{"days": "inf"}, {"days": "nan"}, {"until": "inf"}, {"since": "-inf"}])
def test_a_range_that_is_not_finite_is_refused(params: dict[str, str]) -> None:
    """Was a 500 (a NaN met an integer conversion) or an "empty range" for until=inf."""
    with pytest.raises(InvalidRequest, match="finite numbers") as refused:
        UsageQuery.parse(params, now=1e6, org=None)
    assert refused.value.code == "invalid_range"


@pytest.mark.parametrize(
    "params", [{"days": "1e12"}, {"days": "1e300"}, {"since": "-1e300", "until": "1e300"}]
)
async def test_a_range_past_what_the_ledger_holds_is_clamped(
    engine: AsyncEngine, params: dict[str, str]
) -> None:
    """Was a 503 "database unreachable" on PostgreSQL (its days overflowed an integer): the
    range is clamped to 1970-9999, and the report answers on both databases."""
    query = UsageQuery.parse(params, now=1e9, org=None)
    assert query.since == 0.0 and query.until <= 253_402_300_799.0
    assert (await report(engine, query))["since"] == 0.0


async def test_the_report_sums_per_day_on_the_database(engine: AsyncEngine) -> None:
    at = dt.datetime(2026, 11, 25, 23, 59, tzinfo=dt.UTC).timestamp()
    rows = [make_row("a"), make_row("b"), make_row("b", attempt=0, cost=0)]
    rows = [(r[0], r[1], at + i * 120, *r[3:]) for i, r in enumerate(rows)]  # the last one: next day
    await insert_rows(engine, rows)
    body = await report(engine, UsageQuery(at - 86_400, at + 86_400, ("org", "feature"), "day"))
    assert [(r["period"], r["requests"], r["upstream_calls"], r["cache_hits"]) for r in body["data"]] == [
        ("2026-11-25", 1, 1, 0),
        ("2026-11-26", 1, 1, 1),  # one request: its upstream call and a stale answer
    ]
    assert body["totals"]["cost_micro"] == 200
    nobody = await report(engine, UsageQuery(at - 86_400, at + 86_400, ("org",), "all", org="initech"))
    assert nobody["data"] == [] and nobody["totals"]["requests"] == 0


async def test_a_request_counts_once_whatever_the_grouping(engine: AsyncEngine) -> None:
    """A request whose first attempt failed at 23:59 and whose fallback answered at 00:01 is one
    request in its week; per model it counts under each model it used, and once in the total."""
    at = dt.datetime(2026, 11, 25, 23, 59, tzinfo=dt.UTC).timestamp()
    first = make_row("c")
    second = make_row("c", attempt=2)
    rows = [(*first[:2], at, *first[3:]), (*second[:2], at + 120, *second[3:7], "backup", *second[8:])]
    await insert_rows(engine, rows)
    span = (at - 86_400, at + 86_400)
    by_org = await report(engine, UsageQuery(*span, ("org",), "week"))
    assert [r["requests"] for r in by_org["data"]] == [1] and by_org["totals"]["requests"] == 1
    by_model = await report(engine, UsageQuery(*span, ("model",), "week"))
    assert sorted((r["model"], r["requests"]) for r in by_model["data"]) == [
        ("backup", 1),
        ("gpt-4o-mini", 1),
    ]
    assert by_model["totals"]["requests"] == 1 and by_model["totals"]["upstream_calls"] == 2
    # a retry of one model past midnight: still one request of that model
    third = make_row("c", attempt=3)
    await insert_rows(engine, [(*third[:2], at - 60, *third[3:7], "backup", *third[8:])])
    one_model = await report(engine, UsageQuery(*span, ("org",), "all", model="backup"))
    assert one_model["totals"]["requests"] == 1 and one_model["totals"]["upstream_calls"] == 2
