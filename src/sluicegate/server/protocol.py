"""uvicorn's httptools protocol, with the writes of one loop turn sent as one.

uvicorn writes a response's head and its body with two ``transport.write`` calls. On an
otherwise idle socket each is its own ``send`` system call and its own TCP segment, which the
client then reads separately: for a small answer (a cache hit) that second write was the
largest single cost of the request (``bench/RESULTS.md``). Here the transport holds what is
written until the end of the loop turn, or until the response is complete, and then sends it
in one write. Nothing waits longer than one turn of the loop: a stream's head still leaves at
once, and its chunks as they come.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["CoalescingHttpToolsProtocol", "TurnBufferedTransport"]


class TurnBufferedTransport:
    """A transport that joins the writes made in one loop turn into one write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

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
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once; what is held is dropped."""
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

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
    leave as one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        buffered = TurnBufferedTransport(transport, self.loop)
        super().connection_made(buffered)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # The response is whole: send it before anything else this turn.
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
