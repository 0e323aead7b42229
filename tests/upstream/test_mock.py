"""Tests for sluicegate.upstream.mock: the engine's replies, faults and call log, and its transport."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from sluicegate.config import MockBehaviour
from sluicegate.errors import UpstreamStreamBroken
from sluicegate.upstream.mock import MockEngine, MockReply, MockTransport, mock_answer
from sluicegate.upstream.transport import UpstreamRequest

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MESSAGES = [{"role": "user", "content": "Suggest an OKR"}]


def chat(engine: MockEngine, **extra: Any) -> MockReply:
    """The engine's reply to a chat request with ``extra`` fields."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    return engine.reply("POST", CHAT, orjson.dumps(body))


def embed(engine: MockEngine, **payload: Any) -> MockReply:
    """The engine's reply to an embeddings request."""
    return engine.reply("POST", EMBEDDINGS, orjson.dumps({"model": "e", **payload}))


def events_json(reply: MockReply) -> list[dict[str, Any]]:
    """The JSON payloads of a streamed reply, without [DONE]."""
    return [orjson.loads(event[len(b"data: ") :]) for event in reply.events[:-1]]


def content_events(reply: MockReply) -> list[str]:
    """The content pieces of a streamed reply, excluding the role-only first delta."""
    pieces = []
    for payload in events_json(reply)[1:]:
        for choice in payload["choices"]:
            if "content" in choice["delta"]:
                pieces.append(choice["delta"]["content"])
    return pieces


def error_of(reply: MockReply) -> dict[str, Any]:
    """The error object of an error reply."""
    error: dict[str, Any] = orjson.loads(reply.body)["error"]
    return error


# mock_answer


def test_mock_answer_is_deterministic() -> None:
    """The same prompt always gets the same answer."""
    assert mock_answer(MESSAGES) == mock_answer([dict(m) for m in MESSAGES])


def test_mock_answer_differs_across_prompts() -> None:
    """Different prompts get different answers."""
    answers = {mock_answer([{"role": "user", "content": f"prompt {i}"}]) for i in range(10)}
    assert len(answers) == 10


def test_mock_answer_word_count() -> None:
    """An explicit word count is honoured, and the answer reads as a sentence."""
    answer = mock_answer(MESSAGES, words=5)
    assert len(answer.split(" ")) == 5
    assert answer[0].isupper()
    assert answer.endswith(".")


# chat


def test_chat_reply_shape_and_usage() -> None:
    """A chat reply is an OpenAI chat.completion whose usage adds up."""
    reply = chat(MockEngine())
    body = orjson.loads(reply.body)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == mock_answer(MESSAGES)
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == len(choice["message"]["content"].split(" "))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0


