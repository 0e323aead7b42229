"""The OpenAI-compatible routes over real HTTP, with the official SDK as the client."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body


def post(
    base: str, path: str, body: bytes | Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes (or JSON) and return status, lower-cased headers and body."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return result


def error_of(body: bytes) -> dict[str, Any]:
    """The `error` object of an OpenAI-shaped error body, checked for its four keys."""
    payload = json.loads(body)
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]
    return payload["error"]


@pytest.fixture
def client(server: GatewayServer) -> openai.OpenAI:
    """The official SDK pointed at the gateway."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-anything", max_retries=0)


def test_sdk_chat_completion(client: openai.OpenAI, upstream: MockUpstream) -> None:
    """A non-streamed completion arrives as the upstream sent it, with usage."""
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.total_tokens > 0
    assert upstream.calls[-1].body is not None and upstream.calls[-1].body["model"] == "gpt-4o-mini"


def test_sdk_streaming(client: openai.OpenAI, upstream: MockUpstream) -> None:
    """A stream arrives chunk by chunk; the usage chunk we asked for is hidden from the client."""
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.choices for c in chunks)
    sent = upstream.calls[-1].body
    assert sent is not None and sent["stream_options"] == {"include_usage": True}


def test_sdk_streaming_with_usage(client: openai.OpenAI) -> None:
    """A client that asks for usage gets the usage chunk."""
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_sdk_embeddings_and_models(client: openai.OpenAI) -> None:
    """Embeddings (the SDK asks for base64) and the model list work."""
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 16
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "fast", "text-embedding-3-small"} <= ids


def test_sdk_retrieves_one_model(client: openai.OpenAI) -> None:
    """``GET /v1/models/{id}``: a name or an alias; an unknown one is the SDK's NotFoundError."""
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert client.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-9")
    assert "gpt-9" in str(missing.value)


def test_alias_is_routed_to_its_model(server: GatewayServer, upstream: MockUpstream) -> None:
    """An alias resolves to the model's upstream name."""
    status, _, _ = post(server.url, "/v1/chat/completions", chat_body(model="fast"))
    assert status == 200
    assert upstream.calls[-1].body is not None and upstream.calls[-1].body["model"] == "gpt-4o-mini"


def test_unknown_fields_pass_through(server: GatewayServer, upstream: MockUpstream) -> None:
    """Fields sluicegate does not know reach the upstream untouched."""
    extra = {"reasoning_effort": "low", "x_new_feature": {"nested": [1, 2]}, "temperature": 0.3}
    status, headers, _ = post(server.url, "/v1/chat/completions", chat_body(**extra))
    assert status == 200 and headers["x-request-id"]
    sent = upstream.calls[-1].body
    assert sent is not None
    assert {k: sent[k] for k in extra} == extra


def test_stream_ends_with_done(server: GatewayServer) -> None:
    """The raw stream is SSE and ends with data: [DONE]."""
    status, headers, body = post(server.url, "/v1/chat/completions", chat_body(stream=True))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert body.endswith(b"data: [DONE]\n\n")


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, None),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_required_parameter"),
        ({"model": 42, "messages": [{"role": "user", "content": "x"}]}, 400, "model", "invalid_type"),
        ({"model": "gpt-4o-mini"}, 400, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": []}, 400, "messages", "invalid_type"),
        ({"model": "gpt-4o-mini", "messages": ["hi"]}, 400, "messages[0]", "invalid_type"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"},
            400,
            "stream",
            "invalid_type",
        ),
        (  # OpenAI's limit; with max_tokens at its own, the worst case still fits the ledger
            {"model": "gpt-4o-mini", "messages": [{"role": "user"}], "n": 129},
            400,
            "n",
            "integer_above_max_value",
        ),
        (
            {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model",
            "model_not_found",
        ),
        *(
            ({"model": "gpt-4o-mini", "messages": [{"role": "user"}], field: value}, 400, field, code)
            for field in ("max_tokens", "max_completion_tokens", "n")
            for value, code in (
                (-5, "integer_below_min_value"),
                (0, "integer_below_min_value"),
                (2**64 - 1, "integer_above_max_value"),  # its worst case would overflow the ledger
                (1.5, "invalid_type"),
                (10.0, "invalid_type"),
                ("100", "invalid_type"),
                (True, "invalid_type"),
                ([1], "invalid_type"),
            )
        ),
        (  # deeper than orjson writes (254 levels): not a 500 with a traceback
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "x": nested(300)},
            400,
            None,
            "invalid_json",
        ),
    ],
)
def test_request_errors(
    server: GatewayServer, body: Any, status: int, param: str | None, code: str | None
) -> None:
    """Malformed requests get 400 (or 404 for an unknown model) in OpenAI's error shape."""
    got, _, raw = post(server.url, "/v1/chat/completions", body)
    assert got == status
    error = error_of(raw)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code


