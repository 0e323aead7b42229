"""Write transactions on PostgreSQL give up after `TIMEOUT_S` when the database hangs."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from sluicegate.faults import FaultProxy
from sluicegate.store import transactions
from sluicegate.store.db import create_engine
from sluicegate.store.transactions import WriteTransactions

pytestmark = pytest.mark.postgres


async def test_a_hung_database_costs_a_transaction_the_timeout_not_a_minute(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database keeps its connections open and does not answer (each byte held 10 s):
    every transaction, those queued behind the first included, gives up after the timeout."""
    monkeypatch.setattr(transactions, "TIMEOUT_S", 0.5)
    parts = urlsplit(database_url.replace("postgresql+asyncpg", "http"))
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        engine = create_engine(database_url.replace(f":{parts.port}/", f":{proxy.port}/"))
        work = WriteTransactions(engine, "test")
        try:
            assert await work.run(lambda q: q("SELECT 1", {})[0][0][0]) == 1
            proxy.set(latency_ms=10_000)
            started = time.monotonic()
            waiting = [asyncio.ensure_future(work.run(lambda q: q("SELECT 1", {}))) for _ in range(3)]
            for each in waiting:  # the ones queued behind the first give up as soon, not in turn
                with pytest.raises(TimeoutError, match=r"did not answer within 0\.5 s"):
                    await each
            assert time.monotonic() - started < 2.0
        finally:
            proxy.reset()
            work.close()
            await engine.dispose()
