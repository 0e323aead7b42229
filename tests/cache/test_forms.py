"""Tests for sluicegate.cache.forms: a chat answer as one body and as SSE events, both ways."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.cache.forms import DONE, assemble, content_events, synthesise, usage_event, usage_json
from sluicegate.calls import Usage
from sluicegate.config import MockBehaviour
from sluicegate.upstream.mock import MockEngine

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Draft an OKR for the support team"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_okr",
            "parameters": {
                "type": "object",
                "properties": {"team": {"type": "string"}, "quarter": {"type": "integer"}},
                "required": ["team", "quarter"],
            },
        },
    }
]
# The three kinds of answer the mock gives: prose, a tool call, and JSON content.
SHAPES: dict[str, dict[str, Any]] = {
    "prose": {},
    "tool-call": {"tools": TOOLS, "tool_choice": "required"},
    "json": {"response_format": {"type": "json_object"}},
}


def mock_chat(stream: bool, usage: bool = False, **extra: Any) -> tuple[bytes, tuple[bytes, ...]]:
    """The mock's plain body and stream events for the same request."""
    engine = MockEngine(MockBehaviour(answer_words=23))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    reply = engine.reply("POST", CHAT, orjson.dumps(body))
    assert reply.status == 200, reply.body
    return reply.body, reply.events


def parsed(event: bytes) -> dict[str, Any]:
    """The JSON of one ``data:`` event."""
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    value: dict[str, Any] = orjson.loads(event[6:])
    return value


# content_events


def test_content_events_drop_done_and_the_usage_only_event() -> None:
    """[DONE] and the usage-only chunk go; the chunks with `"usage": null` and every choice stay."""
    _, events = mock_chat(stream=True, usage=True)
    assert events[-1] == DONE
    assert parsed(events[-2])["choices"] == []
    kept, done, usage = content_events(b"".join(events))
    assert done and usage == parsed(events[-2])["usage"]
    assert kept == list(events[:-2])
    assert all(b'"usage":null' in event for event in kept)


def test_content_events_without_done_report_it() -> None:
    """A stream cut before [DONE] says so, and keeps what it has."""
    _, events = mock_chat(stream=True)
    kept, done, _ = content_events(b"".join(events[:3]))
    assert not done
    assert kept == list(events[:3])


@pytest.mark.parametrize("done", [b"data: [DONE]", b"data:[DONE]", b"  data: [DONE]  "])
def test_content_events_recognise_done_spellings(done: bytes) -> None:
    """[DONE] is recognised with or without the space, and surrounding blanks."""
    kept, seen, _ = content_events(b'data: {"choices":[]}\n\n' + done + b"\n\n")
    assert seen
    assert kept == [b'data: {"choices":[]}\n\n']


def test_content_events_split_across_blobs_and_blank_lines() -> None:
    """Blank fragments are ignored and every event comes back framed with one blank line."""
    data = b'\n\ndata: {"a":1}\n\n\n\n: comment\n\ndata: {"usage":{"total_tokens":1},"choices":[{"x":1}]}\n\n'
    kept, done, _ = content_events(data)
    assert not done
    assert kept == [
        b'data: {"a":1}\n\n',
        b": comment\n\n",
        b'data: {"usage":{"total_tokens":1},"choices":[{"x":1}]}\n\n',
    ]


# assemble


