"""``sluicegate usage``: the ledger summed by group and period, as a table or JSON.

It reads the configured database directly (a clean shutdown or the next flush of each worker
puts its latest rows there; the HTTP route also flushes the worker that answers it).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import uvloop
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from .accounting.usage import UsageQuery, report
from .config import Settings
from .errors import SluicegateError
from .store.db import create_engine, migrate

__all__ = ["usage_command"]

console = Console(stderr=True)
out = Console()


async def _report(settings: Settings, query: UsageQuery) -> dict[str, Any]:
    engine = create_engine(settings.database.url)
    try:
        await migrate(engine)
        return await report(engine, query)
    finally:
        await engine.dispose()


def usage_command(settings: Settings, params: dict[str, str], as_json: bool) -> int:
    """Print the report; the exit status."""
    try:
        query = UsageQuery.parse(params, time.time(), None)
        body = uvloop.run(_report(settings, query))
    except SluicegateError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        return 2
    except (SQLAlchemyError, OSError) as exc:
        console.print(f"[red]error:[/red] the database is unreachable: {exc}")
        return 1
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