def test_chat_id_is_stable_per_prompt() -> None:
    """The completion id depends only on the messages."""
    first = orjson.loads(chat(MockEngine()).body)["id"]
    again = orjson.loads(chat(MockEngine(), temperature=0.5).body)["id"]
    other = orjson.loads(
        MockEngine()
        .reply("POST", CHAT, orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "other"}]}))
        .body
    )["id"]
    assert first.startswith("chatcmpl-mock-")
    assert first == again
    assert first != other


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_truncates_with_length(field: str) -> None:
    """A token limit below the answer's length cuts it and finishes with "length"."""
    body = orjson.loads(chat(MockEngine(MockBehaviour(answer_words=10)), **{field: 3}).body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert len(body["choices"][0]["message"]["content"].split(" ")) == 3
    assert body["usage"]["completion_tokens"] == 3


def test_generous_token_limit_finishes_with_stop() -> None:
    """A limit above the answer's length changes nothing."""
    body = orjson.loads(chat(MockEngine(MockBehaviour(answer_words=10)), max_tokens=50).body)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 10


def test_answer_words_setting() -> None:
    """answer_words sets the length of every answer."""
    body = orjson.loads(chat(MockEngine(MockBehaviour(answer_words=4))).body)
    assert len(body["choices"][0]["message"]["content"].split(" ")) == 4


def test_latency_sets_the_delay() -> None:
    """A fixed latency becomes the reply's delay in seconds."""
    assert chat(MockEngine(MockBehaviour(latency=250))).delay_s == 0.25
    assert chat(MockEngine()).delay_s == 0


# streaming


def test_stream_events_frame_the_answer() -> None:
    """A stream opens with the role, carries the answer, finishes, and ends with [DONE]."""
    reply = chat(MockEngine(), stream=True)
    assert reply.streamed
    assert reply.headers["content-type"] == "text/event-stream"
    assert reply.events[-1] == b"data: [DONE]\n\n"
    assert all(event.startswith(b"data: ") and event.endswith(b"\n\n") for event in reply.events)
    payloads = events_json(reply)
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert "".join(content_events(reply)) == mock_answer(MESSAGES)


def test_stream_without_include_usage_has_no_usage() -> None:
    """Without stream_options.include_usage no event mentions usage."""
    reply = chat(MockEngine(), stream=True)
    assert all(b'"usage"' not in event for event in reply.events)


def test_stream_with_include_usage_adds_a_usage_chunk() -> None:
    """include_usage adds one usage-only chunk before [DONE]; the others carry usage null."""
    reply = chat(MockEngine(), stream=True, stream_options={"include_usage": True})
    payloads = events_json(reply)
    last = payloads[-1]
    assert last["choices"] == []
    assert (
        last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert all(p["usage"] is None for p in payloads[:-1])


def test_stream_usage_matches_the_whole_reply() -> None:
    """The usage chunk reports what the non-streamed reply reports."""
    streamed = events_json(chat(MockEngine(), stream=True, stream_options={"include_usage": True}))
    assert streamed[-1]["usage"] == orjson.loads(chat(MockEngine()).body)["usage"]


def test_stream_defaults_to_one_chunk_a_word() -> None:
    """By default each word is its own content chunk."""
    reply = chat(MockEngine(MockBehaviour(answer_words=7)), stream=True)
    assert len(content_events(reply)) == 7


@pytest.mark.parametrize("chunks", [1, 3, 5, 10, 50])
def test_chunks_setting_controls_content_chunks(chunks: int) -> None:
    """`chunks` sets the number of content chunks, capped at one a word; the text is unchanged."""
    reply = chat(MockEngine(MockBehaviour(answer_words=10, chunks=chunks)), stream=True)
    assert len(content_events(reply)) == min(chunks, 10)
    assert "".join(content_events(reply)) == mock_answer(MESSAGES, 10)


def test_chunks_setting_is_exact_when_it_does_not_divide() -> None:
    """chunks=6 over 10 words gives 6 content chunks."""
    reply = chat(MockEngine(MockBehaviour(answer_words=10, chunks=6)), stream=True)
    assert len(content_events(reply)) == 6


def test_stream_timing_and_drop_are_planned() -> None:
    """ttft, chunk interval and drop_after_chunks are carried on a streamed reply."""
    behaviour = MockBehaviour(ttft_ms=20, chunk_interval_ms=5, drop_after_chunks=2)
    reply = chat(MockEngine(behaviour), stream=True)
    assert (reply.delay_s, reply.interval_s, reply.drop_after) == (0.02, 0.005, 2)


def test_stream_truncated_by_max_tokens() -> None:
    """A token limit ends a stream with finish_reason "length"."""
    reply = chat(MockEngine(MockBehaviour(answer_words=10)), stream=True, max_tokens=2)
    assert events_json(reply)[-1]["choices"][0]["finish_reason"] == "length"
    assert len(content_events(reply)) == 2


# embeddings


def test_embedding_is_normalised() -> None:
    """An embedding is a unit vector of 16 floats by default."""
    body = orjson.loads(embed(MockEngine(), input="hello").body)
    vector = body["data"][0]["embedding"]
    assert len(vector) == 16
    assert math.sqrt(sum(x * x for x in vector)) == pytest.approx(1.0)
    assert body["object"] == "list"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_embedding_is_deterministic_per_text() -> None:
    """The same text embeds the same way; different texts differ."""
    a = orjson.loads(embed(MockEngine(), input="hello").body)["data"][0]["embedding"]
    b = orjson.loads(embed(MockEngine(), input="hello").body)["data"][0]["embedding"]
    c = orjson.loads(embed(MockEngine(), input="world").body)["data"][0]["embedding"]
    assert a == b
    assert a != c


def test_embedding_dimensions() -> None:
    """`dimensions` sets the vector length."""
    body = orjson.loads(embed(MockEngine(), input="hello", dimensions=64).body)
    assert len(body["data"][0]["embedding"]) == 64


def test_embedding_base64_decodes_to_the_float32_vector() -> None:
    """encoding_format=base64 packs the same vector as little-endian float32."""
    floats = orjson.loads(embed(MockEngine(), input="hello", dimensions=8).body)["data"][0]["embedding"]
    packed = orjson.loads(embed(MockEngine(), input="hello", dimensions=8, encoding_format="base64").body)
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert len(raw) == 8 * 4
    assert raw == struct.pack("<8f", *floats)


def test_embedding_list_input() -> None:
    """A list input gets one embedding per item, indexed in order."""
    engine = MockEngine()
    data = orjson.loads(embed(engine, input=["a", "b", "a"]).body)["data"]
    assert [item["index"] for item in data] == [0, 1, 2]
    assert data[0]["embedding"] == data[2]["embedding"] != data[1]["embedding"]
    assert data[1]["embedding"] == orjson.loads(embed(engine, input="b").body)["data"][0]["embedding"]


def test_embedding_token_id_input() -> None:
    """Token ids, as OpenAI takes them: one list of ids, or a list of such lists."""
    engine = MockEngine()
    one = orjson.loads(embed(engine, input=[1, 2, 3]).body)
    many = orjson.loads(embed(engine, input=[[1, 2, 3], [4, 8]]).body)
    assert one["usage"]["prompt_tokens"] == 3 and many["usage"]["prompt_tokens"] == 5
    assert [item["index"] for item in many["data"]] == [0, 1]
    assert many["data"][0]["embedding"] == one["data"][0]["embedding"] != many["data"][1]["embedding"]


@pytest.mark.parametrize(
    "payload", [{"input": []}, {"input": [1, "a"]}, {"input": [[1], []]}, {"input": [-1]}, {"input": 3}, {}]
)
def test_embedding_bad_input_is_400(payload: dict[str, Any]) -> None:
    """An input that is none of a string, strings, token ids or lists of token ids is a 400."""
    reply = embed(MockEngine(), **payload)
    assert reply.status == 400
    assert "input" in error_of(reply)["message"]


@pytest.mark.parametrize("dimensions", [5000, -1, "8"])
def test_embedding_bad_dimensions_is_400(dimensions: Any) -> None:
    """Dimensions outside 1-4096, or not an integer, are a 400."""
    reply = embed(MockEngine(), input="x", dimensions=dimensions)
    assert reply.status == 400
    assert "dimensions" in error_of(reply)["message"]


def test_embedding_zero_dimensions_is_400() -> None:
    """dimensions=0 is rejected."""
    assert embed(MockEngine(), input="x", dimensions=0).status == 400


# bad requests and routes


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "object"),
        (b'{"model": "m"}', "required"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "required"),
        (b'{"model": "m", "messages": []}', "empty array"),
    ],
)
def test_bad_chat_body_is_400(body: bytes, words: str) -> None:
    """Bad JSON or a missing model or messages is a 400 invalid_request_error."""
    reply = MockEngine().reply("POST", CHAT, body)
    assert reply.status == 400
    assert error_of(reply)["type"] == "invalid_request_error"
    assert words in error_of(reply)["message"]


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/nothing"), ("GET", CHAT), ("DELETE", EMBEDDINGS)])
def test_unknown_route_is_404(method: str, path: str) -> None:
    """A route the mock does not serve is a 404 naming it."""
    reply = MockEngine().reply(method, path, b"{}")
    assert reply.status == 404
    assert path in error_of(reply)["message"]


