"""The ledger under faults, with real processes: a gateway killed by SIGKILL with calls in
flight, while the database is unreachable for 30 s. Afterwards the ledger holds exactly one row per
call the mock provider received (none lost, none twice), plus, at most, the killed process's
calls whose request had not yet left it, billed by estimate as ``interrupted``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from sluicegate.config import MockBehaviour
from sluicegate.faults import FaultProxy
from sluicegate.store.db import create_engine
from sluicegate.store.tables import usage_ledger
from sluicegate.testing import MockUpstream
from tests.integration.conftest import GatewayProcess, post

pytestmark = pytest.mark.postgres

PG_HOST, PG_PORT = "127.0.0.1", 5432
OUTAGE_S = 30.0  # the figure


@pytest.fixture
def pg_proxy(database_url: str) -> Iterator[FaultProxy]:
    """PostgreSQL through a fault proxy, so that the test can cut it."""
    with FaultProxy(PG_HOST, PG_PORT) as proxy:
        yield proxy


async def _ledger_rows(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            attempts = await connection.scalar(
                select(func.count()).select_from(usage_ledger).where(usage_ledger.c.attempt >= 1)
            )
            interrupted = await connection.scalar(
                select(func.count())
                .select_from(usage_ledger)
                .where(usage_ledger.c.priced_from == "interrupted")
            )
        return int(attempts or 0), int(interrupted or 0)
    finally:
        await engine.dispose()


def test_a_killed_gateway_and_a_database_outage_lose_no_row_and_count_none_twice(
    gateway_processes: Callable[..., list[GatewayProcess]], pg_proxy: FaultProxy, tmp_path: Path
) -> None:
    with MockUpstream(MockBehaviour(latency=300)) as upstream:
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{pg_proxy.port}/test"
        config: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),  # one machine: the survivor replays the spool
            "database": {"url": url},
            "providers": {"up": {"kind": "openai", "base_url": upstream.url}},
            "models": {"gpt-4o-mini": {"provider": "up"}},
            "cache": {"enabled": False},
            "ledger": {"flush_interval_s": 0.1, "replay_interval_s": 1.0},
        }
        victim, survivor = gateway_processes(config, count=2)
        counter = itertools.count()
        stop = threading.Event()
        answered = [0]

        def client() -> None:
            while not stop.is_set():
                n = next(counter)
                target = victim if n % 2 else survivor
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"call {n}"}]}
                with contextlib.suppress(OSError):
                    if post(target.url + "/v1/chat/completions", body).status_code == 200:
                        answered[0] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        pg_proxy.cut()  # the database goes away under load, for 30 s
        time.sleep(1.0)
        victim.process.send_signal(signal.SIGKILL)  # with calls in flight and rows not yet written
        time.sleep(OUTAGE_S - 1.0)
        pg_proxy.restore()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(40)

        received = sum(1 for call in upstream.calls if call.path.endswith("/chat/completions"))
        assert received > 50 and answered[0] > 0
        deadline = time.monotonic() + 20
        rows, interrupted = asyncio.run(_ledger_rows(url))
        while rows < received and time.monotonic() < deadline:
            time.sleep(0.5)
            rows, interrupted = asyncio.run(_ledger_rows(url))
        # None lost: every call the provider received has its row. A call in flight when the
        # process died is billed by estimate (``interrupted``) whether or not its request got
        # out before the kill, so the only rows beyond the provider's count are those.
        assert rows >= received, f"{received} calls reached the provider, the ledger has {rows} rows"
        assert rows - interrupted <= received, f"{rows - interrupted} settled rows for {received} calls"
        assert interrupted > 0  # the calls in flight in the killed process, billed by estimate
        assert survivor.process.poll() is None
        spools = (tmp_path / "data" / "ledger-spool").glob(f"{victim.process.pid}-*.jsonl")
        assert list(spools) == []  # the dead process's spool was replayed and removed
