"""Helpers for tests, sluicegate's own and its users': a mock upstream and a gateway, each a real
server on a free loopback port in a background thread.

    with MockUpstream() as upstream, GatewayServer(mock_settings(upstream.url)) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="anything")
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn

from .config import MockBehaviour, Settings
from .server.app import SluicegateApp, create_app
from .server.protocol import CoalescingHttpToolsProtocol
from .upstream.mock import MockCall, MockEngine
from .upstream.mock_server import MockServerProtocol, start_mock_server

__all__ = ["GatewayServer", "MockUpstream", "free_port", "mock_settings"]


def mock_settings(
    upstream_url: str | None = None, *, data_dir: Path | None = None, **overrides: Any
) -> Settings:
    """Settings for a test: models ``gpt-4o-mini`` and ``text-embedding-3-small`` served by an
    HTTP mock at ``upstream_url``, or by the in-process mock when it is None."""
    provider: dict[str, Any] = (
        {"kind": "openai", "base_url": upstream_url, "timeouts": {"first_byte": 2, "total": 10}}
        if upstream_url
        else {"kind": "mock"}
    )
    values: dict[str, Any] = {
        "providers": {"upstream": provider},
        "models": {
            "gpt-4o-mini": {"provider": "upstream", "aliases": ["fast"]},
            "text-embedding-3-small": {"provider": "upstream"},
        },
    }
    if data_dir is not None:
        values["data_dir"] = data_dir  # the SQLite file goes there too
    values.update(overrides)
    return Settings(**values)


class _LoopThread:
    """A daemon thread running its own event loop until stopped."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class MockUpstream:
    """The mock provider served over HTTP from a background thread, with its call log at hand."""

    def __init__(self, behaviour: MockBehaviour | None = None) -> None:
        self.engine = MockEngine(behaviour)
        self._thread: _LoopThread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[MockServerProtocol] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> list[MockCall]:
        """The requests received so far."""
        return self.engine.calls

    def behave(self, **behaviour: Any) -> None:
        """Replace the mock's behaviour, e.g. ``behave(error_rate=1.0, error_status=503)``."""
        self.engine.behaviour = MockBehaviour(**behaviour)

    def __enter__(self) -> Self:
        self._thread = _LoopThread()
        self._server = self._thread.run(start_mock_server(self.engine, connections=self._connections))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._thread is not None
        assert self._server is not None
        server = self._server

        async def close() -> None:
            server.close()
            for connection in list(self._connections):
                connection.close()
            await server.wait_closed()
            await asyncio.sleep(0)  # let the transports finish closing

        self._thread.run(close())
        self._thread.stop()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayServer:
    """The gateway served by uvicorn from a background thread."""

    def __init__(self, settings: Settings | None = None, *, app: SluicegateApp | None = None) -> None:
        self.app = app or create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            loop="asyncio",
            http=CoalescingHttpToolsProtocol,  # as `sluicegate serve` runs it
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        """The gateway's base URL, without ``/v1``."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        for _ in range(500):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError("the gateway did not start; see its log")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)