def test_models_route_lists_nothing() -> None:
    """GET /models answers an empty list."""
    reply = MockEngine().reply("GET", "/v1/models", b"")
    assert reply.status == 200
    assert orjson.loads(reply.body) == {"object": "list", "data": []}


# faults


def test_error_rate_one_always_fails_with_error_status() -> None:
    """error_rate=1 answers every request with error_status."""
    engine = MockEngine(MockBehaviour(error_rate=1, error_status=503, seed=1))
    replies = [chat(engine) for _ in range(5)]
    assert {r.status for r in replies} == {503}
    assert error_of(replies[0])["type"] == "server_error"


def test_rate_limit_rate_one_answers_429_with_retry_after() -> None:
    """rate_limit_rate=1 answers 429 with a retry-after header."""
    engine = MockEngine(MockBehaviour(rate_limit_rate=1, retry_after_s=7, seed=1))
    reply = chat(engine)
    assert reply.status == 429
    assert reply.headers["retry-after"] == "7"
    assert error_of(reply)["code"] == "rate_limit_exceeded"


def test_hang_rate_one_hangs() -> None:
    """hang_rate=1 plans a reply that never comes."""
    assert chat(MockEngine(MockBehaviour(hang_rate=1, seed=1))).hang
    assert not chat(MockEngine()).hang


