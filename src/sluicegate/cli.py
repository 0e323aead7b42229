"""The ``sluicegate`` command: serve, mock-upstream, keys, cache, warm, usage, ledger, budgets, stop,
resume, stops."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvloop
from sqlalchemy.ext.asyncio import AsyncEngine

from . import cli_cache, cli_keys, cli_usage
from ._version import __version__
from .accounting.pricing import PriceBook
from .auth import KeyStore, load_pepper
from .cli_console import console, on_database, out, print_error, run_or_exit, settings_or_exit
from .cli_serve import migrate_first, refuse_open_network, refuse_taken_port, serve_granian, serve_uvicorn
from .config import CONFIG_ENV, MockBehaviour, Settings
from .errors import SluicegateError
from .upstream.mock import MockEngine
from .upstream.mock_server import start_mock_server
from .upstream.providers import api_key
from .upstream.router import ModelCatalog

__all__ = ["main"]

T = TypeVar("T")

app = typer.Typer(
    name="sluicegate",
    help="An AI gateway: an OpenAI-compatible proxy with caching, budgets, limits and resilience.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage virtual keys (stored as HMAC-SHA256, shown once).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(cli_cache.cache_app, name="cache")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"YAML config file (default: ${CONFIG_ENV}, then ./sluicegate.yaml).",
        show_default=False,
    ),
]


def _run(coroutine: Awaitable[T]) -> T:
    async def wrapper() -> T:
        return await coroutine

    return uvloop.run(wrapper())


def _settings(config: Path | None, **server: Any) -> Settings:
    """Load settings; flags become ``SLUICEGATE_SERVER__*`` variables so server workers see them."""
    return settings_or_exit(config, **server)


async def _migrated(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Bring the schema up to date (unless ``database.migrate_on_start`` is off), then run ``action``."""
    return await on_database(settings, action)


async def _with_keys(settings: Settings, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    return await _migrated(settings, lambda engine: action(KeyStore(engine, load_pepper(settings))))


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 4000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="HTTP server: uvicorn (default) or granian.")
    ] = None,
) -> None:
    """Run the gateway."""
    settings = _settings(config, host=host, port=port, workers=workers, implementation=server)
    refuse_open_network(settings)
    refuse_taken_port(settings)
    try:
        # A model with no price or a provider's unset API key stops here, not in each worker
        # (which the server would start again and again).
        PriceBook.from_settings(settings)
        for name, provider in settings.providers.items():
            api_key(name, provider)
    except SluicegateError as exc:
        print_error(exc.message)
        raise typer.Exit(2) from None
    migrate_first(settings)
    if settings.auth.require_keys:
        load_pepper(settings)  # made once here rather than by racing workers
    # Migrated once here, so that the workers do not race each other to do it.
    os.environ["SLUICEGATE_DATABASE__MIGRATE_ON_START"] = "false"
    cfg = settings.server
    sources = ", ".join(f"{n} ({p.kind})" for n, p in settings.providers.items())
    console.print(
        f"sluicegate {__version__} on http://{cfg.host}:{cfg.port} with {cfg.worker_count} "
        f"{cfg.implementation} worker(s); providers: {sources}; "
        f"keys {'required' if settings.auth.require_keys else 'not required (local dev org)'}"
    )
    runners: dict[str, Callable[[Settings], None]] = {
        "uvicorn": serve_uvicorn,
        "granian": serve_granian,
    }
    runners[cfg.implementation](settings)


@app.command("migrate")
def migrate_schema(config: ConfigOption = None) -> None:
    """Bring the database's schema up to date, then exit (for database.migrate_on_start: false)."""
    console.print(f"the database's schema is at revision {migrate_first(_settings(config), always=True)}")


