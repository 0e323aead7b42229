"""Tests for sluicegate.observe.events: counters and the stage that records one event per call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sluicegate.calls import Call, ModelRoute, Reply, RequestContext, Usage
from sluicegate.errors import InvalidRequest, UpstreamError, UpstreamStreamBroken
from sluicegate.observe.events import Counters, RecordEvents, RequestEvent
from sluicegate.upstream.sse import SseRelay

USAGE = Usage(10, 5, 15)
USAGE_EVENT = b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}\n\n'
CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


class ListSink:
    """A sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[RequestEvent] = []

    def record(self, event: RequestEvent) -> None:
        self.events.append(event)


def make_call(stream: bool = False) -> Call:
    """A chat call from org "acme", user "u1", feature "chat"."""
    return Call(
        "chat",
        {"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        ModelRoute("fast", "openai", "gpt-4o-mini"),
        RequestContext("acme", user="u1", feature="chat"),
        "req-7",
        stream=stream,
        started=time.perf_counter(),
    )


def make_event(
    status: int = 200, code: str | None = None, latency_s: float = 0.1, usage: Usage | None = None
) -> RequestEvent:
    """A request event with the given outcome."""
    return RequestEvent(
        "r", "chat", "o", None, "default", "m", "p", False, status, code, latency_s, None, usage
    )


async def chunks(parts: list[bytes], error: BaseException | None = None) -> AsyncIterator[bytes]:
    """An upstream stream of ``parts``, optionally failing at the end."""
    for part in parts:
        yield part
    if error is not None:
        raise error


async def nothing() -> None:
    """A release that has nothing to release."""


def streaming(parts: list[bytes], error: BaseException | None = None) -> Callable[[Call], Awaitable[Reply]]:
    """A send stage that answers with a stream of ``parts``."""

    async def send(call: Call) -> Reply:
        return Reply(stream=SseRelay(chunks(parts, error), nothing, strip_usage=True))

    return send


# Counters


def test_counters_start_empty() -> None:
    """A fresh Counters has no requests and no mean latency."""
    assert Counters().snapshot() == {
        "requests": 0,
        "errors": {},
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "mean_latency_ms": None,
    }


def test_counters_add_up() -> None:
    """Counters sum requests, tokens and latency, and count errors by code or status."""
    counters = Counters()
    counters.record(make_event(latency_s=0.1, usage=USAGE))
    counters.record(make_event(latency_s=0.2, usage=Usage(1, 2, 3)))
    counters.record(make_event(status=429, code="rate_limit_exceeded", latency_s=0.3))
    counters.record(make_event(status=502, latency_s=0.4))
    counters.record(make_event(status=502, latency_s=0.5))
    assert counters.snapshot() == {
        "requests": 5,
        "errors": {"rate_limit_exceeded": 1, "502": 2},
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "mean_latency_ms": 300.0,
    }


# RecordEvents


async def test_records_a_whole_reply() -> None:
    """A whole reply is recorded at once as a 200 with its usage and the call's context."""
    sink = ListSink()

    async def send(call: Call) -> Reply:
        return Reply(body=b"{}", usage=USAGE)

    reply = await RecordEvents(send, sink)(make_call())
    assert reply.usage == USAGE
    [event] = sink.events
    assert (event.status, event.error_code, event.usage) == (200, None, USAGE)
    assert (event.request_id, event.kind, event.org, event.user, event.feature) == (
        "req-7",
        "chat",
        "acme",
        "u1",
        "chat",
    )
    assert (event.model, event.provider, event.stream, event.ttft_s) == ("fast", "openai", False, None)
    assert event.latency_s >= 0


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UpstreamError("slow down", status=429, code="rate_limit_exceeded"), 429, "rate_limit_exceeded"),
        (InvalidRequest("bad", code="invalid_type"), 400, "invalid_type"),
        (UpstreamStreamBroken("cut"), 502, "upstream_stream_broken"),
    ],
)
async def test_records_an_error(error: Exception, status: int, code: str) -> None:
    """A SluicegateError is recorded with its status and code, then re-raised."""
    sink = ListSink()

    async def send(call: Call) -> Reply:
        raise error

    with pytest.raises(type(error)):
        await RecordEvents(send, sink)(make_call())
    [event] = sink.events
    assert (event.status, event.error_code, event.usage) == (status, code, None)