def test_faults_apply_to_embeddings() -> None:
    """Faults are injected on embeddings as well as chat."""
    assert embed(MockEngine(MockBehaviour(error_rate=1, seed=0)), input="x").status == 500


def test_faults_are_reproducible_with_a_seed() -> None:
    """The same seed rolls the same faults; a partial rate gives both outcomes."""
    behaviour = MockBehaviour(error_rate=0.5, seed=42)
    engine_a, engine_b = MockEngine(behaviour), MockEngine(behaviour)
    a = [chat(engine_a).status for _ in range(40)]
    b = [chat(engine_b).status for _ in range(40)]
    assert a == b
    assert set(a) == {200, 500}


def test_assigning_behaviour_reseeds() -> None:
    """Assigning a behaviour restarts its dice."""
    behaviour = MockBehaviour(error_rate=0.5, seed=3)
    engine = MockEngine(behaviour)
    a = [chat(engine).status for _ in range(20)]
    engine.behaviour = behaviour
    assert [chat(engine).status for _ in range(20)] == a


def test_bad_json_is_400_even_with_faults() -> None:
    """A malformed request is rejected before any fault is rolled."""
    engine = MockEngine(MockBehaviour(error_rate=1, seed=1))
    assert engine.reply("POST", CHAT, b"nope").status == 400


# call log and memoisation


def test_calls_are_logged_in_order() -> None:
    """Each request is logged with its path and parsed body; non-JSON bodies log as None."""
    engine = MockEngine()
    chat(engine)
    engine.reply("POST", EMBEDDINGS, b"garbage")
    calls = engine.calls
    assert [c.path for c in calls] == [CHAT, EMBEDDINGS]
    assert calls[0].body is not None
    assert calls[0].body["messages"] == MESSAGES
    assert calls[1].body is None
    assert calls[0].at <= calls[1].at


def test_clear_calls_empties_the_log() -> None:
    """clear_calls forgets what was logged."""
    engine = MockEngine()
    chat(engine)
    engine.clear_calls()
    assert engine.calls == []
    chat(engine)
    assert len(engine.calls) == 1


def test_log_is_bounded() -> None:
    """The log keeps only the newest log_size calls."""
    engine = MockEngine(log_size=2)
    for i in range(3):
        chat(engine, user=str(i))
    assert [c.body["user"] for c in engine.calls if c.body] == ["1", "2"]


