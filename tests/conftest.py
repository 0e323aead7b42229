"""Shared fixtures: settings on a temporary folder, real servers, and the real services."""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from sluicegate import Gateway, Settings, create_gateway
from sluicegate.store import tables
from sluicegate.store.db import create_engine, migrate
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings

REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DATABASE_URL = os.environ.get(
    "SLUICEGATE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("SLUICEGATE_REQUIRE_SERVICES") == "1"


def service_missing(name: str, url: str, error: BaseException) -> None:
    """Fail under SLUICEGATE_REQUIRE_SERVICES=1; otherwise skip, loudly."""
    message = f"{name} is not reachable at {url} ({type(error).__name__}: {error})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message}; SLUICEGATE_REQUIRE_SERVICES=1 makes this a failure")
    warnings.warn(f"SKIPPING: {message}", pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts in its own folder, free of the developer's sluicegate variables."""
    for name in list(os.environ):
        if name.startswith("SLUICEGATE_") and not name.startswith(("SLUICEGATE_TEST_", "SLUICEGATE_REQUIRE")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


# The run's log: every record of every test at DEBUG, in one file; a planted secret must never
# be in it (tests/test_no_secrets_in_logs.py plants it; pytest_sessionfinish checks the file).
PLANTED_SECRET = "sgplanted-4b1d9e70c2"
_SESSION_LOG = Path(os.environ.get("SLUICEGATE_TEST_LOG", "/tmp")) / f"sluicegate-tests-{os.getpid()}.log"


def pytest_configure(config: pytest.Config) -> None:
    _SESSION_LOG.write_text("")
    # Appending: uvicorn's dictConfig closes every handler, and only an appending one reopens.
    handler = logging.FileHandler(_SESSION_LOG, mode="a", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("sluicegate").setLevel(logging.DEBUG)


def session_log_text() -> str:
    """What the run has logged so far."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    return _SESSION_LOG.read_text(encoding="utf-8", errors="replace") if _SESSION_LOG.exists() else ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    text = session_log_text()
    if PLANTED_SECRET in text:
        lines = [line for line in text.splitlines() if PLANTED_SECRET in line]
        print(f"\nthe planted secret reached the log in {len(lines)} line(s), e.g.: {lines[0][:300]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# Retries back off for milliseconds, not the default's hundreds, so failing tests stay quick.
FAST_RETRIES = {"retry": {"base_ms": 5, "cap_ms": 50}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the in-process mock and a SQLite file in the test's folder."""
    return mock_settings(data_dir=tmp_path / "data", resilience=FAST_RETRIES)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    """A started gateway over the in-process mock."""
    async with create_gateway(settings) as gw:
        yield gw


@pytest.fixture
def upstream() -> Iterator[MockUpstream]:
    """The mock provider over real HTTP, in a thread."""
    with MockUpstream() as mock:
        yield mock


def serve(settings: Settings) -> GatewayServer:
    """A gateway over real HTTP, for use in a ``with`` block."""
    return GatewayServer(settings)


@pytest.fixture
def http_settings(upstream: MockUpstream, tmp_path: Path) -> Settings:
    """Settings pointing at the HTTP mock."""
    return mock_settings(upstream.url, data_dir=tmp_path / "data", resilience=FAST_RETRIES)


@pytest.fixture
def server(http_settings: Settings) -> Iterator[GatewayServer]:
    """The gateway over HTTP, in front of the HTTP mock."""
    with serve(http_settings) as gw:
        yield gw


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """The real Redis (a scratch database, flushed after the test)."""
    client: Redis = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        service_missing("Redis", REDIS_URL, exc)
    yield REDIS_URL
    await client.flushdb()
    await client.aclose()


_DROP_ALL = text(f"DROP TABLE IF EXISTS {', '.join([*tables.metadata.tables, 'alembic_version'])}")


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """The real PostgreSQL, with sluicegate's tables dropped before and after the test (a
    benchmark run shares the database and may leave them behind)."""
    engine = create_engine(DATABASE_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(_DROP_ALL)
    except Exception as exc:
        await engine.dispose()
        service_missing("PostgreSQL", DATABASE_URL, exc)
    yield DATABASE_URL
    async with engine.begin() as conn:
        await conn.execute(_DROP_ALL)
    await engine.dispose()


async def settled_usage(gateway: Gateway, budget: Any, tries: int = 50) -> Any:
    """The budget's period once nothing is reserved under it (its settlements run in the
    background), or as it is after ``tries`` looks 20 ms apart."""
    for _ in range(tries):
        usage = await gateway.budgets.usage(budget)
        if usage.reserved_micro == 0:
            break
        await asyncio.sleep(0.02)
    return usage


def chat_body(**extra: Any) -> dict[str, Any]:
    """A minimal valid chat request."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Suggest an OKR"}],
        **extra,
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or the real PostgreSQL (its tables dropped before and after the test)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated engine on the store: each test that uses it runs on SQLite and PostgreSQL."""
    made = create_engine(store_url)
    await migrate(made)
    yield made
    await made.dispose()
