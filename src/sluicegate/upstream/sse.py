"""Relaying an upstream server-sent event stream to the client, chunk by chunk.

The relay forwards every complete event as soon as it arrives, with no buffering beyond the
current partial event. Along the way it notes the usage chunk, withholds it when the client
did not ask for it (sluicegate asks upstream for usage on every stream), and insists on
``[DONE]``: a stream that ends without it raises `UpstreamStreamBroken`, so the client gets an
error event, never a silent end.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from ..calls import Usage
from ..errors import SluicegateError, UpstreamStreamBroken

__all__ = ["SseRelay", "error_event"]

_DONE = b"data: [DONE]"
_USAGE = b'"usage"'
_NULL_USAGE = (b'"usage":null', b'"usage": null')


def error_event(error: SluicegateError) -> bytes:
    """The SSE event that tells a client its stream failed."""
    return b"data: " + error.to_json() + b"\n\n"


class SseRelay:
    """Iterate to get client-ready SSE bytes; afterwards, read ``usage``, ``done`` and ``error``."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        release: Callable[[], Awaitable[None]],
        *,
        strip_usage: bool,
    ) -> None:
        self._chunks = chunks
        self._release = release
        self._strip_usage = strip_usage
        self.usage: Usage | None = None
        self.done = False
        self.error: SluicegateError | None = None
        self.first_chunk_at: float | None = None
        self.deltas = 0
        self._on_close: list[Callable[[Any], None]] = []
        self._closed = False

    def on_close(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback`` once the stream has ended, however it ended."""
        self._on_close.append(callback)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pending = b""
        try:
            async for data in self._chunks:
                if self.first_chunk_at is None:
                    self.first_chunk_at = time.perf_counter()
                pending = pending + data if pending else data
                if b"\r" in pending:
                    # Normalised on the pending bytes, so a CRLF split across reads is caught too.
                    pending = pending.replace(b"\r\n", b"\n")
                end = pending.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, pending = pending[: end + 2], pending[end + 2 :]
                out = self._inspect(complete)
                if out:
                    yield out
            if pending.strip():
                # Tolerate a last event missing its blank line.
                out = self._inspect(pending + b"\n\n")
                if out:
                    yield out
            if not self.done:
                raise UpstreamStreamBroken("the upstream stream ended before [DONE]")
        except SluicegateError as exc:
            self.error = exc
            raise
        finally:
            await self.aclose()

    def _inspect(self, events: bytes) -> bytes:
        self.deltas += events.count(b'"delta"')
        if _USAGE in events:
            events = self._take_usage(events)
        if _DONE in events:
            self.done = True
        return events

    def _take_usage(self, events: bytes) -> bytes:
        kept = []
        for event in events.split(b"\n\n"):
            if _USAGE in event and not any(null in event for null in _NULL_USAGE):
                usage_only = self._read_usage(event)
                if usage_only and self._strip_usage:
                    continue
            kept.append(event)
        return b"\n\n".join(kept)

    def _read_usage(self, event: bytes) -> bool:
        """Record the event's usage; True when the event carries nothing but usage."""
        line = event.strip()
        if not line.startswith(b"data:"):
            return False
        try:
            payload = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return False
        if not isinstance(payload, dict):
            return False
        usage = Usage.from_payload(payload.get("usage"))
        if usage is not None:
            self.usage = usage
        return usage is not None and not payload.get("choices")

    async def aclose(self) -> None:
        """Release the upstream connection and run the close callbacks, once."""
        if self._closed:
            return
        self._closed = True
        await self._release()
        for callback in self._on_close:
            callback(self)