def test_memoised_replies_are_still_logged() -> None:
    """Repeating a request returns the remembered reply and still logs every call."""
    engine = MockEngine()
    first, second, third = chat(engine), chat(engine), chat(engine)
    assert first is second is third
    assert len(engine.calls) == 3


def test_error_replies_are_not_memoised_into_success() -> None:
    """A 400 is planned afresh each time and each call is logged."""
    engine = MockEngine()
    replies = [engine.reply("POST", CHAT, b"{}") for _ in range(2)]
    assert [r.status for r in replies] == [400, 400]
    assert len(engine.calls) == 2


def test_no_memo_with_fault_dice() -> None:
    """With faults configured each request is rolled again, not remembered."""
    engine = MockEngine(MockBehaviour(error_rate=0.5, seed=42))
    statuses = {chat(engine).status for _ in range(40)}
    assert statuses == {200, 500}


# MockTransport


def request(stream: bool = False, **extra: Any) -> UpstreamRequest:
    """An upstream chat request, optionally streamed."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}
    return UpstreamRequest("POST", "/chat/completions", orjson.dumps(body), stream)


async def test_transport_whole_reply() -> None:
    """A non-streamed request gets the engine's body."""
    engine = MockEngine()
    response = await MockTransport(engine).send(request())
    assert response.status == 200
    assert response.chunks is None
    assert response.body == chat(engine).body
    await response.release()


async def test_transport_stream_iterates_the_events() -> None:
    """A streamed request yields the engine's events one by one."""
    engine = MockEngine()
    response = await MockTransport(engine).send(request(stream=True))
    assert response.chunks is not None
    received = [chunk async for chunk in response.chunks]
    assert tuple(received) == chat(engine, stream=True).events


async def test_transport_stream_body_when_not_streaming() -> None:
    """A stream asked for in the body but not by the request comes back whole."""
    engine = MockEngine()
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    response = await MockTransport(engine).send(UpstreamRequest("POST", CHAT, orjson.dumps(body)))
    assert response.chunks is None
    assert response.body.endswith(b"data: [DONE]\n\n")


async def test_transport_error_is_whole_even_when_streaming() -> None:
    """An error reply to a stream request is a whole body."""
    engine = MockEngine(MockBehaviour(error_rate=1, seed=0))
    response = await MockTransport(engine).send(request(stream=True))
    assert response.status == 500
    assert response.chunks is None
    assert b"injected" in response.body


@pytest.mark.parametrize("after", [0, 1, 3])
async def test_transport_drop_after_chunks_breaks_the_stream(after: int) -> None:
    """drop_after_chunks=N yields N events, then raises UpstreamStreamBroken."""
    engine = MockEngine(MockBehaviour(drop_after_chunks=after))
    response = await MockTransport(engine).send(request(stream=True))
    assert response.chunks is not None
    received = []
    with pytest.raises(UpstreamStreamBroken):
        async for chunk in response.chunks:
            received.append(chunk)
    assert len(received) == after


async def test_transport_hang_is_cancelled_by_timeout() -> None:
    """A hanging reply waits until the caller's timeout cancels it."""
    transport = MockTransport(MockEngine(MockBehaviour(hang_rate=1, seed=0)))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await transport.send(request())
    await transport.aclose()


# tools and structured output

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}},
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
PLAN = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 1},
    },
    "required": ["title", "steps"],
    "additionalProperties": False,
    "$defs": {"Step": {"type": "object", "properties": {"done": {"type": "boolean"}}, "required": ["done"]}},
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "plan", "schema": PLAN, "strict": True}}
AFTER_TOOL = [
    *MESSAGES,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"},
]


def message_of(reply: MockReply) -> dict[str, Any]:
    """The message of a whole chat reply."""
    message: dict[str, Any] = orjson.loads(reply.body)["choices"][0]["message"]
    return message


