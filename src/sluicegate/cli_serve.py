"""How `sluicegate serve` runs the gateway: the address check, and the uvicorn and granian runners."""

from __future__ import annotations

import ipaddress
import math
import socket

import typer
import uvicorn
import uvloop
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from .cli_console import database_error, print_error
from .config import Settings
from .server.protocol import CoalescingHttpToolsProtocol
from .store.db import with_migrated

__all__ = ["APP_TARGET", "migrate_first", "refuse_open_network", "serve_granian", "serve_uvicorn"]

APP_TARGET = "sluicegate.server.app:app_from_environment"


def migrate_first(settings: Settings, *, always: bool = False) -> str:
    """Bring the schema up to date once, before the workers start (they would race each other
    to), unless ``database.migrate_on_start`` is off (``always``: `sluicegate migrate`); the
    revision it is at ("" when not migrated); exit 2 when the database is unreachable."""
    if not (always or settings.database.migrate_on_start):
        return ""
    try:
        return uvloop.run(with_migrated(settings.database.url, _revision))
    except (SQLAlchemyError, OSError) as exc:
        print_error(database_error(exc))
        raise typer.Exit(2) from None


async def _revision(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return str(await connection.scalar(text("SELECT version_num FROM alembic_version")))


def refuse_open_network(settings: Settings) -> None:
    """Without keys every caller is the dev org and admin routes are open: loopback only,
    unless the config says so explicitly."""
    host = settings.server.host
    if settings.auth.require_keys or settings.auth.allow_unauthenticated_network or _is_loopback(host):
        return
    print_error(
        f"refusing to serve on {host} without keys: anyone who can reach it "
        "could spend your providers' money and use the admin routes. Set auth.require_keys: true "
        "(and SLUICEGATE_ADMIN_KEY), bind 127.0.0.1, or set auth.allow_unauthenticated_network: "
        "true if the network is yours alone"
    )
    raise typer.Exit(2)


def refuse_taken_port(settings: Settings) -> None:
    """Exit 2 at once when the address is taken (by an earlier gateway, say), before migrating
    and announcing a server that would not start."""
    cfg = settings.server
    try:
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            probe.bind((cfg.host, cfg.port))
    except OSError as exc:
        print_error(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}; pick another --port")
        raise typer.Exit(2) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_uvicorn(settings: Settings) -> None:
    cfg = settings.server
    uvicorn.run(
        APP_TARGET,
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=cfg.worker_count,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        proxy_headers=False,
        backlog=2048,
        timeout_graceful_shutdown=math.ceil(cfg.drain_timeout_s),
    )


def serve_granian(settings: Settings) -> None:
    try:
        from granian import Granian  # an optional extra
        from granian.constants import Interfaces, Loops
        from granian.log import LogLevels
    except ImportError:
        print_error("granian is not installed: pip install 'sluicegate[granian]'")
        raise typer.Exit(2) from None
    cfg = settings.server
    Granian(
        APP_TARGET,
        factory=True,
        address=cfg.host,
        port=cfg.port,
        workers=cfg.worker_count,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        backlog=2048,
    ).serve()
