"""The cost-control commands: ``sluicegate usage`` (the ledger summed by group and period, as a
table or JSON), ``sluicegate ledger compact`` (daily roll-ups and retention, once),
``sluicegate budgets set|list`` and ``sluicegate stop|resume|stops`` (the emergency stop).

It reads the configured database directly (a clean shutdown or the next flush of each worker
puts its latest rows there; the HTTP route also flushes the worker that answers it).
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from .accounting.rollups import DAY_S, compact
from .accounting.usage import UsageQuery, report
from .admission import stop as controls
from .admission.budget_math import PERIOD_ADJECTIVES
from .admission.budget_scopes import budget_scope, new_budget
from .admission.budgets import BudgetStore
from .cli_console import console, on_database, out, print_error, run_or_exit
from .config import Settings
from .config_money import usd
from .errors import SluicegateError
from .store.redis import create_redis

__all__ = [
    "budget_delete_command",
    "budgets_command",
    "compact_command",
    "narrowed",
    "stop_command",
    "usage_command",
]


def usage_command(settings: Settings, params: dict[str, str], as_json: bool) -> int:
    """Print the report; the exit status."""
    try:
        query = UsageQuery.parse(params, time.time(), None)
    except SluicegateError as exc:
        print_error(exc.message)
        return 2
    body = run_or_exit(
        on_database(settings, lambda engine: report(engine, query)),
        refused=2,
    )
    if as_json:
        out.print_json(orjson.dumps(body).decode())
        return 0
    dims = list(query.group_by)
    table = Table("period", *dims, "requests", "upstream", "hits", "tokens", "cost $", "saved $")
    for row in [*body["data"], {"period": "total", **dict.fromkeys(dims, ""), **body["totals"]}]:
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        table.add_row(
            row["period"],
            *(str(row[d] if row[d] is not None else "-") for d in dims),
            f"{row['requests']:,}",
            f"{row['upstream_calls']:,}",
            f"{row['cache_hits']:,}",
            f"{tokens:,}",
            f"{row['cost_usd']:.6f}",
            f"{row['saved_usd']:.6f}",
        )
    out.print(table)
    return 0


def compact_command(settings: Settings) -> int:
    """Roll up the ended days and apply the ledger's retention once; the exit status."""
    cfg = settings.ledger
    done = run_or_exit(on_database(settings, lambda engine: compact(engine, cfg, time.time())))
    days = [time.strftime("%Y-%m-%d", time.gmtime(day * DAY_S)) for day in done.rolled_up]
    console.print(f"rolled up {len(days)} day(s){': ' + ', '.join(days) if days else ''}")
    if cfg.retention_days is None:
        console.print("kept every ledger row (ledger.retention_days is not set)")
    else:
        console.print(
            f"deleted {done.ledger_rows_deleted:,} ledger row(s) of days older than "
            f"{cfg.retention_days} day(s); their roll-ups stay"
        )
    if cfg.rollup_retention_days is not None:
        console.print(
            f"deleted {done.rollups_deleted:,} roll-up(s) older than {cfg.rollup_retention_days} day(s)"
        )
    return 0


def stop_command(settings: Settings, action: str, org: str | None, reason: str | None) -> int:
    """Set, lift or list emergency stops in the configured database; the exit status."""

    async def run(engine: AsyncEngine) -> Any:
        if action == "stop":
            return await controls.set_stop(engine, org, reason or "")
        if action == "resume":
            return await controls.clear_stop(engine, org)
        return await controls.list_stops(engine)

    result = run_or_exit(on_database(settings, run), refused=2)
    interval = settings.controls.poll_interval_s
    if action == "stop":
        console.print(f"stopped upstream calls for {result.scope}; every gateway obeys within {interval:g} s")
    elif action == "resume":
        what = controls.scope_of(org)
        console.print(f"lifted the stop for {what}" if result else f"no stop was in force for {what}")
    else:
        table = Table("scope", "since (UTC)", "reason")
        for stop in result:
            table.add_row(
                stop.scope, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stop.since)), stop.reason
            )
        out.print(table if result else "no emergency stop is in force")
    return 0