@app.command("mock-upstream")
def mock_upstream(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0 picks a free one).")] = 9100,
    latency_ms: Annotated[float, typer.Option(help="Fixed latency of a whole answer.")] = 0.0,
    ttft_ms: Annotated[float, typer.Option(help="Streaming: delay before the first chunk.")] = 0.0,
    chunk_interval_ms: Annotated[float, typer.Option(help="Streaming: delay between chunks.")] = 0.0,
    chunks: Annotated[
        int | None, typer.Option(help="Streaming: content chunks (default one a word).")
    ] = None,
    error_rate: Annotated[float, typer.Option(help="Share of requests answered with --error-status.")] = 0.0,
    error_status: Annotated[int, typer.Option(help="Status of injected errors.")] = 500,
    rate_limit_rate: Annotated[float, typer.Option(help="Share of requests answered 429.")] = 0.0,
    retry_after_s: Annotated[int, typer.Option(help="Retry-After sent with a 429.")] = 1,
    hang_rate: Annotated[float, typer.Option(help="Share of requests never answered.")] = 0.0,
    drop_after_chunks: Annotated[int | None, typer.Option(help="Streaming: cut every stream here.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the fault dice.")] = None,
    usage: Annotated[
        bool, typer.Option("--usage/--no-usage", help="Report token usage (off: as some servers).")
    ] = True,
) -> None:
    """Run the mock provider as an OpenAI-compatible HTTP server (for benchmarks and fault tests)."""
    behaviour = MockBehaviour.model_validate(
        {
            "latency": latency_ms,
            "ttft_ms": ttft_ms,
            "chunk_interval_ms": chunk_interval_ms,
            "chunks": chunks,
            "error_rate": error_rate,
            "error_status": error_status,
            "rate_limit_rate": rate_limit_rate,
            "retry_after_s": retry_after_s,
            "hang_rate": hang_rate,
            "drop_after_chunks": drop_after_chunks,
            "seed": seed,
            "report_usage": usage,
        }
    )

    async def run() -> None:
        server = await start_mock_server(MockEngine(behaviour), host, port)
        bound = server.sockets[0].getsockname()[1]
        console.print(f"mock upstream on http://{host}:{bound}/v1")
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        _run(run())


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="The organisation the key belongs to.")],
    user: Annotated[str | None, typer.Option(help="Default user for requests with this key.")] = None,
    name: Annotated[str | None, typer.Option(help="A label to recognise the key by.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create a virtual key and print it (it is shown only this once)."""
    settings = _settings(config)
    key, record = run_or_exit(_with_keys(settings, lambda store: store.create(org, user=user, name=name)))
    out.print(key, soft_wrap=True)
    console.print(f"created key {record.id} for org {record.org}; store it now, it is not shown again")


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option(help="Only this organisation's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked and expired keys.")] = False,
    config: ConfigOption = None,
) -> None:
    """List virtual keys (never the keys themselves), with the expiry and successor of rotated ones."""
    settings = _settings(config)
    records = run_or_exit(_with_keys(settings, lambda store: store.list_keys(org, include_revoked=all_keys)))
    out.print(cli_keys.keys_table(records))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id or prefix, from `sluicegate keys list`.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a virtual key (running gateways notice within controls.poll_interval_s)."""
    settings = _settings(config)
    record = run_or_exit(_with_keys(settings, lambda store: store.revoke(key_id)))
    console.print(f"revoked key {record.id} of org {record.org}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id or prefix, from `sluicegate keys list`.")],
    grace: Annotated[
        str,
        typer.Option(help="How long the old key keeps working: 90s, 15m, 24h, 7d, or 0 to end it now."),
    ] = "24h",
    config: ConfigOption = None,
) -> None:
    """Replace a virtual key: print a new one for the same org, user and name (shown only this
    once); the old key keeps working for --grace, then every gateway refuses it. A key already
    rotated cannot be rotated again: rotate its replacement, or revoke it to end its grace."""
    settings = _settings(config)
    try:
        seconds = cli_keys.parse_grace(grace)
    except SluicegateError as exc:
        print_error(exc.message)
        raise typer.Exit(1) from None
    key, new, old = run_or_exit(_with_keys(settings, lambda store: store.rotate(key_id, seconds)))
    out.print(key, soft_wrap=True)
    console.print(cli_keys.rotated_message(new, old, settings.controls.poll_interval_s))


@cli_cache.cache_app.command("stats")
def cache_stats(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    config: ConfigOption = None,
) -> None:
    """Hits, misses, hit ratio and tokens saved per feature; entries and bytes per tier."""
    cli_cache.stats_command(_settings(config), as_json)


@cli_cache.cache_app.command("invalidate")
def cache_invalidate(
    key: Annotated[str | None, typer.Option(help="One entry's full key.")] = None,
    tag: Annotated[str | None, typer.Option(help="Every entry stored with this tag.")] = None,
    feature: Annotated[str | None, typer.Option(help="Every entry of this feature.")] = None,
    org: Annotated[str | None, typer.Option(help="Every entry of this org (its users' too).")] = None,
    user: Annotated[str | None, typer.Option(help="Every entry of this user.")] = None,
    model: Annotated[str | None, typer.Option(help="Every entry of this model.")] = None,
    config: ConfigOption = None,
) -> None:
    """Delete matching entries from every tier; running servers forget them at once."""
    match = {"key": key, "tag": tag, "feature": feature, "org": org, "user": user, "model": model}
    cli_cache.invalidate_command(_settings(config), match)


@cli_cache.cache_app.command("bump")
def cache_bump(
    feature: Annotated[str, typer.Argument(help="The feature whose entries all become unreachable.")],
    config: ConfigOption = None,
) -> None:
    """Bump a feature's namespace version: every older entry is unreachable at once, everywhere."""
    cli_cache.bump_command(_settings(config), feature)


@app.command("warm")
def warm(
    file: Annotated[Path, typer.Argument(help="JSON Lines: one request per line, with feature, org, user.")],
    concurrency: cli_cache.ConcurrencyOption = 4,
    max_requests: cli_cache.MaxOption = None,
    dry_run: cli_cache.DryRunOption = False,
    config: ConfigOption = None,
) -> None:
    """Warm the cache from a file of requests, skipping entries that are already fresh."""
    cli_cache.warm_command(_settings(config), file, concurrency, max_requests, dry_run)