@pytest.mark.parametrize("shape", list(SHAPES))
def test_assemble_rebuilds_the_mock_answer_from_its_stream(shape: str) -> None:
    """The body assembled from the mock's stream holds the message the mock sends unstreamed."""
    plain_body, _ = mock_chat(stream=False, **SHAPES[shape])
    _, events = mock_chat(stream=True, usage=True, **SHAPES[shape])
    kept, _, usage = content_events(b"".join(events))
    plain = orjson.loads(plain_body)
    body = orjson.loads(assemble(kept, usage))
    assert body["object"] == "chat.completion"
    assert (body["id"], body["model"]) == (plain["id"], plain["model"])
    assert body["choices"] == plain["choices"]
    assert body["usage"] == plain["usage"]
    if shape == "tool-call":
        (call,) = body["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "lookup_okr"
        assert set(orjson.loads(call["function"]["arguments"])) >= {"team", "quarter"}
        assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_assemble_merges_parallel_tool_calls_and_choices() -> None:
    """Argument fragments join per tool-call index, and choices stay apart by their index."""

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            "id": "c1",
            "created": 5,
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    events = [
        chunk(
            0,
            {
                "role": "assistant",
                **call(0, id="a", type="function", function={"name": "f", "arguments": ""}),
            },
        ),
        chunk(0, call(1, id="b", type="function", function={"name": "g", "arguments": '{"y"'})),
        chunk(0, call(0, function={"arguments": '{"x":'})),
        chunk(1, {"content": "Hello"}),
        chunk(0, call(0, function={"arguments": "1}"})),
        chunk(1, {"content": " world"}, "stop"),
        chunk(0, call(1, function={"arguments": ":2}"}), "tool_calls"),
    ]
    body = orjson.loads(assemble(events, None))
    first, second = body["choices"]
    assert [c["function"] for c in first["message"]["tool_calls"]] == [
        {"name": "f", "arguments": '{"x":1}'},
        {"name": "g", "arguments": '{"y":2}'},
    ]
    assert [c["id"] for c in first["message"]["tool_calls"]] == ["a", "b"]
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "Hello world"
    assert "tool_calls" not in second["message"]
    assert "usage" not in body
    assert (body["id"], body["created"], body["model"]) == ("c1", 5, "m")


def test_assemble_skips_what_is_not_a_chunk() -> None:
    """Comments, [DONE] and broken JSON are ignored."""
    events = [
        b": ping\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n',
        b"data: {oops\n\n",
        DONE,
    ]
    body = orjson.loads(assemble(events, None))
    assert body["choices"][0]["message"]["content"] == "ok"
    assert body["id"] == "chatcmpl-sluicegate"


# synthesise


@pytest.mark.parametrize("shape", list(SHAPES))
def test_synthesise_then_assemble_gives_back_the_message(shape: str) -> None:
    """A stored plain answer, turned into chunks and back, is the same answer."""
    plain_body, _ = mock_chat(stream=False, **SHAPES[shape])
    plain = orjson.loads(plain_body)
    events = synthesise(plain_body)
    assert all(parsed(e)["object"] == "chat.completion.chunk" for e in events)
    assert parsed(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert parsed(events[-1])["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    again = orjson.loads(assemble(events, plain["usage"]))
    assert again == plain


@settings(max_examples=100, deadline=None)
@given(
    contents=st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=3),
    finish=st.sampled_from(["stop", "length"]),
)
def test_synthesise_round_trip_for_any_text(contents: list[str], finish: str) -> None:
    """Any content, in any number of choices, survives synthesise and assemble."""
    plain = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, text in enumerate(contents)
        ],
    }
    assert orjson.loads(assemble(synthesise(orjson.dumps(plain)), None)) == plain


def test_synthesise_splits_long_content_into_several_chunks() -> None:
    """Long content is replayed over several content chunks, not one."""
    plain_body, _ = mock_chat(stream=False)
    contents = [
        parsed(e)["choices"][0]["delta"].get("content")
        for e in synthesise(plain_body)
        if parsed(e)["choices"][0]["delta"].get("content")
    ]
    assert len(contents) >= 5


# usage_event


def test_usage_event_is_the_usage_only_chunk() -> None:
    """The usage chunk has no choices, the body's id, model and usage, and is what content_events
    drops (a body without usage: the one counted)."""
    plain_body, _ = mock_chat(stream=False)
    plain = orjson.loads(plain_body)
    event = usage_event(plain_body, Usage(7, 3, 10))
    payload = parsed(event)
    assert payload["choices"] == []
    assert payload["usage"] == plain["usage"]
    bare = parsed(usage_event(orjson.dumps({**plain, "usage": None}), Usage(7, 3, 10)))
    assert bare["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert (payload["id"], payload["model"], payload["object"]) == (
        plain["id"],
        plain["model"],
        "chat.completion.chunk",
    )
    assert content_events(event) == ([], False, payload["usage"])


LOGPROBS = {
    "content": [
        {"token": "Hello", "logprob": -0.1, "bytes": [72, 101, 108, 108, 111], "top_logprobs": []},
        {"token": " there", "logprob": -0.2, "bytes": None, "top_logprobs": []},
    ],
    "refusal": None,
}
PLAIN = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": LOGPROBS,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    "system_fingerprint": "fp_1",
    "service_tier": "default",
}
DETAILED = Usage(5, 2, 7, cached_tokens=3, reasoning_tokens=1)


