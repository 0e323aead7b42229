"""uvicorn's httptools protocol, with the writes of one loop turn sent as one, and guarded
against hostile clients.

uvicorn writes a response's head and its body with two ``transport.write`` calls. On an
otherwise idle socket each is its own ``send`` system call and its own TCP segment, which the
client then reads separately: for a small answer (a cache hit) that second write was the
largest single cost of the request (``bench/RESULTS.md``). Here the transport holds what is
written until the end of the loop turn, or until the response is complete, and then sends it
in one write. Nothing waits longer than one turn of the loop: a stream's head still leaves at
once, and its chunks as they come.

The guards, each answered in OpenAI's error shape and then a lingering close:

- a request head (request line and headers) not complete within ``head_timeout_s`` of its
  first byte (or of the connection) is a 408: a slowloris client holds a socket for that long
  at most;
- a request head larger than ``max_head_bytes`` is a 431;
- a request beyond ``max_connections`` open connections in the worker is a 503.

A lingering close: when the gateway answers before it has read the whole request (a 413 for a
body over the limit, or a guard above), closing at once would make the kernel reset the
connection because of the unread bytes, and the client would see ``Connection reset by peer``
instead of the answer. So the gateway sends the answer, shuts its side down, and reads and
discards what the client still sends, for ``LINGER_S`` at most, before it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import ServerConfig
from ..errors import InvalidRequest

__all__ = ["LINGER_S", "CoalescingHttpToolsProtocol", "TurnBufferedTransport"]

LINGER_S = 2.0
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class TurnBufferedTransport:
    """A transport that joins the writes made in one loop turn into one write."""

    __slots__ = ("_closing", "_held", "_linger", "_loop", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        linger: Callable[[], bool] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._closing = False
        # Called on close after what is held is sent: True when it closes the connection itself
        # (a lingering close), later.
        self._linger = linger

    def write(self, data: bytes) -> None:
        """Hold ``data`` until the end of this loop turn (or the next `flush`)."""
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = held + data

    def flush(self) -> None:
        """Send what is held, now."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close (or linger, when the request was not read whole)."""
        if self._closing:
            return
        self.flush()
        self._closing = True
        if self._linger is None or not self._linger():
            self._transport.close()

    def abort(self) -> None:
        """Close at once; what is held is dropped."""
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:
        # The rest of the transport's interface (set_protocol, write_eof, …), unchanged.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `TurnBufferedTransport`: a response's head and body
    leave as one write; slow, oversized and surplus requests are refused (see the module), by
    the limits in the served gateway's `server` settings."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.head_timeout_s, self.max_head_bytes, self.max_connections = _limits(config)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        self._head_bytes = 0
        self._discarding = False  # refused or lingering: what the client sends is dropped
        self._linger_timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout_s, self._head_too_slow
        )
        buffered = TurnBufferedTransport(transport, self.loop, self._linger_close)
        super().connection_made(buffered)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self._discarding:
            self._raw.close()  # the client has finished sending: the lingering close is over

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()
        elif not self._discarding:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            self._refuse_head()
        elif not self._discarding:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._discarding:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.connections) > self.max_connections:
            self._refuse(
                503,
                "service_unavailable",
                f"this gateway worker has {len(self.connections)} open connections, more than its "
                f"limit of {self.max_connections} (server.max_connections); retry shortly",
            )
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._discarding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._discarding:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        # The response is whole: send it before anything else this turn.
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers did not arrive within {self.head_timeout_s:g} s",
        )

    def _refuse_head(self) -> None:
        if not self._discarding:
            self._refuse(
                431,
                "request_header_fields_too_large",
                f"the request line and headers are larger than the gateway's limit of "
                f"{self.max_head_bytes} bytes",
            )

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` in OpenAI's error shape before the request was read, then close."""
        if self._discarding or self.transport.is_closing():
            return
        self._discarding = True
        body = InvalidRequest(message, code=code).to_json()
        head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
            status,
            _REASONS[status],
            len(body),
        )
        extra = b"retry-after: 1\r\n" if status == 503 else b""
        self.transport.write(head + extra + b"connection: close\r\n\r\n" + body)
        self.transport.close()

    def _linger_close(self) -> bool:
        """Close lingering when the client may still be sending: shut our side down, drop
        what arrives, and close when the client has finished or after `LINGER_S`."""
        cycle = self.cycle
        if not (self._discarding or (cycle is not None and cycle.more_body)):
            return False
        self._discarding = True
        raw = self._raw
        if not raw.can_write_eof():
            return False
        raw.write_eof()
        raw.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, raw.close)
        return True


def _limits(config: Config) -> tuple[float, int, int]:
    """The ``server`` limits of the gateway uvicorn serves, found once per server."""
    limits: tuple[float, int, int] | None = getattr(config, "_sluicegate_limits", None)
    if limits is None:
        app = config.loaded_app
        while not hasattr(app, "gateway") and hasattr(app, "app"):
            app = app.app  # unwrap uvicorn's middleware
        server = app.gateway.settings.server if hasattr(app, "gateway") else ServerConfig()
        limits = (server.head_timeout_s, server.max_head_bytes, server.max_connections)
        config._sluicegate_limits = limits  # type: ignore[attr-defined]
    return limits