def called(reply: MockReply) -> str | None:
    """The name of the tool a whole chat reply calls, or None."""
    calls = message_of(reply).get("tool_calls")
    return calls[0]["function"]["name"] if calls else None


def test_tool_call_reply_shape() -> None:
    """With tools offered the answer is one tool call, no content, finishing with "tool_calls"."""
    body = orjson.loads(chat(MockEngine(), tools=TOOLS).body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["role"] == "assistant"
    (call,) = choice["message"]["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    Draft202012Validator(WEATHER).validate(orjson.loads(call["function"]["arguments"]))


def test_tool_arguments_are_deterministic_per_prompt() -> None:
    """The same request gets the same arguments; another prompt gets other ones."""
    first = message_of(chat(MockEngine(), tools=TOOLS))["tool_calls"][0]
    again = message_of(chat(MockEngine(), tools=TOOLS))["tool_calls"][0]
    other = message_of(
        MockEngine().reply(
            "POST",
            CHAT,
            orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS}),
        )
    )["tool_calls"][0]
    assert first == again
    assert (first["id"], first["function"]["arguments"]) != (other["id"], other["function"]["arguments"])


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, "get_weather"),
        ("auto", "get_weather"),
        ("required", "get_weather"),
        ("none", None),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ],
)
def test_tool_choice_picks_the_tool(tool_choice: Any, expected: str | None) -> None:
    """auto and required call the first tool, a named choice calls that one, none calls nothing."""
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    reply = chat(MockEngine(), tools=TOOLS, **extra)
    assert called(reply) == expected
    if expected is None:
        assert message_of(reply)["content"] == mock_answer(MESSAGES)


def test_tool_without_parameters_gets_an_empty_object() -> None:
    """A function with no parameters schema is called with "{}"."""
    tool = {"type": "function", "function": {"name": "ping"}}
    assert message_of(chat(MockEngine(), tools=[tool]))["tool_calls"][0]["function"]["arguments"] == "{}"


def test_empty_tools_answer_prose() -> None:
    """An empty tools list is no tool at all."""
    assert message_of(chat(MockEngine(), tools=[]))["content"] == mock_answer(MESSAGES)


def test_after_a_tool_result_auto_answers_prose() -> None:
    """With the tool's result as the last message, auto answers the user in prose."""
    body = {"model": "m", "messages": AFTER_TOOL, "tools": TOOLS}
    reply = MockEngine().reply("POST", CHAT, orjson.dumps(body))
    assert called(reply) is None
    assert message_of(reply)["content"] == mock_answer(AFTER_TOOL)
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "stop"


def test_after_a_tool_result_required_still_calls() -> None:
    """A forced tool_choice calls a tool even after a tool result, as the real API does."""
    body = {"model": "m", "messages": AFTER_TOOL, "tools": TOOLS, "tool_choice": "required"}
    assert called(MockEngine().reply("POST", CHAT, orjson.dumps(body))) == "get_weather"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "name"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "function"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": PLAN}}}, "name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}, "schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"enum": []}},
                }
            },
            "enum",
        ),
    ],
)
def test_bad_tools_or_response_format_is_400(extra: dict[str, Any], words: str) -> None:
    """Malformed tools, tool_choice or response_format, or an unsatisfiable schema, is a 400."""
    reply = chat(MockEngine(), **extra)
    assert reply.status == 400
    assert error_of(reply)["type"] == "invalid_request_error"
    assert words in error_of(reply)["message"]


def test_json_object_answers_a_json_object() -> None:
    """response_format json_object answers content that parses as a JSON object of words."""
    reply = chat(MockEngine(), response_format={"type": "json_object"})
    content = orjson.loads(message_of(reply)["content"])
    assert isinstance(content, dict)
    assert content
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "stop"


def test_json_schema_answers_fitting_json() -> None:
    """response_format json_schema answers content that validates against the schema."""
    content = orjson.loads(message_of(chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT))["content"])
    Draft202012Validator(PLAN).validate(content)


