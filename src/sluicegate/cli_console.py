"""The CLI's two consoles (messages on stderr, results on stdout, whole tables when piped), and
how a command runs its work: an error is one line, never a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
import uvloop
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import CONFIG_ENV, Settings, load_settings
from .errors import InvalidRequest, SluicegateError
from .store.db import first_line, with_migrated

__all__ = [
    "console",
    "database_error",
    "on_database",
    "out",
    "print_error",
    "run_or_exit",
    "settings_or_exit",
]

console = Console(stderr=True)
# Piped or redirected, rich would wrap tables at 80 columns and cut the amounts short.
out = Console(width=None if sys.stdout.isatty() else 200)
T = TypeVar("T")


def print_error(message: str) -> None:
    """``error: message`` on stderr, on one line however wide the terminal (or none), and with
    the message's brackets printed as they are, not read as markup."""
    console.print("[red]error:[/red] " + escape(message), soft_wrap=True)


def database_error(error: BaseException) -> str:
    """One line on a database that cannot be reached or opened (SQLAlchemy adds a second line,
    a link to its docs, which is left out)."""
    first = first_line(error)
    if "no such table" in first or ("relation" in first and "does not exist" in first):
        return f"the database has no sluicegate schema yet ({first}): run `sluicegate migrate`"
    return f"the database is unreachable: {first}"


def run_or_exit(work: Awaitable[T], refused: int = 1, invalid: int | None = None) -> T:
    """Run ``work`` to its end. A `SluicegateError` is its message on stderr and the exit
    status ``refused`` (``invalid``, when given, for an `InvalidRequest`: a usage error); a
    database that cannot be reached or opened, the reason and exit 1."""

    async def run() -> T:
        return await work

    try:
        return uvloop.run(run())
    except SluicegateError as exc:
        print_error(exc.message)
        if invalid is not None and isinstance(exc, InvalidRequest):
            raise typer.Exit(invalid) from None
        raise typer.Exit(refused) from None
    except (SQLAlchemyError, OSError) as exc:
        print_error(database_error(exc))
        raise typer.Exit(1) from None


def settings_or_exit(config: Path | None, **server: Any) -> Settings:
    """Load settings (``config``: the --config option), or exit 2 saying why; ``server``'s flags
    become ``SLUICEGATE_SERVER__*`` variables, so that server workers see them too."""
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    for name, value in server.items():
        if value is not None:
            os.environ[f"SLUICEGATE_SERVER__{name.upper()}"] = str(value)
    try:
        return load_settings()
    except SluicegateError as exc:
        message = exc.message
        for name, value in server.items():  # a flag's value is named as the flag, not its variable
            if value is not None:
                flag = "--server" if name == "implementation" else f"--{name}"
                named = message.replace(f"from ${'SLUICEGATE_SERVER__' + name.upper()}", f"from {flag}")
                if named != message:
                    message = named.replace("in the environment:", "in the options:")
        print_error(message)
        raise typer.Exit(2) from None


def on_database(settings: Settings, action: Callable[[AsyncEngine], Awaitable[T]]) -> Awaitable[T]:
    """``action`` on an engine for the configured database, migrated first unless
    ``database.migrate_on_start`` is off (then `sluicegate migrate` does it)."""
    return with_migrated(settings.database.url, action, upgrade=settings.database.migrate_on_start)
