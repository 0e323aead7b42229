"""One frozen event per request, and the stage that records it.

The stage does no work on the request's behalf beyond building the event; sinks decide what
to keep. Streams are recorded when they end, with their time to first chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..calls import Call, CallKind, Reply, ReplyStream, Usage
from ..errors import ServiceUnavailable, SluicegateError

__all__ = ["Counters", "EventSink", "RecordEvents", "RequestEvent", "closed"]


@dataclass(slots=True, frozen=True)
class RequestEvent:
    """What happened to one request."""

    request_id: str
    kind: CallKind
    org: str
    user: str | None
    feature: str
    model: str
    provider: str
    stream: bool
    status: int
    error_code: str | None
    latency_s: float
    ttft_s: float | None
    usage: Usage | None


class EventSink(Protocol):
    """Receives every request event; must not block or raise."""

    def record(self, event: RequestEvent) -> None:
        """Take one event."""
        ...


class Counters:
    """An in-memory sink: totals since start, for the status route."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency_s = 0.0

    def record(self, event: RequestEvent) -> None:
        self.requests += 1
        self.latency_s += event.latency_s
        if event.error_code is not None or event.status >= 400:
            self.errors[event.error_code or str(event.status)] += 1
        if event.usage is not None:
            self.prompt_tokens += event.usage.prompt_tokens
            self.completion_tokens += event.usage.completion_tokens

    def snapshot(self) -> dict[str, object]:
        """The totals as a JSON-ready mapping."""
        return {
            "requests": self.requests,
            "errors": dict(self.errors),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "mean_latency_ms": round(1000 * self.latency_s / self.requests, 3) if self.requests else None,
        }


Send = Callable[[Call], Awaitable[Reply]]


def _event(
    call: Call, status: int, code: str | None, usage: Usage | None, ttft: float | None
) -> RequestEvent:
    ctx = call.context
    return RequestEvent(
        call.request_id,
        call.kind,
        ctx.org,
        ctx.user,
        ctx.feature,
        call.route.name,
        call.route.provider,
        call.stream,
        status,
        code,
        time.perf_counter() - call.started,
        ttft,
        usage,
    )


def closed() -> ServiceUnavailable:
    """The refusal of a call on a gateway that is closed, or closing."""
    return ServiceUnavailable(
        "the gateway is closed (or closing): make calls on a gateway that is open", code="gateway_closed"
    )


class RecordEvents:
    """The outermost stage: one `RequestEvent` per call, however it ends."""

    def __init__(self, send: Send, sink: EventSink) -> None:
        self._send = send
        self._sink = sink
        self.in_flight = 0  # calls under way, streams until they close: `drain` waits for them
        self._idle: asyncio.Future[None] | None = None
        self.closed = False  # set by the gateway's close: calls made before it are refused

    async def __call__(self, call: Call) -> Reply:
        if self.closed:
            raise closed()
        self.in_flight += 1
        try:
            reply = await self._send(call)
        except SluicegateError as exc:
            self._ended()
            self._sink.record(_event(call, exc.status_code, exc.code, None, None))
            raise
        except BaseException:
            self._ended()
            raise
        if reply.stream is None:
            self._ended()
            self._sink.record(_event(call, 200, None, reply.usage, None))
        else:
            reply.stream.on_close(lambda relay: self._record_stream(call, relay))
        return reply

    def _ended(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the calls under way to end; how many are still going."""
        if self.in_flight:
            self._idle = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._idle
        return self.in_flight

    def _record_stream(self, call: Call, relay: ReplyStream) -> None:
        self._ended()
        error = relay.error
        if error is not None:
            status, code = error.status_code, error.code
        elif relay.done:
            status, code = 200, None
        else:
            status, code = 499, "client_disconnected"
        ttft = relay.first_chunk_at - call.started if relay.first_chunk_at is not None else None
        self._sink.record(_event(call, status, code, relay.usage, ttft))
