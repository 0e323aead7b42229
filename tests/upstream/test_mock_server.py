"""Tests for sluicegate.upstream.mock_server: the mock provider over real HTTP, in a thread."""

from __future__ import annotations

import asyncio
import datetime
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import openai
import orjson
import pydantic
import pytest

from sluicegate.testing import MockUpstream
from sluicegate.upstream.mock import mock_answer

MESSAGES = [{"role": "user", "content": "Suggest an OKR"}]


def chat_body(**extra: Any) -> dict[str, Any]:
    """A minimal chat request."""
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}


def control(upstream: MockUpstream, route: str) -> str:
    """The URL of a control route, outside /v1."""
    return upstream.url.removesuffix("/v1") + route


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session, closed after the test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def test_chat_over_http(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """A chat request gets the mock's JSON answer with a content-length."""
    async with client.post(upstream.url + "/chat/completions", json=chat_body()) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["content-length"] == str(len(await response.read()))
        body = await response.json()
    assert body["choices"][0]["message"]["content"] == mock_answer(MESSAGES)


async def test_embeddings_over_http(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """An embeddings request gets one vector per input."""
    payload = {"model": "e", "input": ["a", "b"], "dimensions": 4}
    async with client.post(upstream.url + "/embeddings", json=payload) as response:
        body = await response.json()
    assert [len(item["embedding"]) for item in body["data"]] == [4, 4]


async def test_stream_is_chunked_and_complete(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """A stream arrives chunked, with every event, ending with [DONE]."""
    async with client.post(upstream.url + "/chat/completions", json=chat_body(stream=True)) as response:
        assert response.status == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"] == "text/event-stream"
        body = await response.read()
    expected = upstream.engine.reply("POST", "/v1/chat/completions", orjson.dumps(chat_body(stream=True)))
    # The same events, but for the second they were made in (the two may fall either side of one).
    assert _any_second(body) == _any_second(b"".join(expected.events))
    assert body.endswith(b"data: [DONE]\n\n")


def _any_second(events: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', events)


async def test_keep_alive_serves_requests_in_turn(
    upstream: MockUpstream, client: aiohttp.ClientSession
) -> None:
    """Several requests, streamed and whole, are answered in turn on pooled connections."""
    for stream in (True, False, True):
        async with client.post(upstream.url + "/chat/completions", json=chat_body(stream=stream)) as response:
            assert response.status == 200
            assert (await response.read()).strip()
    assert len(upstream.calls) == 3


async def test_error_reply_over_http(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """An injected 429 arrives with its retry-after header and OpenAI error body."""
    upstream.behave(rate_limit_rate=1.0, retry_after_s=3, seed=0)
    async with client.post(upstream.url + "/chat/completions", json=chat_body()) as response:
        assert response.status == 429
        assert response.headers["retry-after"] == "3"
        body = await response.json()
    assert body["error"]["type"] == "rate_limit_error"


async def test_unknown_openai_route_is_404(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """A route the mock does not serve is a 404."""
    async with client.post(upstream.url + "/nothing", json={}) as response:
        assert response.status == 404


async def test_health(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """GET /_mock/health answers ok."""
    async with client.get(control(upstream, "/_mock/health")) as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_calls_get_and_delete(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """/_mock/calls lists the requests received, and DELETE clears them."""
    async with client.post(upstream.url + "/chat/completions", json=chat_body(user="u1")):
        pass
    async with client.get(control(upstream, "/_mock/calls")) as response:
        calls = await response.json()
    assert [c["path"] for c in calls] == ["/v1/chat/completions"]
    assert calls[0]["body"]["user"] == "u1"
    async with client.delete(control(upstream, "/_mock/calls")) as response:
        assert response.status == 200
    async with client.get(control(upstream, "/_mock/calls")) as response:
        assert await response.json() == []
    assert upstream.calls == []


async def test_control_routes_are_not_logged(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """Control requests do not show up in the call log."""
    async with client.get(control(upstream, "/_mock/health")):
        pass
    assert upstream.calls == []


async def test_behaviour_get_and_put(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """PUT /_mock/behaviour replaces the behaviour; GET reads it back; the mock then obeys it."""
    async with client.get(control(upstream, "/_mock/behaviour")) as response:
        assert (await response.json())["error_rate"] == 0
    async with client.put(
        control(upstream, "/_mock/behaviour"), json={"error_rate": 1.0, "error_status": 503, "seed": 1}
    ) as response:
        assert response.status == 200
        assert (await response.json())["error_status"] == 503
    async with client.get(control(upstream, "/_mock/behaviour")) as response:
        assert (await response.json())["error_rate"] == 1.0
    assert upstream.engine.behaviour.error_status == 503
    async with client.post(upstream.url + "/chat/completions", json=chat_body()) as response:
        assert response.status == 503


@pytest.mark.parametrize("body", [b'{"error_rate": 2}', b'{"nonsense": 1}', b"not json"])
async def test_behaviour_put_invalid_is_400(
    upstream: MockUpstream, client: aiohttp.ClientSession, body: bytes
) -> None:
    """An invalid behaviour is refused with 400 and the old one kept."""
    before = upstream.engine.behaviour
    async with client.put(control(upstream, "/_mock/behaviour"), data=body) as response:
        assert response.status == 400
        assert "error" in await response.json()
    assert upstream.engine.behaviour is before


async def test_unknown_control_route_is_404(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """An unknown /_mock/ route is a 404."""
    async with client.get(control(upstream, "/_mock/nothing")) as response:
        assert response.status == 404
        assert "control route" in (await response.json())["error"]


async def test_drop_after_chunks_cuts_the_body(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """drop_after_chunks closes the connection mid-stream; the client sees an incomplete body."""
    upstream.behave(drop_after_chunks=2)
    async with client.post(upstream.url + "/chat/completions", json=chat_body(stream=True)) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_latency_still_answers(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """With a latency, whole replies still arrive complete."""
    upstream.behave(latency=20)
    async with client.post(upstream.url + "/chat/completions", json=chat_body()) as response:
        assert response.status == 200
        body = await response.json()
    assert body["choices"][0]["message"]["content"] == mock_answer(MESSAGES)


async def test_stream_timing_still_answers(upstream: MockUpstream, client: aiohttp.ClientSession) -> None:
    """With a time to first chunk and a chunk interval, a stream still arrives whole."""
    upstream.behave(ttft_ms=10, chunk_interval_ms=1, chunks=3)
    async with client.post(upstream.url + "/chat/completions", json=chat_body(stream=True)) as response:
        body = await response.read()
    assert body.count(b"data: ") == 1 + 3 + 1 + 1
    assert body.endswith(b"data: [DONE]\n\n")


async def test_malformed_http_is_400(upstream: MockUpstream) -> None:
    """Bytes that are not HTTP get a 400 and a closed connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 400")


# the real openai SDK: structured output and tools


class Step(pydantic.BaseModel):
    """One step of a plan."""

    action: str
    done: bool


class Plan(pydantic.BaseModel):
    """A structured answer with a nested model, a list, bounds and a date."""

    title: str
    steps: list[Step]
    effort_days: int = pydantic.Field(ge=1, le=10)
    due: datetime.date
    owner: str | None


class GetWeather(pydantic.BaseModel):
    """Get the weather for a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


def completions(client: openai.OpenAI) -> Any:
    """The SDK's chat completions with parse and stream: out of beta since openai 1.92."""
    return (
        client.chat.completions if hasattr(client.chat.completions, "parse") else client.beta.chat.completions
    )


def test_openai_sdk_parses_structured_output(upstream: MockUpstream) -> None:
    """The SDK's parse with a pydantic response_format gets a parsed, valid model back."""
    with openai.OpenAI(base_url=upstream.url, api_key="anything", max_retries=0) as client:
        completion = completions(client).parse(model="gpt-4o-mini", messages=MESSAGES, response_format=Plan)
    plan = completion.choices[0].message.parsed
    assert isinstance(plan, Plan)
    assert plan.steps
    assert upstream.calls[-1].body is not None
    assert upstream.calls[-1].body["response_format"]["type"] == "json_schema"


def test_openai_sdk_parses_a_tool_call(upstream: MockUpstream) -> None:
    """A strict pydantic_function_tool is called with arguments the SDK parses into the model."""
    with openai.OpenAI(base_url=upstream.url, api_key="anything", max_retries=0) as client:
        completion = completions(client).parse(
            model="gpt-4o-mini", messages=MESSAGES, tools=[openai.pydantic_function_tool(GetWeather)]
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_openai_sdk_streams_a_tool_call(upstream: MockUpstream) -> None:
    """The SDK's stream helper assembles the streamed tool call into the same parsed arguments."""
    tools = [openai.pydantic_function_tool(GetWeather)]
    with openai.OpenAI(base_url=upstream.url, api_key="anything", max_retries=0) as client:
        whole = completions(client).parse(model="gpt-4o-mini", messages=MESSAGES, tools=tools)
        with completions(client).stream(model="gpt-4o-mini", messages=MESSAGES, tools=tools) as stream:
            streamed = stream.get_final_completion()
    (call,) = streamed.choices[0].message.tool_calls or []
    assert streamed.choices[0].finish_reason == "tool_calls"
    assert call.function.parsed_arguments == whole.choices[0].message.tool_calls[0].function.parsed_arguments
