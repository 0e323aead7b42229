"""Providers: OpenAI-compatible upstreams, each behind one transport.

A provider's ``kind`` picks its transport from `TRANSPORTS`, a registry: add a kind by adding
an entry, never another branch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..calls import Call, CallKind, Reply, Usage, request_json
from ..config import ProviderConfig, Settings
from ..errors import ConfigError, UpstreamError, UpstreamTimeout
from .mock import MockEngine, MockTransport
from .sse import SseRelay
from .transport import AiohttpTransport, Transport, UpstreamRequest, UpstreamResponse

__all__ = ["TRANSPORTS", "Provider", "api_key", "build_providers", "deadline_passed", "upstream_error"]

_PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings"}
_ERROR_HEADERS = ("retry-after", "retry-after-ms")
_NO_DEADLINE = math.inf


def api_key(name: str, config: ProviderConfig) -> str | None:
    """The provider's API key, from the variable its ``api_key_env`` names (None without one);
    `ConfigError` when that variable is not set."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError(
            f"providers.{name}.api_key_env: the environment variable {config.api_key_env} is not set"
        )
    return key


def _http_transport(name: str, config: ProviderConfig) -> Transport:
    headers = {"content-type": "application/json", **config.headers}
    key = api_key(name, config)
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    assert config.base_url is not None  # the config validator insists on it
    return AiohttpTransport(name, config.base_url, headers, config.timeouts, config.max_connections)


def _mock_transport(name: str, config: ProviderConfig) -> Transport:
    return MockTransport(MockEngine(config.mock), config.timeouts.first_byte)


TRANSPORTS: Mapping[str, Callable[[str, ProviderConfig], Transport]] = {
    "openai": _http_transport,
    "mock": _mock_transport,
}


def upstream_error(provider: str, response: UpstreamResponse) -> UpstreamError:
    """Turn an upstream error response into an `UpstreamError` with its status and message."""
    headers = {name: response.headers[name] for name in _ERROR_HEADERS if name in response.headers}
    try:
        payload: Any = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return UpstreamError(
            error["message"],
            status=response.status,
            error_type=error.get("type") if isinstance(error.get("type"), str) else None,
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            code=error.get("code") if isinstance(error.get("code"), str) else None,
            headers=headers,
        )
    text = response.body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    return UpstreamError(
        f"provider {provider} answered HTTP {response.status}: {text}",
        status=response.status,
        headers=headers,
    )


def deadline_passed(call: Call, sent: bool = True) -> UpstreamTimeout:
    """The error of a call whose deadline passed before the upstream answered (``sent``: after
    the request went upstream)."""
    return UpstreamTimeout(
        f"provider {call.route.provider}: no answer within the request's deadline "
        f"({call.deadline - call.started:g} s from its arrival)",
        sent=sent,
    )


def _without_hints(body: dict[str, Any], kind: CallKind) -> None:
    """Take sluicegate's own hints (``metadata.feature``, ``metadata.user``) out of a body going
    upstream: they are the gateway's routing, not the provider's business. An embeddings request
    loses ``metadata`` whole (OpenAI's embeddings take none, and refuse unknown fields)."""
    metadata = body["metadata"]
    if kind == "embeddings":
        del body["metadata"]
    elif isinstance(metadata, dict) and ("feature" in metadata or "user" in metadata):
        rest = {k: v for k, v in metadata.items() if k not in ("feature", "user")}
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]


class Provider:
    """Sends calls to one OpenAI-compatible upstream."""

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self.transport = transport

    async def send(self, call: Call) -> Reply:
        """Forward ``call`` upstream; raise `UpstreamError` when the upstream refuses it."""
        # A copy: the call's body stays as the client sent it, for retries and fallbacks.
        body = {**call.body, "model": call.route.upstream_model}
        if "metadata" in body:
            _without_hints(body, call.kind)
        strip_usage = False
        if call.stream:
            # Ask for usage on every stream so cost is always known; hide it if not asked for.
            options = body.get("stream_options")
            if not isinstance(options, dict):
                body["stream_options"] = {"include_usage": True}
                strip_usage = True
            elif options.get("include_usage") is not True:
                body["stream_options"] = {**options, "include_usage": True}
                strip_usage = True
        request = UpstreamRequest("POST", _PATHS[call.kind], request_json(body), call.stream)
        if call.deadline != _NO_DEADLINE:
            request.timeout_s = call.deadline - time.perf_counter()
            if request.timeout_s <= 0:
                raise deadline_passed(call, sent=False)
        if call.timeouts is not None:
            request.connect_s, request.first_byte_s = call.timeouts
        try:
            response = await self.transport.send(request)
        except UpstreamTimeout as exc:
            if exc.sent:  # billed at its prompt's estimate, as the ledger bills it
                call.timed_out = (*call.timed_out, call.route)
            if time.perf_counter() >= call.deadline:
                raise deadline_passed(call, exc.sent) from None
            raise
        if response.status >= 400:
            await response.release()
            raise upstream_error(self.name, response)
        if response.chunks is not None:
            return Reply(stream=SseRelay(response.chunks, response.release, strip_usage=strip_usage))
        payload = _parsed(response.body)
        usage = Usage.from_payload(payload.get("usage")) if isinstance(payload, dict) else None
        return Reply(body=response.body, usage=usage, payload=payload)

    async def aclose(self) -> None:
        """Release the provider's pooled connections."""
        await self.transport.aclose()


def _parsed(body: bytes) -> Any:
    """The answer parsed, once, for the stages that read it; None when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One `Provider` per configured provider, with its transport."""
    return {
        name: Provider(name, TRANSPORTS[config.kind](name, config))
        for name, config in settings.providers.items()
    }
