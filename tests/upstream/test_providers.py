"""Tests for sluicegate.upstream.providers: error mapping, request rewriting and provider building."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate.calls import Call, ModelRoute, RequestContext, Usage
from sluicegate.config import MockBehaviour, Settings
from sluicegate.errors import ConfigError, UpstreamError
from sluicegate.upstream.mock import MockEngine, MockTransport
from sluicegate.upstream.providers import TRANSPORTS, Provider, build_providers, upstream_error
from sluicegate.upstream.transport import AiohttpTransport, UpstreamResponse

MESSAGES = [{"role": "user", "content": "Suggest an OKR"}]
UNSET_KEY = "SLUICEGATE_TEST_UNSET_PROVIDER_KEY"


def make_call(stream: bool = False, kind: str = "chat", **extra: Any) -> Call:
    """A call for public model "fast", served upstream as "gpt-4o-mini"."""
    body: dict[str, Any] = (
        {"model": "fast", "messages": MESSAGES, **extra}
        if kind == "chat"
        else {"model": "fast", "input": "hello", **extra}
    )
    if stream:
        body["stream"] = True
    return Call(
        kind,  # type: ignore[arg-type]
        body,
        ModelRoute("fast", "p", "gpt-4o-mini"),
        RequestContext("org"),
        "req-1",
        stream=stream,
    )


def provider(behaviour: MockBehaviour | None = None) -> tuple[Provider, MockEngine]:
    """A provider over the in-memory mock, and the mock's engine."""
    engine = MockEngine(behaviour)
    return Provider("p", MockTransport(engine)), engine


# upstream_error


def test_upstream_error_maps_an_openai_body() -> None:
    """An OpenAI error body keeps its status, type, code, param, message and retry-after."""
    body = {
        "error": {
            "message": "Rate limit reached",
            "type": "rate_limit_error",
            "param": "model",
            "code": "rate_limit_exceeded",
        }
    }
    response = UpstreamResponse(429, {"retry-after": "3", "x-other": "no"}, orjson.dumps(body))
    error = upstream_error("openai", response)
    assert error.status_code == 429
    assert error.error_type == "rate_limit_error"
    assert error.code == "rate_limit_exceeded"
    assert error.param == "model"
    assert error.message == "Rate limit reached"
    assert error.headers == {"retry-after": "3"}


def test_upstream_error_keeps_retry_after_ms() -> None:
    """retry-after-ms is kept too."""
    body = orjson.dumps({"error": {"message": "slow down"}})
    error = upstream_error("p", UpstreamResponse(429, {"retry-after-ms": "250"}, body))
    assert error.headers == {"retry-after-ms": "250"}


def test_upstream_error_ignores_non_string_fields() -> None:
    """Fields of the wrong type fall back to the defaults."""
    body = orjson.dumps({"error": {"message": "bad", "type": 5, "param": [], "code": 42}})
    error = upstream_error("p", UpstreamResponse(400, {}, body))
    assert error.error_type == "upstream_error"
    assert error.param is None
    assert error.code is None
    assert error.status_code == 400


@pytest.mark.parametrize("body", [b"<html>Bad Gateway</html>", b'{"detail": "nope"}', b"[1]"])
def test_upstream_error_with_a_foreign_body(body: bytes) -> None:
    """A body that is not an OpenAI error names the provider, the status and the text."""
    error = upstream_error("openai", UpstreamResponse(502, {}, body))
    assert isinstance(error, UpstreamError)
    assert error.status_code == 502
    assert "provider openai" in error.message
    assert "HTTP 502" in error.message
    assert body.decode() in error.message


def test_upstream_error_with_an_empty_body() -> None:
    """An empty body is reported as such."""
    error = upstream_error("p", UpstreamResponse(503, {}, b""))
    assert error.message == "provider p answered HTTP 503: (empty body)"


def test_upstream_error_truncates_a_long_body() -> None:
    """Only the start of a long non-JSON body goes into the message."""
    error = upstream_error("p", UpstreamResponse(500, {}, b"x" * 5000))
    assert error.message.count("x") == 300


# Provider.send


async def test_send_rewrites_the_model() -> None:
    """The upstream sees the route's upstream_model, not the public name."""
    prov, engine = provider()
    reply = await prov.send(make_call())
    assert engine.calls[-1].body is not None
    assert engine.calls[-1].body["model"] == "gpt-4o-mini"
    assert orjson.loads(reply.body)["model"] == "gpt-4o-mini"


async def test_send_whole_reply_reads_usage() -> None:
    """A whole reply comes back as the upstream body, with its usage read."""
    prov, _ = provider()
    reply = await prov.send(make_call())
    body = orjson.loads(reply.body)
    assert reply.stream is None
    assert reply.usage == Usage.from_payload(body["usage"])
    assert reply.usage is not None


async def test_send_embeddings_uses_the_embeddings_path() -> None:
    """An embeddings call goes to /embeddings."""
    prov, engine = provider()
    reply = await prov.send(make_call(kind="embeddings"))
    assert engine.calls[-1].path == "/embeddings"
    assert orjson.loads(reply.body)["object"] == "list"