def _option(field: str) -> str:
    """How the CLI spells a budget's field: ``limit_usd`` is ``--limit-usd``."""
    return "--" + field.replace("_", "-")


def narrowed(user: str | None, feature: str | None, key: str | None) -> tuple[str, str] | None:
    """The one of ``--user``, ``--feature`` and ``--key`` given (None for none), or exit 2."""
    named = (("user", user), ("feature", feature), ("key", key))
    given = [(kind, name) for kind, name in named if name is not None]
    if len(given) > 1:
        print_error("give at most one of --user, --feature and --key")
        raise typer.Exit(2)
    if given and not given[0][1]:  # an unset variable in a script: not the org's own budget
        print_error(f"--{given[0][0]} must not be empty")
        raise typer.Exit(2)
    return given[0] if given else None


def budget_delete_command(settings: Settings, org: str, narrow: tuple[str, str] | None) -> int:
    """Delete a budget set at run time (``narrow``: of a user, feature or key of the org)."""
    try:
        scope = budget_scope(org, narrow, None, _option)  # a feature since removed from the config too
    except SluicegateError as exc:
        print_error(exc.message)
        return 2

    async def run(engine: AsyncEngine) -> Any:
        store = BudgetStore(engine, settings.budgets)
        try:
            return await store.remove_limit(scope)
        finally:
            store.close()

    in_force = run_or_exit(on_database(settings, run))
    whom = org if narrow is None else f"the {narrow[0]} {narrow[1]} of {org}"
    said = f"deleted the budget of {whom}; every gateway stops applying it within "
    said += f"{settings.controls.poll_interval_s:g} s"
    if in_force is not None:
        adjective = PERIOD_ADJECTIVES[in_force.period]
        limit = usd(in_force.limit_micro, cents=True)
        said += f", and the config's {adjective} budget of {limit} applies again"
    console.print(said)
    return 0


def budgets_command(
    settings: Settings,
    org: str | None,
    limit_usd: str | None,
    period: str,
    narrow: tuple[str, str] | None = None,
) -> int:
    """Set a budget (with ``org`` and ``limit_usd``, and ``narrow``: a user, feature or key of
    the org), or list the budgets; the exit status."""

    async def run(engine: AsyncEngine) -> list[Any]:
        redis = create_redis(settings.redis.url) if settings.redis.url else None
        store = BudgetStore(engine, settings.budgets, redis=redis)
        try:
            await store.refresh()
            if budget is not None:
                await store.set_limit(budget)
            return [await store.usage(budget) for budget in store.budgets.values()]
        finally:
            store.close()
            if redis is not None:
                await redis.aclose(close_connection_pool=True)

    if (org is None) != (limit_usd is None):
        print_error("give both --org and --limit-usd to set a budget (neither to list them)")
        return 2
    budget = None
    if org is not None and limit_usd is not None:
        try:
            amount = Decimal(limit_usd)
        except InvalidOperation:
            print_error(f"--limit-usd must be a number of US dollars, not {limit_usd!r}")
            return 2
        try:
            budget = new_budget(org, amount, period, narrow, settings.feature_names, _option)
        except SluicegateError as exc:
            print_error(exc.message)
            return 2
    periods = run_or_exit(on_database(settings, run), refused=2)
    if org is not None:
        whom = org if narrow is None else f"the {narrow[0]} {narrow[1]} of {org}"
        console.print(
            f"set the {PERIOD_ADJECTIVES[period]} budget of {whom} to ${limit_usd}; every gateway "
            f"applies it within {settings.controls.poll_interval_s:g} s"
        )
    table = Table("scope", "period", "limit", "spent", "reserved", "used", "forecast")
    table.columns[0].no_wrap = True
    for usage in periods:
        row = usage.to_dict()
        used = f"{row['used']:.1%}" if row["used"] is not None else "-"
        projected = "-" if usage.forecast_micro is None else usd(usage.forecast_micro, cents=True)
        table.add_row(
            row["scope"],
            row["period"],
            usd(usage.budget.limit_micro, cents=True),
            usd(usage.spent_micro, cents=True),
            usd(usage.reserved_micro, cents=True),
            used,
            projected,
        )
    out.print(table if periods else "no budget is set")
    return 0
