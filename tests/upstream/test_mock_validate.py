"""Tests for sluicegate.upstream.mock_validate: the mock refuses what OpenAI refuses, in its words."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate.upstream.mock import MockEngine

USER = {"role": "user", "content": "hi"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [USER], **fields}


@pytest.mark.parametrize(
    ("body", "param", "code", "words"),
    [
        ({"model": "m"}, "messages", "missing_required_parameter", "Missing required parameter"),
        ({"model": "m", "messages": []}, "messages", "empty_array", "empty array"),
        ({"model": "m", "messages": "hi"}, "messages", "invalid_type", "expected an array"),
        (
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
            "Supported values are: 'system'",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": []}]},
            "messages[0].content",
            "empty_array",
            "empty array",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "invalid_type",
            "got integer",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": None}]},
            "messages[0].content",
            "invalid_value",
            "null",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages[0].content[0].type",
            "invalid_value",
            "'video'",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
            "missing_required_parameter",
            "text",
        ),
        (chat(temperature=3), "temperature", "decimal_above_max_value", "Expected a value <= 2"),
        (chat(temperature=-0.5), "temperature", "decimal_below_min_value", "Expected a value >= 0"),
        (chat(temperature="hot"), "temperature", "invalid_type", "got string"),
        (chat(top_p=1.5), "top_p", "decimal_above_max_value", "<= 1"),
        (chat(presence_penalty=-3), "presence_penalty", "decimal_below_min_value", ">= -2"),
        (chat(max_tokens=-5), "max_tokens", "integer_below_min_value", "got -5"),
        (chat(max_tokens=2.5), "max_tokens", "invalid_type", "got decimal number"),
        (chat(n=0), "n", "integer_below_min_value", ">= 1"),
        (chat(stream="yes"), "stream", "invalid_type", "a boolean"),
    ],
)
def test_chat_refusals_in_openai_shape(body: dict[str, Any], param: str, code: str, words: str) -> None:
    reply = MockEngine().reply("POST", "/v1/chat/completions", orjson.dumps(body))
    assert reply.status == 400
    error = orjson.loads(reply.body)["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert words in error["message"]


@pytest.mark.parametrize(
    "message",
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "developer", "content": "be brief"},
    ],
)
def test_what_openai_accepts_the_mock_accepts(message: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [message, USER], "temperature": 2, "top_p": 0, "max_tokens": 5}
    assert MockEngine().reply("POST", "/v1/chat/completions", orjson.dumps(body)).status == 200


@pytest.mark.parametrize("value", [None, "", []])
def test_embeddings_need_an_input(value: Any) -> None:
    body = {"model": "text-embedding-3-small", "input": value}
    reply = MockEngine().reply("POST", "/v1/embeddings", orjson.dumps(body))
    assert reply.status == 400 and orjson.loads(reply.body)["error"]["param"] == "input"
