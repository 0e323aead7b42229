"""The cache's stream helpers: the usage-only event is withheld from a client that did not ask
for it, whatever the spacing of the upstream's JSON; a stream that has ended is joined by no one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sluicegate.cache.answers import Flight
from sluicegate.cache.streams import StreamFlight, strip_usage

CONTENT = b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}'


@pytest.mark.parametrize(
    "usage_only",
    [
        b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}',
        b'data: {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}',
        b'data: {"id": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 2}}',
    ],
)
def test_the_usage_only_event_is_withheld_however_it_is_spaced(usage_only: bytes) -> None:
    blob = b"\n\n".join([CONTENT, usage_only, b"data: [DONE]", b""])
    assert strip_usage(blob) == b"\n\n".join([CONTENT, b"data: [DONE]", b""])


def test_an_event_with_choices_and_usage_is_kept() -> None:
    both = b'data: {"id": "x", "choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 1}}\n\n'
    assert strip_usage(both) == both


async def test_a_stream_that_sent_done_is_joined_by_no_one_while_its_upstream_closes() -> None:
    """Once ``[DONE]`` has gone out, a new identical request is too late to read the stream
    (its answer may be one the feature does not store): it gets no reader, even though the
    upstream has not closed yet."""
    closing = asyncio.Event()

    class Upstream:
        usage = None
        done = False
        error = None
        first_chunk_at = None
        deltas = 0

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield CONTENT + b"\n\n"
            await asyncio.sleep(0)
            yield b"data: [DONE]\n\n"
            await closing.wait()  # the connection is still closing

    async def on_end(_: StreamFlight) -> None:
        return None

    flight = Flight()
    live = StreamFlight(Upstream(), on_end)  # type: ignore[arg-type]
    flight.start(live)
    assert flight.join_now(False) is not None  # under way: joined
    for _ in range(20):
        await asyncio.sleep(0)
    assert live.over and not live.finished
    assert flight.join_now(False) is None
    closing.set()
    await asyncio.sleep(0)
