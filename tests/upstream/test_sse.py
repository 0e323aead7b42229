"""Tests for sluicegate.upstream.sse: relaying a server-sent event stream chunk by chunk."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.calls import Usage
from sluicegate.errors import UpstreamStreamBroken, UpstreamTimeout
from sluicegate.upstream.sse import SseRelay, error_event

USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def event(payload: object) -> bytes:
    """One SSE data event."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def delta(content: str) -> bytes:
    """A content chunk, with usage null as OpenAI sends when usage is requested."""
    return event(
        {"object": "chat.completion.chunk", "choices": [{"delta": {"content": content}}], "usage": None}
    )


HEAD = [
    event({"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None}),
    delta("Ship"),
    delta(" it"),
    event({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": None}),
]
USAGE_EVENT = event({"choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"
STREAM = [*HEAD, USAGE_EVENT, DONE]
WITHOUT_USAGE = b"".join([*HEAD, DONE])


class Release:
    """A release callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


async def chunks_of(parts: Iterable[bytes], error: BaseException | None = None) -> AsyncIterator[bytes]:
    """An upstream body arriving as ``parts``, optionally failing at the end."""
    for part in parts:
        yield part
    if error is not None:
        raise error


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets."""
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in itertools.pairwise(points)]


async def relay_all(parts: Iterable[bytes], *, strip_usage: bool) -> tuple[bytes, SseRelay, Release]:
    """Relay ``parts`` to the end; return the joined output, the relay and its release."""
    release = Release()
    relay = SseRelay(chunks_of(parts), release, strip_usage=strip_usage)
    out = b"".join([piece async for piece in relay])
    return out, relay, release


async def test_whole_events_pass_through_with_usage_stripped() -> None:
    """With strip_usage the usage-only event is withheld and everything else passes unchanged."""
    out, relay, _ = await relay_all(STREAM, strip_usage=True)
    assert out == WITHOUT_USAGE
    assert relay.usage == Usage(11, 3, 14)
    assert relay.done
    assert relay.error is None


async def test_usage_kept_when_not_stripping() -> None:
    """Without strip_usage the output is the input, byte for byte, and usage is still noted."""
    out, relay, _ = await relay_all(STREAM, strip_usage=False)
    assert out == b"".join(STREAM)
    assert relay.usage == Usage(11, 3, 14)


@pytest.mark.parametrize("strip_usage", [True, False])
async def test_awkward_splits(strip_usage: bool) -> None:
    """Chunks cut mid-line, mid-event and mid-"data:" relay the same bytes."""
    data = b"".join(STREAM)
    cuts = [3, 7, len(HEAD[0]) - 1, len(HEAD[0]) + 1, data.index(b"[DONE]") + 2, data.index(b"usage") + 1]
    out, relay, _ = await relay_all(split(data, cuts), strip_usage=strip_usage)
    assert out == (WITHOUT_USAGE if strip_usage else data)
    assert relay.usage == Usage(11, 3, 14)
    assert relay.done


async def test_one_byte_at_a_time() -> None:
    """A stream arriving one byte at a time is relayed intact."""
    data = b"".join(STREAM)
    out, relay, _ = await relay_all([data[i : i + 1] for i in range(len(data))], strip_usage=True)
    assert out == WITHOUT_USAGE
    assert relay.done


async def test_events_are_forwarded_as_soon_as_complete() -> None:
    """Each complete event is yielded before the next chunk is read."""
    relay = SseRelay(chunks_of([HEAD[0], HEAD[1][:5], HEAD[1][5:] + DONE]), Release(), strip_usage=True)
    pieces = [piece async for piece in relay]
    assert pieces == [HEAD[0], HEAD[1] + DONE]


async def test_no_usage_means_none() -> None:
    """A stream with no usage event leaves usage None."""
    _, relay, _ = await relay_all([*HEAD, DONE], strip_usage=True)
    assert relay.usage is None
    assert relay.done


async def test_usage_with_choices_is_kept() -> None:
    """An event carrying both choices and usage is recorded but never withheld."""
    both = event({"choices": [{"delta": {"content": "x"}}], "usage": USAGE})
    out, relay, _ = await relay_all([both, DONE], strip_usage=True)
    assert out == both + DONE
    assert relay.usage == Usage(11, 3, 14)


async def test_crlf_is_normalised() -> None:
    """CRLF line endings come out as LF, with the usage event still found and stripped."""
    data = b"".join(STREAM).replace(b"\n", b"\r\n")
    out, relay, _ = await relay_all([data], strip_usage=True)
    assert out == WITHOUT_USAGE
    assert relay.usage == Usage(11, 3, 14)
    assert relay.done


async def test_crlf_split_across_chunks_is_normalised() -> None:
    """A CRLF cut between two chunks is normalised like any other."""
    data = b"".join(STREAM).replace(b"\n", b"\r\n")
    cuts = [i + 1 for i in range(len(data)) if data[i : i + 2] == b"\r\n"]
    out, relay, _ = await relay_all(split(data, cuts), strip_usage=True)
    assert out == WITHOUT_USAGE
    assert relay.usage == Usage(11, 3, 14)


async def test_last_event_without_blank_line_is_tolerated() -> None:
    """A final [DONE] missing its blank line still counts."""
    out, relay, _ = await relay_all([*HEAD, b"data: [DONE]"], strip_usage=True)
    assert relay.done
    assert out == b"".join(HEAD) + DONE


async def test_missing_done_raises_stream_broken() -> None:
    """A stream that ends without [DONE] raises UpstreamStreamBroken and sets .error."""
    release = Release()
    relay = SseRelay(chunks_of(HEAD), release, strip_usage=True)
    received = []
    with pytest.raises(UpstreamStreamBroken):
        async for piece in relay:
            received.append(piece)
    assert b"".join(received) == b"".join(HEAD)
    assert isinstance(relay.error, UpstreamStreamBroken)
    assert not relay.done
    assert release.calls == 1


async def test_upstream_error_is_kept() -> None:
    """A sluicegate error raised by the upstream iterator is re-raised and recorded."""
    relay = SseRelay(chunks_of(HEAD[:1], UpstreamTimeout("too slow")), Release(), strip_usage=True)
    with pytest.raises(UpstreamTimeout):
        async for _ in relay:
            pass
    assert isinstance(relay.error, UpstreamTimeout)


async def test_on_close_runs_once_after_the_end() -> None:
    """Close callbacks run once, in order, after the stream ends, and release runs once."""
    release = Release()
    relay = SseRelay(chunks_of(STREAM), release, strip_usage=True)
    seen: list[tuple[str, bool]] = []
    relay.on_close(lambda r: seen.append(("first", r.done)))
    relay.on_close(lambda r: seen.append(("second", r.done)))
    async for _ in relay:
        assert seen == []
    await relay.aclose()
    assert seen == [("first", True), ("second", True)]
    assert release.calls == 1


async def test_on_close_runs_on_error() -> None:
    """Close callbacks run when the stream breaks, with the error already set."""
    relay = SseRelay(chunks_of(HEAD), Release(), strip_usage=True)
    errors: list[object] = []
    relay.on_close(lambda r: errors.append(r.error))
    with pytest.raises(UpstreamStreamBroken):
        async for _ in relay:
            pass
    assert len(errors) == 1
    assert isinstance(errors[0], UpstreamStreamBroken)


async def test_abandoned_stream_closes_once() -> None:
    """A client that stops reading early still releases and closes, once."""
    release = Release()
    relay = SseRelay(chunks_of(STREAM), release, strip_usage=True)
    closed: list[bool] = []
    relay.on_close(lambda r: closed.append(r.done))
    iterator = relay.__aiter__()
    assert await anext(iterator) == HEAD[0]
    await iterator.aclose()
    await relay.aclose()
    assert closed == [False]
    assert release.calls == 1
    assert relay.error is None


async def test_aclose_without_iterating() -> None:
    """aclose on an untouched relay releases the upstream and runs callbacks."""
    release = Release()
    relay = SseRelay(chunks_of(STREAM), release, strip_usage=True)
    closed: list[SseRelay] = []
    relay.on_close(closed.append)
    await relay.aclose()
    await relay.aclose()
    assert closed == [relay]
    assert release.calls == 1


async def test_first_chunk_time_is_noted() -> None:
    """first_chunk_at is unset before reading and set once data arrives."""
    relay = SseRelay(chunks_of(STREAM), Release(), strip_usage=True)
    assert relay.first_chunk_at is None
    async for _ in relay:
        pass
    assert relay.first_chunk_at is not None


def test_error_event_is_an_sse_event() -> None:
    """error_event wraps the error's OpenAI body as one data event."""
    raw = error_event(UpstreamStreamBroken("cut"))
    assert raw.startswith(b"data: ")
    assert raw.endswith(b"\n\n")
    assert orjson.loads(raw[6:])["error"]["code"] == "upstream_stream_broken"


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(b"".join(STREAM))), max_size=30),
    strip_usage=st.booleans(),
)
def test_any_split_gives_the_same_output(cuts: list[int], strip_usage: bool) -> None:
    """However the upstream body is cut into chunks, the relayed bytes and usage are the same."""
    data = b"".join(STREAM)
    out, relay, release = asyncio.run(relay_all(split(data, cuts), strip_usage=strip_usage))
    assert out == (WITHOUT_USAGE if strip_usage else data)
    assert relay.usage == Usage(11, 3, 14)
    assert relay.done
    assert release.calls == 1
