"""Cached streams: a live upstream stream shared by every identical request, and a stored one replayed.

A `StreamFlight` reads the upstream stream in a task of its own and keeps what arrived, so
that the leader's client and any late joiner in the same process each read it from the start,
as it arrives. When it completes with ``[DONE]`` the flight hands its events to the cache; a
stream that failed or was cut is never stored. When every reader has gone before the end,
the upstream request is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from ..calls import ReplyStream, Usage
from ..errors import SluicegateError, UpstreamStreamBroken
from .entry import Entry
from .forms import DONE, synthesise, usage_event

__all__ = ["FlightReader", "ReplayStream", "StreamFlight", "strip_usage"]

_USAGE_MARKS = (b'"usage":{', b'"usage": {')
_DONE = b"data: [DONE]"


def strip_usage(blob: bytes) -> bytes:
    """``blob`` without its usage-only events, for a client that did not ask for usage."""
    if not any(mark in blob for mark in _USAGE_MARKS):
        return blob
    return b"\n\n".join(event for event in blob.split(b"\n\n") if not _usage_only(event))


def _usage_only(event: bytes) -> bool:
    """Whether the SSE ``event`` carries usage and no choices (however its JSON is spaced)."""
    if not any(mark in event for mark in _USAGE_MARKS):
        return False
    try:
        payload = orjson.loads(event.partition(b"data:")[2])
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("usage") is not None and not payload.get("choices")


class _Ending:
    """The shared end-of-stream bookkeeping of the stream classes here."""

    usage: Usage | None = None
    done = False
    error: SluicegateError | None = None
    first_chunk_at: float | None = None
    deltas = 0

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Any], None]] = []
        self._closed = False

    def on_close(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            for callback in self._callbacks:
                callback(self)


class StreamFlight:
    """Reads one upstream stream for every reader; calls ``on_end(flight)`` once it has ended."""

    def __init__(self, upstream: ReplyStream, on_end: Callable[[StreamFlight], Awaitable[None]]) -> None:
        self._upstream = upstream
        self._on_end = on_end
        self.blobs: list[bytes] = []
        self.times: list[float] = []
        self.finished = False
        self.completed = False
        self.error: SluicegateError | None = None
        self._changed = asyncio.Event()
        self._readers = 0
        self.coming: Callable[[], int] = lambda: 0  # readers still to join (see `Flight.start`)
        self._task = asyncio.get_running_loop().create_task(self._pump())

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported."""
        return self._upstream.usage

    @property
    def over(self) -> bool:
        """Whether the stream has ended, or has sent its ``[DONE]`` (its upstream may still be
        closing): too late to join (a request now finds the entry, or makes its own call)."""
        return self.finished or (bool(self.blobs) and _DONE in self.blobs[-1])

    async def _pump(self) -> None:
        try:
            async for blob in self._upstream:
                self.blobs.append(blob)
                self.times.append(time.perf_counter())
                self._wake()
            self.completed = True
        except SluicegateError as exc:
            self.error = exc
        except asyncio.CancelledError:
            self.error = UpstreamStreamBroken("every client left before the stream ended")
        finally:
            self.finished = True
            self._wake()
            await self._on_end(self)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def reader(self, *, leader: bool, wants_usage: bool) -> FlightReader:
        """A stream that reads this flight from its start."""
        self._readers += 1
        return FlightReader(self, leader=leader, wants_usage=wants_usage)

    def left(self, saw_done: bool) -> None:
        """A reader stopped; cancel the upstream when it was the last and left before ``[DONE]``."""
        self._readers -= 1
        if self._readers <= 0 and not self.finished and not saw_done and not self.coming():
            self._task.cancel()

    async def wait(self) -> None:
        """Wait for more to arrive (or the end)."""
        await self._changed.wait()

    async def join(self) -> None:
        """Wait for the flight's end and its bookkeeping (tests, shutdown)."""
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class FlightReader(_Ending):
    """One client's view of a `StreamFlight`."""

    def __init__(self, flight: StreamFlight, *, leader: bool, wants_usage: bool) -> None:
        super().__init__()
        self._flight = flight
        self._leader = leader
        self._wants_usage = wants_usage
        self._left = False
        self._saw_done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        flight = self._flight
        index = 0
        try:
            while True:
                while index < len(flight.blobs):
                    blob = flight.blobs[index]
                    index += 1
                    if self.first_chunk_at is None:
                        self.first_chunk_at = time.perf_counter()
                    out = blob if self._wants_usage else strip_usage(blob)
                    if _DONE in blob:
                        self._end()
                    if out:
                        yield out
                if flight.finished:
                    break
                await flight.wait()
            if flight.error is not None and not self._saw_done:
                self.error = flight.error
                raise flight.error
            self._end()
        finally:
            await self.aclose()

    def _end(self) -> None:
        self._saw_done = self.done = True
        if self._leader:
            self.usage = self._flight.usage

    async def aclose(self) -> None:
        if not self._left:
            self._left = True
            self._flight.left(self._saw_done)
        self._close()


class ReplayStream(_Ending):
    """A stored answer replayed as SSE: its original events, or events made from its body.

    Without pacing, the whole stream goes out as one write; with it, each event waits for its
    original offset from the first.
    """

    def __init__(self, entry: Entry, *, wants_usage: bool, pace: bool) -> None:
        super().__init__()
        self._entry = entry
        self._wants_usage = wants_usage
        self._pace = pace and entry.offsets is not None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        entry = self._entry
        events = entry.events if entry.events is not None else synthesise(entry.body)
        tail = [DONE]
        if self._wants_usage and entry.usage is not None:
            tail.insert(0, usage_event(entry.body, entry.usage))
        self.first_chunk_at = time.perf_counter()
        try:
            if self._pace and entry.offsets is not None:
                started = time.perf_counter()
                for event, offset in zip(events, entry.offsets, strict=False):
                    delay = offset - (time.perf_counter() - started)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    yield event
                self.done = True
                yield b"".join(tail)
            else:
                self.done = True
                yield b"".join((*events, *tail))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._close()
