"""Property-based fuzzing of every route, straight through the ASGI app: malformed JSON, wrong
types, huge numbers, deep nesting, invalid UTF-8, odd headers and methods. No answer is a 500,
nothing raises out of the app, and every error is in OpenAI's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate import create_gateway
from sluicegate.server.app import SluicegateApp, create_app
from sluicegate.testing import mock_settings

PATHS = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/chat/completions",
    "/api/ai/status",
    "/api/ai/keys",
    "/api/ai/keys/abc",
    "/api/ai/cache/stats",
    "/api/ai/cache/invalidate",
    "/api/ai/cache/bump",
    "/api/ai/browser-tokens",
    "/api/ai/usage",
    "/api/ai/budgets",
    "/api/ai/stop",
    "/api/ai/resume",
    "/sdk/sluicegate.js",
    "/nowhere",
    "/v1/chat/completions/",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Bodies shaped like the real thing, with any field swapped for junk.
chat_like = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt-4o-mini", "text-embedding-3-small", "nope"]) | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "robot"]) | json_values, "content": json_values}
            ),
            max_size=3,
        )
        | json_values,
    },
    optional={
        "max_tokens": json_values,
        "n": json_values,
        "temperature": json_values,
        "stream": json_values,
        "cache": json_values,
        "input": json_values,
        "tools": json_values,
        "metadata": json_values,
    },
)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = st.one_of(
    chat_like.map(encoded),
    json_values.map(encoded),
    st.binary(max_size=200),
    st.just(b"[" * 5000 + b"]" * 5000),  # deep nesting
    st.just(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    st.just(b'{"model": "gpt-4o-mini", "max_tokens": 1e400, "messages": []}'),
)
header_names = st.sampled_from(
    [
        b"authorization",
        b"cache-control",
        b"if-none-match",
        b"x-sluicegate-feature",
        b"x-sluicegate-user",
        b"origin",
        b"content-type",
        b"content-length",
        b"x-odd",
    ]
)
headers = st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=5)


async def call(
    app: SluicegateApp, method: str, path: str, head: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, bytes]:
    scope = {"type": "http", "method": method, "path": path, "headers": head, "query_string": b""}
    sent: list[dict[str, Any]] = []
    chunks = [body[:50], body[50:]] if len(body) > 50 else [body]

    async def receive() -> dict[str, Any]:
        if chunks:
            piece = chunks.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], data


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[SluicegateApp]:
    settings_ = mock_settings(data_dir=tmp_path, ledger={"enabled": False})
    async with create_gateway(settings_) as gateway:
        yield create_app(gateway=gateway)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), path=st.sampled_from(PATHS), head=headers, body=bodies)
async def test_no_input_makes_a_500(
    app: SluicegateApp, method: str, path: str, head: list[tuple[bytes, bytes]], body: bytes
) -> None:
    status, data = await call(app, method, path, head, body)
    assert status != 500, data
    if status >= 400 and data:
        error = json.loads(data)["error"]
        assert {"message", "type", "param", "code"} <= set(error)
