"""Settings of the gateway's own process: its HTTP server, its database, Redis and keys."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from .config_base import Frozen
from .config_money import check_org_name

__all__ = ["AuthConfig", "DatabaseConfig", "RedisConfig", "ServerConfig"]


class ServerConfig(Frozen):
    """The HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(4000, ge=0, le=65535)
    workers: int = Field(0, ge=0, description="0 means one per core")
    implementation: Literal["uvicorn", "granian"] = "uvicorn"
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_head_bytes: int = Field(
        32 * 1024, ge=1024, description="the request line and headers: larger is a 431"
    )
    head_timeout_s: float = Field(
        30.0, gt=0, description="the request line and headers must arrive within this (408 after)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body must arrive within this once its headers have (408 after)"
    )
    max_connections: int = Field(
        4096, ge=1, description="open connections per worker; a request beyond them is a 503"
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, how long in-flight requests and streams may take to finish"
    )
    status_probe_interval_s: float = Field(5.0, gt=0)
    gc_thresholds: tuple[int, int, int] = Field(
        (50_000, 20, 20),
        description="the cyclic GC's generation thresholds in server workers (Python's default: 700, 10, 10)",
    )

    @property
    def worker_count(self) -> int:
        """Workers to run: the configured number, or one per core."""
        return self.workers or os.cpu_count() or 1


class DatabaseConfig(Frozen):
    """The SQL store: SQLite on the embedded default, PostgreSQL in production."""

    url: str = Field(
        "sqlite+aiosqlite:///.sluicegate/sluicegate.db",
        description="unset: a SQLite file in data_dir, sluicegate.db",
    )
    migrate_on_start: bool = Field(
        True, description="bring the schema up to date when a gateway starts (serve does it once)"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "the database URL must be sqlite+aiosqlite:///PATH or "
                f"postgresql+asyncpg://USER@HOST:PORT/DATABASE, got {value!r}"
            )
        return value


class RedisConfig(Frozen):
    """Redis; none on the embedded default."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"the Redis URL must start with redis://, rediss:// or unix://, got {value!r}")
        return value


class AuthConfig(Frozen):
    """Virtual keys and the admin key."""

    require_keys: bool = Field(False, description="off: every request is the local dev org")
    dev_org: str = Field("local", description="the org of every request when keys are not required")
    pepper_env: str = "SLUICEGATE_KEY_PEPPER"
    admin_key_env: str = "SLUICEGATE_ADMIN_KEY"
    key_cache_seconds: float = Field(30.0, ge=0)
    allow_unauthenticated_network: bool = Field(
        False,
        description="serve without keys (admin routes open) on a non-loopback address; off: serve refuses",
    )

    @field_validator("dev_org")
    @classmethod
    def _an_org_name(cls, value: str) -> str:
        return check_org_name(value)
