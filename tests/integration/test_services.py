"""The real Redis and PostgreSQL: probes, migrations and keys against the services themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate import create_gateway
from sluicegate.auth import KeyStore
from sluicegate.store.db import create_engine, migrate
from sluicegate.testing import mock_settings

pytestmark = pytest.mark.filterwarnings("default:SKIPPING:pytest.PytestWarning")


@pytest.mark.redis
async def test_status_probes_real_redis(redis_url: str, tmp_path: Path) -> None:
    """With Redis configured, the status probe reaches it."""
    settings = mock_settings(data_dir=tmp_path, redis={"url": redis_url})
    async with create_gateway(settings) as gw:
        assert gw.redis is not None
        await gw.redis.set("sluicegate:test", "1")
        assert await gw.redis.get("sluicegate:test") == b"1"
        result = gw.probes.snapshot()["redis"]
        assert result is not None and result.up


async def test_status_reports_redis_down(tmp_path: Path) -> None:
    """An unreachable Redis is reported down, with the reason, without failing the gateway."""
    settings = mock_settings(data_dir=tmp_path, redis={"url": "redis://127.0.0.1:1/0"})
    async with create_gateway(settings) as gw:
        result = gw.probes.snapshot()["redis"]
        assert result is not None and not result.up and result.error


@pytest.mark.postgres
async def test_migrations_and_keys_on_postgres(database_url: str, tmp_path: Path) -> None:
    """Migrations run (twice, idempotently) and keys round-trip on PostgreSQL."""
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        await migrate(engine)
        store = KeyStore(engine, b"pepper")
        key, record = await store.create("acme", user="ann")
        assert await store.find(key) == record
        assert record.created_at.tzinfo is not None
        await store.revoke(record.id)
        assert await store.find(key) is None
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_gateway_on_postgres(database_url: str, tmp_path: Path) -> None:
    """A gateway whose store is PostgreSQL starts, probes it and authenticates against it."""
    settings = mock_settings(data_dir=tmp_path, database={"url": database_url}, auth={"require_keys": True})
    async with create_gateway(settings) as gw:
        result = gw.probes.snapshot()["database"]
        assert result is not None and result.up
        key, _ = await gw.keys.create("acme")
        ctx = gw.authenticator.context(await gw.authenticator.authenticate(f"Bearer {key}"), None, None)
        assert ctx.org == "acme"