def test_text_response_format_answers_prose() -> None:
    """response_format text changes nothing."""
    assert message_of(chat(MockEngine(), response_format={"type": "text"}))["content"] == mock_answer(
        MESSAGES
    )


def test_tool_call_wins_over_response_format() -> None:
    """With both, a chosen tool is called; after its result the answer follows the format."""
    assert called(chat(MockEngine(), tools=TOOLS, response_format=JSON_SCHEMA_FORMAT)) == "get_weather"
    body = {"model": "m", "messages": AFTER_TOOL, "tools": TOOLS, "response_format": JSON_SCHEMA_FORMAT}
    content = message_of(MockEngine().reply("POST", CHAT, orjson.dumps(body)))["content"]
    Draft202012Validator(PLAN).validate(orjson.loads(content))


def test_json_usage_counts_four_characters_a_token() -> None:
    """JSON and tool arguments count about one token per four characters; the schema counts as prompt."""
    body = orjson.loads(chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT).body)
    content = body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == math.ceil(len(content) / 4)
    assert body["usage"]["prompt_tokens"] > orjson.loads(chat(MockEngine()).body)["usage"]["prompt_tokens"]
    tool_body = orjson.loads(chat(MockEngine(), tools=TOOLS).body)
    arguments = tool_body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert tool_body["usage"]["completion_tokens"] == math.ceil(len(arguments) / 4)


def test_token_limit_cuts_json_with_length() -> None:
    """A token limit cuts JSON mid-way, as a real model's would be, and finishes with "length"."""
    whole = message_of(chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT))["content"]
    body = orjson.loads(chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT, max_tokens=2).body)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == whole[:8]
    assert body["usage"]["completion_tokens"] == 2


def tool_deltas(reply: MockReply) -> list[dict[str, Any]]:
    """The deltas of a streamed reply, one a chunk, without the usage chunk."""
    return [payload["choices"][0]["delta"] for payload in events_json(reply) if payload["choices"]]


def test_stream_tool_call_chunks() -> None:
    """A streamed tool call opens with its id and name, sends argument pieces, and finishes "tool_calls"."""
    engine = MockEngine()
    whole = message_of(chat(engine, tools=TOOLS))["tool_calls"][0]
    reply = chat(engine, tools=TOOLS, stream=True)
    deltas = tool_deltas(reply)
    assert deltas[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"index": 0, **whole, "function": {"name": "get_weather", "arguments": ""}}],
    }
    middle = deltas[1:-1]
    assert len(middle) > 1
    assert all(
        list(d) == ["tool_calls"] and list(d["tool_calls"][0]) == ["index", "function"] for d in middle
    )
    assert (
        "".join(d["tool_calls"][0]["function"]["arguments"] for d in middle) == whole["function"]["arguments"]
    )
    assert deltas[-1] == {}
    assert events_json(reply)[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_tool_call_honours_chunks_and_usage() -> None:
    """`chunks` sets the number of argument chunks, and the usage matches the whole reply."""
    engine = MockEngine(MockBehaviour(chunks=3))
    reply = chat(engine, tools=TOOLS, stream=True, stream_options={"include_usage": True})
    assert len(tool_deltas(reply)) == 1 + 3 + 1
    assert events_json(reply)[-1]["usage"] == orjson.loads(chat(engine, tools=TOOLS).body)["usage"]


def test_stream_json_content_in_pieces() -> None:
    """Streamed JSON content arrives in several pieces that join to the whole answer."""
    whole = message_of(chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT))["content"]
    reply = chat(MockEngine(), response_format=JSON_SCHEMA_FORMAT, stream=True)
    assert events_json(reply)[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(content_events(reply)) > 1
    assert "".join(content_events(reply)) == whole
    assert events_json(reply)[-1]["choices"][0]["finish_reason"] == "stop"