@pytest.mark.parametrize(("value", "shown"), [(True, "got true"), ("8", 'got "8"'), (None, None)])
def test_a_bad_value_is_shown_as_the_client_sent_it(
    server: GatewayServer, value: Any, shown: str | None
) -> None:
    """The message shows the JSON the client sent (true, "8"), not Python's True or '8'."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": value}
    status, _, raw = post(server.url, "/v1/chat/completions", body)
    if shown is None:
        assert status == 200
    else:
        assert status == 400 and error_of(raw)["message"].endswith(shown)


def test_embeddings_need_input(server: GatewayServer) -> None:
    """An embeddings request without input is a 400 naming the parameter."""
    status, _, raw = post(server.url, "/v1/embeddings", {"model": "text-embedding-3-small"})
    assert status == 400 and error_of(raw)["param"] == "input"


@pytest.mark.parametrize(
    "value", ["", [], ["a", ""], ["a", 1], [1.5], [-1], [True], [[]], [[1], "a"], 123, {}, [None]]
)
def test_a_malformed_embeddings_input_is_refused_before_it_goes_upstream(
    server: GatewayServer, upstream: MockUpstream, value: Any
) -> None:
    """An input OpenAI would refuse is a 400 naming `input`, without an upstream attempt (nor its
    ledger row or budget reservation)."""
    before = len(upstream.calls)
    status, _, raw = post(server.url, "/v1/embeddings", {"model": "text-embedding-3-small", "input": value})
    assert status == 400 and error_of(raw)["param"] == "input", raw
    assert error_of(raw)["message"].startswith("invalid 'input': ")
    assert len(upstream.calls) == before


def test_body_over_limit_is_413(upstream: MockUpstream, tmp_path: Path) -> None:
    """A body over server.max_body_bytes is refused with 413, before it is parsed."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, server={"max_body_bytes": 2048})
    big = chat_body(messages=[{"role": "user", "content": "x" * 4096}])
    with GatewayServer(settings) as gw:
        status, _, raw = post(gw.url, "/v1/chat/completions", big)
        small, _, _ = post(gw.url, "/v1/chat/completions", chat_body())
    assert status == 413 and error_of(raw)["code"] == "request_too_large"
    assert small == 200
    assert len(upstream.calls) == 1


def test_body_over_default_limit_is_413(server: GatewayServer) -> None:
    """The default limit is 1 MiB."""
    big = chat_body(messages=[{"role": "user", "content": "x" * (1024 * 1024)}])
    status, _, raw = post(server.url, "/v1/chat/completions", big)
    assert status == 413 and error_of(raw)["type"] == "invalid_request_error"


def test_unknown_route_is_404(server: GatewayServer) -> None:
    """An unknown URL gets a 404 in OpenAI's error shape."""
    status, _, raw = post(server.url, "/v1/nothing-here", {})
    assert status == 404 and error_of(raw)["code"] == "unknown_url"


def test_wrong_method_is_405(server: GatewayServer) -> None:
    """A known URL with the wrong method gets a 405."""
    status, _, raw = post(server.url, "/v1/models", {})
    assert status == 405 and error_of(raw)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("behaviour", "retry_after"),
    [
        ({"error_rate": 1.0, "error_status": 503}, "5"),
        ({"error_rate": 1.0, "error_status": 500}, "5"),
        ({"rate_limit_rate": 1.0, "retry_after_s": 0}, "0"),
    ],
)
def test_upstream_failures_end_in_a_clear_503(
    server: GatewayServer, upstream: MockUpstream, behaviour: dict[str, Any], retry_after: str
) -> None:
    """An upstream failure that retries could not mend is a 503 with Retry-After, naming the
    model and quoting the upstream's message."""
    upstream.behave(**behaviour)
    got, headers, raw = post(server.url, "/v1/chat/completions", chat_body())
    assert got == 503 and headers["retry-after"] == retry_after
    error = error_of(raw)
    assert (error["type"], error["code"]) == ("api_error", "all_upstreams_failed")
    assert "'gpt-4o-mini'" in error["message"] and "mock:" in error["message"]
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize(
    ("behaviour", "status", "kind", "code"),
    [
        ({"error_rate": 1.0, "error_status": 400}, 400, "invalid_request_error", None),
        ({"error_rate": 1.0, "error_status": 422}, 422, "invalid_request_error", None),
        (
            {"error_rate": 1.0, "error_status": 429, "error_code": "insufficient_quota"},
            503,
            "api_error",
            "all_upstreams_failed",
        ),
    ],
)
def test_upstream_refusals_are_passed_on(
    server: GatewayServer,
    upstream: MockUpstream,
    behaviour: dict[str, Any],
    status: int,
    kind: str,
    code: str | None,
) -> None:
    """What the upstream refused on purpose keeps its status, type, code and message; a quota
    error is not retried, and degrades like any failure."""
    upstream.behave(**behaviour)
    got, _, raw = post(server.url, "/v1/chat/completions", chat_body())
    assert got == status
    error = error_of(raw)
    assert (error["type"], error["code"]) == (kind, code)
    assert "mock:" in error["message"]
    assert len(upstream.engine.calls) == 1