async def test_other_exceptions_are_not_recorded() -> None:
    """An exception that is not a SluicegateError propagates without an event."""
    sink = ListSink()

    async def send(call: Call) -> Reply:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await RecordEvents(send, sink)(make_call())
    assert sink.events == []


async def test_stream_is_recorded_when_it_ends() -> None:
    """A finished stream is recorded on close, as a 200 with usage and a time to first chunk."""
    sink = ListSink()
    reply = await RecordEvents(streaming([CONTENT, USAGE_EVENT, DONE]), sink)(make_call(stream=True))
    assert sink.events == []
    assert reply.stream is not None
    async for _ in reply.stream:
        pass
    [event] = sink.events
    assert (event.status, event.error_code, event.usage, event.stream) == (200, None, USAGE, True)
    assert event.ttft_s is not None


async def test_broken_stream_is_recorded_with_its_error() -> None:
    """A stream that breaks is recorded with the error's status and code."""
    sink = ListSink()
    reply = await RecordEvents(streaming([CONTENT]), sink)(make_call(stream=True))
    assert reply.stream is not None
    with pytest.raises(UpstreamStreamBroken):
        async for _ in reply.stream:
            pass
    [event] = sink.events
    assert (event.status, event.error_code) == (502, "upstream_stream_broken")


async def test_stream_error_from_upstream_keeps_its_status() -> None:
    """An upstream error raised mid-stream is recorded with its own status."""
    sink = ListSink()
    failure = UpstreamError("overloaded", status=503, code="overloaded")
    reply = await RecordEvents(streaming([CONTENT], failure), sink)(make_call(stream=True))
    assert reply.stream is not None
    with pytest.raises(UpstreamError):
        async for _ in reply.stream:
            pass
    [event] = sink.events
    assert (event.status, event.error_code) == (503, "overloaded")


async def test_abandoned_stream_is_a_client_disconnect() -> None:
    """A stream closed before [DONE] without an error is recorded as 499 client_disconnected."""
    sink = ListSink()
    reply = await RecordEvents(streaming([CONTENT, USAGE_EVENT, DONE]), sink)(make_call(stream=True))
    assert reply.stream is not None
    iterator = reply.stream.__aiter__()
    await anext(iterator)
    await iterator.aclose()
    [event] = sink.events
    assert (event.status, event.error_code) == (499, "client_disconnected")
    assert event.ttft_s is not None


async def test_unread_stream_closed_is_a_client_disconnect() -> None:
    """A stream closed without being read is a 499 with no time to first chunk."""
    sink = ListSink()
    reply = await RecordEvents(streaming([CONTENT, DONE]), sink)(make_call(stream=True))
    assert reply.stream is not None
    await reply.stream.aclose()
    await reply.stream.aclose()
    [event] = sink.events
    assert (event.status, event.error_code, event.ttft_s) == (499, "client_disconnected", None)


async def test_events_feed_counters() -> None:
    """RecordEvents over Counters counts successes and errors."""
    counters = Counters()

    async def ok(call: Call) -> Reply:
        return Reply(body=b"{}", usage=USAGE)

    async def fail(call: Call) -> Reply:
        raise UpstreamError("down", status=503)

    await RecordEvents(ok, counters)(make_call())
    with pytest.raises(UpstreamError):
        await RecordEvents(fail, counters)(make_call())
    snapshot = counters.snapshot()
    assert snapshot["requests"] == 2
    assert snapshot["errors"] == {"503": 1}
    assert snapshot["prompt_tokens"] == 10
