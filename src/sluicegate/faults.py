"""A TCP fault proxy for tests and benchmarks: put it in front of Redis, PostgreSQL or the mock
provider and make the path between them slow, thin, broken or silent, on loopback only::

    with FaultProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}"
        proxy.set(latency_ms=200, jitter_ms=50)    # every chunk, each way, is held this long
        proxy.set(bandwidth_bps=10_000)            # at most this many bytes a second, each way
        proxy.set(close_after_bytes=1000)          # each connection is closed after this many
        proxy.set(blackhole=True)                  # bytes go nowhere; connections stay open
        proxy.reset()                              # every open connection is reset (RST)
        proxy.cut(); proxy.restore()               # nothing listens until restored
        proxy.clear()                              # back to a plain pipe

It runs its own event loop in a daemon thread, so it serves synchronous and asynchronous
code alike. A setting applies to the bytes that pass after it is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

from .testing import free_port

__all__ = ["FaultProxy", "Faults"]


@dataclass(frozen=True, slots=True)
class Faults:
    """What the proxy does to the bytes passing through it."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: int | None = None
    close_after_bytes: int | None = None
    blackhole: bool = False


class FaultProxy:
    """A TCP proxy from ``127.0.0.1:port`` to ``host:target_port`` with injectable faults."""

    def __init__(
        self, host: str, target_port: int, *, port: int | None = None, seed: int | None = None
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback addresses")
        self.host = host
        self.target_port = target_port
        self.port = port or free_port()
        self.faults = Faults()
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self.restore()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def set(self, **faults: Any) -> None:
        """Change some faults (`Faults` fields); the others stay."""
        self.faults = replace(self.faults, **faults)

    def clear(self) -> None:
        """A plain pipe again."""
        self.faults = Faults()

    def restore(self) -> None:
        """Listen (again)."""

        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

        if self._server is None:
            self._server = self._run(start())

    def cut(self) -> None:
        """Stop listening and drop every connection: the target is unreachable until `restore`."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            self._abort_all()

        self._run(stop())

    def reset(self) -> None:
        """Reset every open connection (the peers see ``Connection reset``); keep listening."""

        async def abort() -> None:
            self._abort_all()

        self._run(abort())

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # a linger of 0 turns the close into a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        self._writers.clear()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        passed = [0]  # bytes through this connection, both ways
        try:
            await asyncio.gather(self._pipe(reader, up_writer, passed), self._pipe(up_reader, writer, passed))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, passed: list[int]
    ) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                faults = self.faults
                if faults.blackhole:
                    continue
                delay = faults.latency_ms + (self._rng.uniform(-1, 1) * faults.jitter_ms)
                if faults.bandwidth_bps:
                    delay += len(data) / faults.bandwidth_bps * 1000
                if delay > 0:
                    await asyncio.sleep(delay / 1000)
                if faults.close_after_bytes is not None:
                    room = faults.close_after_bytes - passed[0]
                    if room <= 0:
                        break
                    data = data[:room]
                passed[0] += len(data)
                writer.write(data)
                await writer.drain()
                if faults.close_after_bytes is not None and passed[0] >= faults.close_after_bytes:
                    break
        writer.close()