@app.command("usage")
def usage(
    days: Annotated[float, typer.Option(help="Report the last N days.")] = 30,
    group_by: Annotated[
        str, typer.Option("--group-by", help="Comma list of org, user, key_id, feature, model.")
    ] = "org",
    period: Annotated[str, typer.Option(help="day, week, month (UTC) or all.")] = "day",
    org: Annotated[str | None, typer.Option(help="Only this org.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    feature: Annotated[str | None, typer.Option(help="Only this feature.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    config: ConfigOption = None,
) -> None:
    """Requests, tokens, cost, cache hits and cost saved, from the usage ledger and its roll-ups."""
    params = {"days": str(days), "group_by": group_by, "period": period}
    params.update(
        {k: v for k, v in {"org": org, "user": user, "feature": feature, "model": model}.items() if v}
    )
    settings = _settings(config)
    if model:
        params["model"] = ModelCatalog(settings).canonical(model)  # an alias reads as its model
    status = cli_usage.usage_command(settings, params, as_json)
    if status:
        raise typer.Exit(status)


ledger_app = typer.Typer(
    help="The usage ledger's upkeep: daily roll-ups and retention (each worker also runs them).",
    no_args_is_help=True,
)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("compact")
def ledger_compact(config: ConfigOption = None) -> None:
    """Roll up the ended UTC days, then delete ledger rows older than ledger.retention_days, once."""
    status = cli_usage.compact_command(_settings(config))
    if status:
        raise typer.Exit(status)


budgets_app = typer.Typer(help="Set, delete and list budgets per org, user, feature or key.")
app.add_typer(budgets_app, name="budgets", no_args_is_help=True)


@budgets_app.command("set")
def budgets_set(
    org: Annotated[str, typer.Option(help="The org.")],
    limit_usd: Annotated[str, typer.Option("--limit-usd", help="Its limit in US dollars.")],
    period: Annotated[str, typer.Option(help="day, week or month (UTC).")] = "month",
    user: Annotated[str | None, typer.Option(help="Only this user's calls in the org.")] = None,
    feature: Annotated[str | None, typer.Option(help="Only this feature's calls in the org.")] = None,
    key: Annotated[str | None, typer.Option(help="Only the calls made with this key id.")] = None,
    config: ConfigOption = None,
) -> None:
    """Set a budget for an org, or for one user, feature or key of it; every gateway applies it
    within controls.poll_interval_s."""
    narrow = cli_usage.narrowed(user, feature, key)
    status = cli_usage.budgets_command(_settings(config), org, limit_usd, period, narrow)
    if status:
        raise typer.Exit(status)


@budgets_app.command("delete")
def budgets_delete(
    org: Annotated[str, typer.Option(help="The org.")],
    user: Annotated[str | None, typer.Option(help="The budget of this user of the org.")] = None,
    feature: Annotated[str | None, typer.Option(help="The budget of this feature of the org.")] = None,
    key: Annotated[str | None, typer.Option(help="The budget of this key id.")] = None,
    config: ConfigOption = None,
) -> None:
    """Delete a budget set at run time (the config's budget of the same scope, if any, applies
    again); every gateway stops applying it within controls.poll_interval_s."""
    narrow = cli_usage.narrowed(user, feature, key)
    status = cli_usage.budget_delete_command(_settings(config), org, narrow)
    if status:
        raise typer.Exit(status)


@budgets_app.command("list")
def budgets_list(config: ConfigOption = None) -> None:
    """List the budgets and their current period: spent, reserved, share used."""
    status = cli_usage.budgets_command(_settings(config), None, None, "month")
    if status:
        raise typer.Exit(status)


@app.command("stop")
def stop(
    reason: Annotated[str, typer.Option(help="Why: every refused caller is told.")],
    org: Annotated[str | None, typer.Option(help="Only this org (default: every org).")] = None,
    config: ConfigOption = None,
) -> None:
    """Emergency stop: no more upstream calls (cached answers are still served), on every gateway."""
    status = cli_usage.stop_command(_settings(config), "stop", org, reason)
    if status:
        raise typer.Exit(status)


@app.command("resume")
def resume(
    org: Annotated[
        str | None, typer.Option(help="The org whose stop to lift (default: the global one).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Lift an emergency stop."""
    status = cli_usage.stop_command(_settings(config), "resume", org, None)
    if status:
        raise typer.Exit(status)


@app.command("stops")
def stops(config: ConfigOption = None) -> None:
    """List the emergency stops in force."""
    status = cli_usage.stop_command(_settings(config), "list", None, None)
    if status:
        raise typer.Exit(status)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


def main() -> None:
    """Entry point of the console script."""
    app()
