"""Write transactions on PostgreSQL give up after `TIMEOUT_S` when the database hangs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from sluicegate.store import transactions
from sluicegate.store.db import create_engine
from sluicegate.store.transactions import WriteTransactions

pytestmark = pytest.mark.postgres


class PausingProxy:
    """A TCP proxy to the real PostgreSQL that stops passing bytes on when paused: a database
    that keeps its connections open and never answers."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self.flowing.wait()
            writer.write(data)
            await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[PausingProxy, str]]:
    parts = urlsplit(database_url.replace("postgresql+asyncpg", "http"))
    made = PausingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await made.start()
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    yield made, database_url.replace(parts.netloc, netloc)
    await made.stop()


async def test_a_hung_database_costs_a_transaction_the_timeout_not_a_minute(
    proxy: tuple[PausingProxy, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "TIMEOUT_S", 0.5)
    pausing, url = proxy
    engine = create_engine(url)
    work = WriteTransactions(engine, "test")
    try:
        assert await work.run(lambda q: q("SELECT 1", {})[0][0][0]) == 1
        pausing.flowing.clear()
        started = time.monotonic()
        waiting = [asyncio.ensure_future(work.run(lambda q: q("SELECT 1", {}))) for _ in range(3)]
        for each in waiting:  # the ones queued behind the first give up as soon, not in turn
            with pytest.raises(TimeoutError, match=r"did not answer within 0\.5 s"):
                await each
        assert time.monotonic() - started < 2.0
    finally:
        pausing.flowing.set()
        work.close()
        await engine.dispose()
