"""The cache commands: ``sluicegate cache stats|invalidate|bump`` and ``sluicegate warm FILE.jsonl``.

They run on the configured stores (the SQL database and Redis) with a gateway of their own, and
announce every change on the invalidation bus, so running servers apply it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cache import admin
from .cache.layered import LayeredCache
from .cache.warming import parse_lines, warm
from .cli_console import console, out, print_error, run_or_exit
from .config import Settings
from .errors import SluicegateError
from .gateway import Gateway, create_gateway

__all__ = ["cache_app", "warm_command"]

T = TypeVar("T")
cache_app = typer.Typer(help="Inspect and invalidate the response cache.", no_args_is_help=True)


def _with_cache(
    settings: Settings, action: Callable[[Gateway, LayeredCache], Awaitable[T]], invalid: int | None = None
) -> T:
    if not settings.cache.enabled:
        print_error("the cache is disabled (cache.enabled: false)")
        raise typer.Exit(2)

    async def run() -> T:
        async with create_gateway(settings) as gateway:
            assert gateway.cache is not None
            return await action(gateway, gateway.cache)

    return run_or_exit(run(), invalid=invalid)


def _print_json(value: Any) -> None:
    out.print_json(orjson.dumps(value).decode())


def stats_command(settings: Settings, as_json: bool) -> None:
    """Print the cache counters per feature and the tiers' sizes."""
    report = _with_cache(settings, lambda _, cache: admin.stats(cache))
    if as_json:
        _print_json(report)
        return
    table = Table(
        "feature", "hits", "misses", "hit ratio", "stale", "bypass", "upstream calls", "tokens saved"
    )
    for name, row in sorted(report["features"].items()):
        ratio = row.get("hit_ratio")
        table.add_row(
            name,
            str(row.get("hits", 0)),
            str(row.get("misses", 0)),
            f"{ratio:.1%}" if isinstance(ratio, float) else "-",
            str(row.get("stale", 0)),
            str(row.get("bypass", 0)),
            str(row.get("upstream_calls", 0)),
            str(row.get("tokens_saved", 0)),
        )
    out.print(table)
    tiers = Table("tier", "entries", "bytes", "state")
    for name, tier in report["tiers"].items():
        if name == "memory":
            continue  # per process: see GET /api/ai/cache on a server
        tiers.add_row(name, str(tier.get("entries")), str(tier.get("bytes")), str(tier.get("state", "")))
    out.print(tiers)


def invalidate_command(settings: Settings, match: dict[str, str | None]) -> None:
    """Delete matching entries in every tier and every process."""
    chosen = {k: v for k, v in match.items() if v}
    if not chosen:
        print_error("name what to delete: --key, --tag, --feature, --org, --user or --model")
        raise typer.Exit(2)
    # A match that selects nothing valid (a feature or model not configured) is a usage error, as in bump.
    result = _with_cache(settings, lambda _, cache: admin.invalidate(cache, **chosen), invalid=2)
    _print_json(result)


def bump_command(settings: Settings, feature: str) -> None:
    """Bump a feature's namespace version."""
    if feature not in settings.feature_names:
        known = ", ".join(sorted(settings.feature_names))
        print_error(f"unknown feature {feature!r}; known: {known}")
        raise typer.Exit(2)
    _print_json(_with_cache(settings, lambda _, cache: admin.bump(cache, feature)))


def warm_command(
    settings: Settings, file: Path, concurrency: int, max_requests: int | None, dry_run: bool
) -> None:
    """Warm the cache from a JSON Lines file of requests."""
    try:
        items = parse_lines(file.read_bytes().splitlines(), settings.auth.dev_org)
    except OSError as exc:
        print_error(f"cannot read {file}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    except SluicegateError as exc:
        print_error(f"{file}: {exc.message}")
        raise typer.Exit(2) from None
    columns = (TextColumn("warming"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("warm", total=len(items))

        async def run(gateway: Gateway, _: LayeredCache) -> Any:
            return await warm(
                gateway,
                items,
                concurrency=concurrency,
                max_requests=max_requests,
                dry_run=dry_run,
                progress=lambda: progress.advance(task),
            )

        report = _with_cache(settings, run)
    summary = report.to_dict()
    if dry_run:
        summary["dry_run"] = True
    _print_json(summary)
    if report.failed:
        raise typer.Exit(1)


ConcurrencyOption = Annotated[int, typer.Option(min=1, max=256, help="Requests in flight at once.")]
MaxOption = Annotated[int | None, typer.Option(min=0, help="Fetch at most this many requests.")]
DryRunOption = Annotated[bool, typer.Option(help="Show what would be fetched, and the estimated tokens.")]
