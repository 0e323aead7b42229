"""CORS for the configured browser origins, over real HTTP."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluicegate.server.cors import Cors
from sluicegate.server.http import Request
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body

APP = "https://app.example.com"
EXPOSED = (
    "etag, age, cache-control, x-sluicegate-cache, x-request-id, ratelimit, ratelimit-policy, "
    "retry-after, x-sluicegate-model, x-sluicegate-deployment, x-sluicegate-fallback, "
    "x-sluicegate-hedge, x-sluicegate-coalesced, x-sluicegate-degraded, "
    "x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens"
)


def fetch(
    base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; status, lower-cased headers (repeated ones joined) and body."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, data, {"content-type": "application/json", **(headers or {})})
    response = conn.getresponse()
    found: dict[str, str] = {}
    for name, value in response.getheaders():
        key = name.lower()
        found[key] = f"{found[key]}, {value}" if key in found else value
    result = response.status, found, response.read()
    conn.close()
    return result


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    """Only the access-control-* headers."""
    return {k: v for k, v in headers.items() if k.startswith("access-control-")}


@pytest.fixture
def cors_server(upstream: MockUpstream, tmp_path: Path) -> Iterator[GatewayServer]:
    """The gateway allowing one origin (configured with a trailing slash and capitals)."""
    settings = mock_settings(
        upstream.url, data_dir=tmp_path, browser={"cors_origins": ["https://App.example.com/"]}
    )
    with GatewayServer(settings) as gw:
        yield gw


def test_no_origins_no_cors(server: GatewayServer) -> None:
    """By default nothing changes: preflights get 405/404 and responses carry no CORS headers."""
    status, headers, _ = fetch(server.url, "OPTIONS", "/v1/chat/completions", headers={"origin": APP})
    assert status == 405 and not cors_headers(headers)
    status, _, _ = fetch(server.url, "OPTIONS", "/nowhere", headers={"origin": APP})
    assert status == 404
    status, headers, _ = fetch(server.url, "GET", "/v1/models", headers={"origin": APP})
    assert status == 200 and not cors_headers(headers) and "vary" not in headers


def test_preflight_from_an_allowed_origin(cors_server: GatewayServer) -> None:
    """An allowed origin's preflight is a 204 listing methods, headers and max-age, on any route."""
    for path in ("/v1/chat/completions", "/api/ai/browser-tokens", "/anything"):
        status, headers, body = fetch(
            cors_server.url,
            "OPTIONS",
            path,
            headers={
                "origin": APP,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, if-none-match",
            },
        )
        assert status == 204 and body == b""
        assert cors_headers(headers) == {
            "access-control-allow-origin": APP,
            "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
            "access-control-allow-headers": (
                "authorization, content-type, cache-control, if-none-match, "
                "x-sluicegate-feature, x-sluicegate-user, x-request-id, traceparent, tracestate"
            ),
            "access-control-max-age": "600",
        }
        assert headers["vary"] == "Origin"


def test_preflight_from_another_origin_is_refused(cors_server: GatewayServer) -> None:
    """Another origin's preflight gets what it got before: no CORS headers, 405."""
    status, headers, _ = fetch(
        cors_server.url, "OPTIONS", "/v1/chat/completions", headers={"origin": "https://evil.example"}
    )
    assert status == 405 and not cors_headers(headers)


def test_responses_to_an_allowed_origin(cors_server: GatewayServer) -> None:
    """Plain answers and errors alike carry the origin, Vary and the exposed headers."""
    for method, path, body in (
        ("POST", "/v1/chat/completions", chat_body()),
        ("POST", "/v1/chat/completions", {"model": "nope", "messages": []}),
        ("GET", "/nowhere", None),
    ):
        status, headers, _ = fetch(cors_server.url, method, path, body, headers={"origin": APP})
        assert status in (200, 400, 404)
        assert headers["access-control-allow-origin"] == APP
        assert headers["access-control-expose-headers"] == EXPOSED
        assert headers["vary"] == "Origin" and "x-request-id" in headers


def test_streams_to_an_allowed_origin(cors_server: GatewayServer) -> None:
    """A streamed answer carries the CORS headers too, and still ends with [DONE]."""
    status, headers, body = fetch(
        cors_server.url, "POST", "/v1/chat/completions", chat_body(stream=True), headers={"origin": APP}
    )
    assert status == 200 and headers["access-control-allow-origin"] == APP
    assert body.rstrip().endswith(b"data: [DONE]")


def test_requests_without_an_allowed_origin_are_untouched(cors_server: GatewayServer) -> None:
    """No Origin (server to server) or another origin: no CORS headers on the response."""
    for headers in ({}, {"origin": "https://evil.example"}, {"origin": "null"}):
        status, found, _ = fetch(cors_server.url, "GET", "/v1/models", headers=headers)
        assert status == 200 and not cors_headers(found) and "vary" not in found


def test_wildcard_allows_any_origin(upstream: MockUpstream, tmp_path: Path) -> None:
    """`*` allows every origin, each echoed back (never a literal `*`)."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, browser={"cors_origins": ["*"]})
    with GatewayServer(settings) as gw:
        _, headers, _ = fetch(gw.url, "GET", "/v1/models", headers={"origin": "http://localhost:3000"})
    assert headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_vary_is_merged_into_the_routes_own() -> None:
    """A route's own Vary gains Origin once; an existing Origin or `*` is left alone."""
    cors = Cors([APP])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    for given, expected in (
        ([(b"vary", b"Accept-Encoding")], [b"Accept-Encoding, Origin"]),
        ([(b"Vary", b"origin")], [b"origin"]),
        ([(b"vary", b"*")], [b"*"]),
        ([], [b"Origin"]),
    ):
        sent: list[dict[str, Any]] = []

        async def send(message: Any, sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        request = Request(scope, receive, send, "req_1", origin=APP)
        assert await cors.apply(request) is False
        await request.send({"type": "http.response.start", "status": 200, "headers": given})
        await request.send({"type": "http.response.body", "body": b"{}"})
        headers = sent[0]["headers"]
        assert [v for n, v in headers if n.lower() == b"vary"] == expected
        assert (b"access-control-allow-origin", APP.encode()) in headers
        assert sent[1] == {"type": "http.response.body", "body": b"{}"}


def test_an_origin_configured_with_its_scheme_s_own_port_matches_what_browsers_send() -> None:
    """Browsers leave the default port out of Origin: `https://app.example.com:443` in the
    config is `https://app.example.com`; another port is another origin."""
    cors = Cors(["https://App.example.com:443/", "http://localhost:80", "https://b.example.com:8443"])
    assert cors.allows("https://app.example.com") and cors.allows("http://localhost")
    assert cors.allows("https://b.example.com:8443") and not cors.allows("https://b.example.com")