def test_upstream_error_through_the_sdk(client: openai.OpenAI, upstream: MockUpstream) -> None:
    """The SDK raises its own InternalServerError for the 503 of an upstream that keeps failing."""
    upstream.behave(rate_limit_rate=1.0, retry_after_s=0)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 503


def test_upstream_hang_is_a_503(upstream: MockUpstream, tmp_path: Path) -> None:
    """An upstream that never answers hits the first-byte timeout (2 s here), then a 503."""
    upstream.behave(hang_rate=1.0)
    settings = mock_settings(upstream.url, data_dir=tmp_path, resilience={"retry": {"max_attempts": 1}})
    with GatewayServer(settings) as gw:
        status, _, raw = post(gw.url, "/v1/chat/completions", chat_body())
    assert status == 503 and "(timeout)" in error_of(raw)["message"]


def test_upstream_unreachable_is_a_503(tmp_path: Path) -> None:
    """An upstream that refuses connections is a 503 saying it could not be reached."""
    settings = mock_settings("http://127.0.0.1:9/v1", data_dir=tmp_path)
    with GatewayServer(settings) as gw:
        status, _, raw = post(gw.url, "/v1/chat/completions", chat_body())
    assert status == 503 and "could not reach the upstream" in error_of(raw)["message"]


def test_dropped_stream_ends_with_error_event(server: GatewayServer, upstream: MockUpstream) -> None:
    """A stream the upstream cuts short ends with an error event, never [DONE]."""
    upstream.behave(drop_after_chunks=2)
    status, _, body = post(server.url, "/v1/chat/completions", chat_body(stream=True))
    assert status == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert b"[DONE]" not in body
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_stream_broken"
    assert len(events) == 3


def test_dropped_stream_through_the_sdk(client: openai.OpenAI, upstream: MockUpstream) -> None:
    """The SDK raises on the error event instead of ending quietly."""
    upstream.behave(drop_after_chunks=3)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_stream_error_before_first_byte_is_plain_json(server: GatewayServer, upstream: MockUpstream) -> None:
    """When the upstream refuses a stream outright, the client gets the status, not a stream."""
    upstream.behave(error_rate=1.0, error_status=400)
    status, headers, raw = post(server.url, "/v1/chat/completions", chat_body(stream=True))
    assert status == 400 and headers["content-type"] == "application/json"
    assert error_of(raw)["type"] == "invalid_request_error"


def test_client_leaving_mid_stream_stops_the_relay(server: GatewayServer, upstream: MockUpstream) -> None:
    """A client that hangs up mid-stream ends the relay; the call is recorded as a 499."""
    upstream.behave(chunks=30, chunk_interval_ms=100)
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        json.dumps(chat_body(stream=True)),
        {"content-type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.read1(1024).startswith(b"data: ")
    conn.sock.close()
    conn.close()
    counters = server.app.gateway.counters
    deadline = time.monotonic() + 5
    while counters.errors.get("client_disconnected") != 1:
        assert time.monotonic() < deadline, f"no disconnect recorded: {counters.snapshot()}"
        time.sleep(0.05)
    assert counters.requests == 1


def test_key_is_checked_before_the_body(upstream: MockUpstream, tmp_path: Path) -> None:
    """With keys required, a caller without a valid key gets 401 whatever its body holds."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        for body in (b"{not json", chat_body(model="no-such-model"), b"x" * (2 * 1024 * 1024)):
            status, _, raw = post(gw.url, "/v1/chat/completions", body)
            assert status == 401
            assert error_of(raw)["code"] == "missing_api_key"
        status, _, raw = post(gw.url, "/v1/chat/completions", chat_body(), {"x-sluicegate-feature": "nope"})
        assert status == 401
        assert "okr-template" not in error_of(raw)["message"]
    assert upstream.calls == []


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n"])
def test_positive_integers_and_null_are_accepted(server: GatewayServer, field: str) -> None:
    """The fields the budget relies on take a positive integer, or null as OpenAI allows."""
    for value in (1, 64, None):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], field: value}
        got, _, raw = post(server.url, "/v1/chat/completions", body)
        assert got == 200, raw