async def test_sluicegate_s_own_hints_do_not_go_upstream() -> None:
    """``metadata.feature`` and ``metadata.user`` route the call here; the provider gets the
    rest of ``metadata`` (chat), and an embeddings request none (OpenAI's take none)."""
    prov, engine = provider()
    call = make_call(metadata={"feature": "chat", "user": "bob", "project": "q3"}, user="bob")
    await prov.send(call)
    sent = engine.calls[-1].body
    assert sent is not None and sent["metadata"] == {"project": "q3"} and sent["user"] == "bob"
    assert call.body["metadata"] == {"feature": "chat", "user": "bob", "project": "q3"}  # kept for retries
    await prov.send(make_call(metadata={"feature": "chat"}))
    assert "metadata" not in (engine.calls[-1].body or {})
    await prov.send(make_call(kind="embeddings", metadata={"feature": "chat", "project": "q3"}))
    assert "metadata" not in (engine.calls[-1].body or {})


async def test_stream_asks_for_usage_and_strips_it() -> None:
    """A stream without include_usage asks upstream for usage, notes it, and hides it from the client."""
    prov, engine = provider()
    reply = await prov.send(make_call(stream=True))
    sent = engine.calls[-1].body
    assert sent is not None
    assert sent["stream_options"] == {"include_usage": True}
    assert reply.stream is not None
    out = b"".join([piece async for piece in reply.stream])
    assert b'"usage":{' not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert reply.stream.usage is not None
    assert reply.stream.usage.completion_tokens > 0


async def test_stream_options_without_usage_are_merged() -> None:
    """Other stream_options are kept when include_usage is added, and usage is hidden."""
    prov, engine = provider()
    reply = await prov.send(make_call(stream=True, stream_options={"include_usage": False, "extra": 1}))
    sent = engine.calls[-1].body
    assert sent is not None
    assert sent["stream_options"] == {"include_usage": True, "extra": 1}
    assert reply.stream is not None
    out = b"".join([piece async for piece in reply.stream])
    assert b'"usage":{' not in out


async def test_stream_with_client_usage_keeps_it() -> None:
    """When the client asked for usage, the usage chunk is relayed."""
    prov, _ = provider()
    reply = await prov.send(make_call(stream=True, stream_options={"include_usage": True}))
    assert reply.stream is not None
    out = b"".join([piece async for piece in reply.stream])
    assert b'"usage":{' in out
    assert reply.stream.usage is not None


async def test_resending_a_call_still_strips_usage() -> None:
    """Sending the same call twice hides the usage chunk both times."""
    prov, _ = provider()
    call = make_call(stream=True)
    for _ in range(2):
        reply = await prov.send(call)
        assert reply.stream is not None
        out = b"".join([piece async for piece in reply.stream])
        assert b'"usage":{' not in out


async def test_send_error_raises_upstream_error() -> None:
    """An upstream error status raises UpstreamError with that status and type."""
    prov, _ = provider(MockBehaviour(rate_limit_rate=1, retry_after_s=2, seed=0))
    with pytest.raises(UpstreamError) as caught:
        await prov.send(make_call())
    assert caught.value.status_code == 429
    assert caught.value.error_type == "rate_limit_error"
    assert caught.value.headers == {"retry-after": "2"}


async def test_send_error_releases_the_response() -> None:
    """An error response is released before the error is raised."""
    released: list[bool] = []

    class Refusing:
        """A transport that always answers 500."""

        async def send(self, request: object) -> UpstreamResponse:
            async def release() -> None:
                released.append(True)

            return UpstreamResponse(500, {}, b"boom", release=release)

        async def aclose(self) -> None:
            return None

    with pytest.raises(UpstreamError, match="boom"):
        await Provider("p", Refusing()).send(make_call())
    assert released == [True]


# build_providers


def openai_settings(**provider_fields: Any) -> Settings:
    """Settings with one openai provider ``x`` serving model ``m``."""
    return Settings(
        providers={"x": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", **provider_fields}},
        models={"m": {"provider": "x"}},
    )


def test_transport_registry_has_both_kinds() -> None:
    """Each provider kind has a transport factory."""
    assert set(TRANSPORTS) == {"openai", "mock"}


def test_unset_api_key_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key_env naming an unset variable raises ConfigError naming the key and variable."""
    monkeypatch.delenv(UNSET_KEY, raising=False)
    with pytest.raises(ConfigError) as caught:
        build_providers(openai_settings(api_key_env=UNSET_KEY))
    assert "providers.x.api_key_env" in str(caught.value)
    assert UNSET_KEY in str(caught.value)


def test_empty_api_key_env_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An api key variable that is set but empty counts as unset."""
    monkeypatch.setenv(UNSET_KEY, "")
    with pytest.raises(ConfigError, match=UNSET_KEY):
        build_providers(openai_settings(api_key_env=UNSET_KEY))


async def test_build_providers_picks_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    """An openai provider gets the HTTP transport and a mock provider the in-memory one."""
    monkeypatch.setenv(UNSET_KEY, "sk-test")
    settings = Settings(
        providers={
            "x": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": UNSET_KEY},
            "y": {"kind": "mock", "mock": {"answer_words": 3}},
        },
        models={"m": {"provider": "x"}, "n": {"provider": "y"}},
    )
    providers = build_providers(settings)
    assert set(providers) == {"x", "y"}
    assert isinstance(providers["x"].transport, AiohttpTransport)
    mock = providers["y"].transport
    assert isinstance(mock, MockTransport)
    assert mock.engine.behaviour.answer_words == 3
    for prov in providers.values():
        await prov.aclose()