def test_logprobs_and_the_answers_fields_survive_both_conversions() -> None:
    """A plain answer with logprobs becomes one chunk per token, each with its own logprob, and
    the chunks assemble back into the same choices, fingerprint and service tier."""
    events = synthesise(orjson.dumps(PLAIN))
    chunks = [orjson.loads(e[6:]) for e in events]
    tokens = [c["choices"][0]["logprobs"]["content"] for c in chunks if c["choices"][0]["logprobs"]]
    assert tokens == [[LOGPROBS["content"][0]], [LOGPROBS["content"][1]]]
    assert {(c["system_fingerprint"], c["service_tier"]) for c in chunks} == {("fp_1", "default")}
    body = orjson.loads(assemble(events, PLAIN["usage"]))
    assert body["choices"] == PLAIN["choices"]
    assert (body["system_fingerprint"], body["service_tier"]) == ("fp_1", "default")


def test_usage_keeps_its_cached_and_reasoning_tokens_in_both_forms() -> None:
    body = orjson.loads(assemble(synthesise(orjson.dumps(PLAIN)), usage_json(DETAILED)))
    last = orjson.loads(usage_event(orjson.dumps(PLAIN | {"usage": None}), DETAILED)[6:])
    for usage in (body["usage"], last["usage"]):
        assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
        assert usage["completion_tokens_details"] == {"reasoning_tokens": 1}
    assert last["service_tier"] == "default" and last["choices"] == []


# Usage as OpenAI sends it today: every detail, zeros included.
FULL_USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 2,
    "total_tokens": 7,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def test_the_upstreams_usage_object_is_kept_whole_in_both_forms() -> None:
    """The usage object the upstream sent, every detail of it, is what a replay's usage chunk
    and an assembled body carry (not one rebuilt from the counted tokens)."""
    plain = PLAIN | {"usage": FULL_USAGE}
    last = parsed(usage_event(orjson.dumps(plain), Usage(5, 2, 7)))
    assert last["usage"] == FULL_USAGE
    stream = [*synthesise(orjson.dumps(plain)), usage_event(orjson.dumps(plain), Usage(5, 2, 7)), DONE]
    kept, done, usage = content_events(b"".join(stream))
    assert done and usage == FULL_USAGE
    assert orjson.loads(assemble(kept, usage)) == plain


FUNCTION_CALL = {"name": "get_weather", "arguments": '{"city": "Lyon"}'}


@pytest.mark.parametrize(
    ("message", "finish"),
    [
        (
            {"role": "assistant", "content": None, "refusal": None, "function_call": FUNCTION_CALL},
            "function_call",
        ),
        (
            {
                "role": "assistant",
                "content": "Lyon is sunny.",
                "refusal": None,
                "annotations": [
                    {
                        "type": "url_citation",
                        "url_citation": {
                            "url": "https://example.org",
                            "title": "Weather",
                            "start_index": 0,
                            "end_index": 4,
                        },
                    }
                ],
            },
            "stop",
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1, "transcript": "Sunny."},
            },
            "stop",
        ),
        ({"role": "assistant", "content": "", "refusal": None}, "stop"),
    ],
    ids=["function_call", "annotations", "audio", "empty"],
)
def test_a_legacy_function_call_and_annotations_survive_both_conversions(
    message: dict[str, Any], finish: str
) -> None:
    plain = PLAIN | {"choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
    events = synthesise(orjson.dumps(plain))
    first = parsed(events[0])["choices"][0]["delta"]
    assert first == {
        "role": "assistant",
        "content": "" if isinstance(message["content"], str) else None,
        "refusal": None,
    }
    assert orjson.loads(assemble(events, PLAIN["usage"])) == plain
    # The stream's own deltas: the call's name first, its arguments in pieces.
    split = [
        {
            **parsed(events[0]),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
        for delta in (
            {"role": "assistant", "content": None},
            {"function_call": {"name": "get_weather", "arguments": ""}},
            {"function_call": {"arguments": '{"city": '}},
            {"function_call": {"arguments": '"Lyon"}'}},
        )
    ]
    if finish == "function_call":
        streamed = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in split] + [events[-1]]
        assert orjson.loads(assemble(streamed, PLAIN["usage"]))["choices"][0]["message"] == {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "function_call": FUNCTION_CALL,
        }
