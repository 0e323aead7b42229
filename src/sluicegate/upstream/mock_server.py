"""The mock provider as a real HTTP/1.1 server: a raw asyncio protocol with httptools.

It is lean on purpose, so that in benchmarks the mock is never the bottleneck. Besides the
OpenAI routes it serves a small control surface for fault tests:

- ``GET /_mock/health``: 200 when up;
- ``GET /_mock/calls`` / ``DELETE /_mock/calls``: read or clear the call log;
- ``GET /_mock/behaviour`` / ``PUT /_mock/behaviour``: read or replace the `MockBehaviour`.

Requests on one connection are answered in order; pipelined requests are not supported.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson
from pydantic import ValidationError

from ..background import spawn
from ..config import MockBehaviour
from .mock import MockEngine, MockReply

__all__ = ["MockServerProtocol", "start_mock_server"]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _head(status: int, headers: dict[str, str], extra: bytes, keep_alive: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    lines += [f"{name}: {value}\r\n".encode() for name, value in headers.items()]
    lines.append(extra)
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class MockServerProtocol(asyncio.Protocol):
    """One client connection to the mock server."""

    def __init__(self, engine: MockEngine, connections: set[MockServerProtocol] | None = None) -> None:
        self._engine = engine
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        if self._connections is not None:
            self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._tasks:
            task.cancel()
        self._transport = None
        if self._connections is not None:
            self._connections.discard(self)

    def close(self) -> None:
        """Close this connection."""
        self._close()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_head(400, {"content-length": "0"}, b"", False))
            self._close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        keep_alive = bool(self._parser.should_keep_alive())
        path = self._url.split(b"?", 1)[0].decode()
        body = b"".join(self._body)
        if path.startswith("/_mock/"):
            self._send_whole(self._control(method, path, body), keep_alive)
            return
        reply = self._engine.reply(method, path, body)
        if reply.hang:
            return
        if reply.streamed:
            spawn(self._tasks, self._send_stream(reply, keep_alive))
        elif reply.delay_s:
            asyncio.get_running_loop().call_later(reply.delay_s, self._send_whole, reply, keep_alive)
        else:
            self._send_whole(reply, keep_alive)

    # replies

    def _control(self, method: str, path: str, body: bytes) -> MockReply:
        headers = {"content-type": "application/json"}
        if path == "/_mock/health":
            return MockReply(200, headers, b'{"status":"ok"}')
        if path == "/_mock/calls" and method == "GET":
            calls = [{"path": c.path, "body": c.body, "at": c.at} for c in self._engine.calls]
            return MockReply(200, headers, orjson.dumps(calls))
        if path == "/_mock/calls" and method == "DELETE":
            self._engine.clear_calls()
            return MockReply(200, headers, b"{}")
        if path == "/_mock/behaviour" and method == "GET":
            return MockReply(200, headers, self._engine.behaviour.model_dump_json().encode())
        if path == "/_mock/behaviour" and method in ("PUT", "POST"):
            try:
                self._engine.behaviour = MockBehaviour.model_validate_json(body or b"{}")
            except ValidationError as exc:
                return MockReply(400, headers, orjson.dumps({"error": str(exc)}))
            return MockReply(200, headers, self._engine.behaviour.model_dump_json().encode())
        return MockReply(404, headers, b'{"error":"no such control route"}')

    def _send_whole(self, reply: MockReply, keep_alive: bool) -> None:
        body = reply.body or b"".join(reply.events)
        extra = b"content-length: %d\r\n" % len(body)
        self._write(_head(reply.status, reply.headers, extra, keep_alive) + body)
        if not keep_alive:
            self._close()

    async def _send_stream(self, reply: MockReply, keep_alive: bool) -> None:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        self._write(_head(reply.status, reply.headers, b"transfer-encoding: chunked\r\n", keep_alive))
        pending: list[bytes] = []
        for index, event in enumerate(reply.events):
            if reply.drop_after is not None and index >= reply.drop_after:
                self._write(b"".join(pending))
                self._close()  # no terminating chunk: the client sees a cut stream
                return
            pending.append(b"%x\r\n%s\r\n" % (len(event), event))
            if reply.interval_s:
                self._write(b"".join(pending))
                pending.clear()
                await asyncio.sleep(reply.interval_s)
        pending.append(b"0\r\n\r\n")
        self._write(b"".join(pending))
        if not keep_alive:
            self._close()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def start_mock_server(
    engine: MockEngine,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    connections: set[MockServerProtocol] | None = None,
) -> asyncio.Server:
    """Start serving ``engine`` on ``host:port`` (0 picks a free port) in the running loop.

    Pass a set as ``connections`` to keep track of open connections, e.g. to close them.
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: MockServerProtocol(engine, connections), host, port, backlog=2048)
