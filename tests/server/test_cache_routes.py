"""The /api/ai/cache routes and the chat route's cache headers, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body

ADMIN = "admin-secret"


def http(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request: the status, the headers (lower-case names) and the raw body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def call(url: str, method: str = "GET", body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """One request; the status and the parsed JSON body."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    status, _, content = http(url, method, body, headers)
    return status, json.loads(content)


def chat(
    server: GatewayServer, body: dict[str, Any] | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """POST a chat completion with extra headers (underscores become dashes)."""
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return http(server.url + "/v1/chat/completions", "POST", body or chat_body(), named)


def chat_calls(upstream: MockUpstream) -> int:
    """Chat calls that reached the mock."""
    return sum(1 for c in upstream.calls if c.path.endswith("/chat/completions"))


def assert_openai_error(body: Any, code: str | None = None, param: str | None = None) -> None:
    """``body`` is an OpenAI-style error object, with the given code and param."""
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


# Admin access


def test_admin_key_is_required(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With keys required and an admin key set, every cache route answers 401 without it and 200 with it."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", ADMIN)
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    routes = [
        ("GET", "/api/ai/cache", None),
        ("POST", "/api/ai/cache/invalidate", {"feature": "chat"}),
        ("POST", "/api/ai/cache/bump", {"feature": "chat"}),
        ("POST", "/api/ai/cache/warm", {"requests": [], "dry_run": True}),
    ]
    with GatewayServer(settings) as gw:
        for method, path, body in routes:
            for key in (None, "wrong", "sk-sg-not-the-admin"):
                status, answer = call(gw.url + path, method, body, key)
                assert status == 401, (path, key)
                assert answer["error"]["type"] == "authentication_error"
            assert call(gw.url + path, method, body, ADMIN)[0] == 200, path


def test_cache_routes_answer_404_when_the_cache_is_disabled(upstream: MockUpstream, tmp_path: Path) -> None:
    """With cache.enabled false every cache route is a 404 with the code cache_disabled."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, cache={"enabled": False})
    with GatewayServer(settings) as gw:
        for method, path in [
            ("GET", "/api/ai/cache"),
            ("POST", "/api/ai/cache/invalidate"),
            ("POST", "/api/ai/cache/bump"),
            ("POST", "/api/ai/cache/warm"),
        ]:
            status, body = call(gw.url + path, method, {"feature": "chat"})
            assert status == 404
            assert body["error"]["code"] == "cache_disabled"
        status, headers, _ = chat(gw)
        assert status == 200
        assert "x-sluicegate-cache" not in headers


# Statistics, invalidation, bumps, warming


def test_stats_shape(server: GatewayServer) -> None:
    """GET /api/ai/cache reports counters per feature with an `all` row, the tiers and the namespaces."""
    chat(server)
    chat(server)
    status, stats = call(server.url + "/api/ai/cache")
    assert status == 200
    assert set(stats) == {"features", "tiers", "namespaces"}
    row = stats["features"]["default"]
    assert (row["misses"], row["hits_memory"], row["hits"], row["hit_ratio"]) == (1, 1, 1, 0.5)
    assert row["tokens_saved"] > 0
    assert stats["features"]["all"]["upstream_calls"] == 1
    assert set(stats["tiers"]) == {"memory", "sql"}
    assert stats["tiers"]["memory"]["entries"] == 1
    assert stats["tiers"]["memory"]["bytes"] > 0
    assert {"entries", "bytes", "pending_writes", "state"} <= set(stats["tiers"]["sql"])
    assert stats["namespaces"] == {}


INVALID_MATCHES: list[Any] = [
    {},
    {"org": ""},
    {"org": 5},
    {"tag": ["q3"]},
]


def test_invalidate_validation_errors(server: GatewayServer) -> None:
    """A body that names nothing valid to delete is a 400 in OpenAI's error shape."""
    for body in INVALID_MATCHES:
        status, answer = call(server.url + "/api/ai/cache/invalidate", "POST", body)
        assert status == 400, body
        assert_openai_error(answer, "invalid_match")
    for body in ({"colour": "red"}, {"org": "acme", "colour": "red"}):  # a typo is named
        status, answer = call(server.url + "/api/ai/cache/invalidate", "POST", body)
        assert status == 400 and "'colour'" in answer["error"]["message"], body
        assert_openai_error(answer, param="colour")
    for body in (["org", "acme"], b"{not json"):
        status, answer = call(server.url + "/api/ai/cache/invalidate", "POST", body)
        assert status == 400, body
        assert_openai_error(answer)


def test_invalidate_deletes_and_reports(server: GatewayServer, upstream: MockUpstream) -> None:
    """A valid invalidation reports what it deleted per tier, and the next request goes upstream."""
    chat(server)
    status, result = call(server.url + "/api/ai/cache/invalidate", "POST", {"org": "local"})
    assert status == 200
    assert result["match"] == {"org": "local"}
    assert result["deleted"]["memory"] == 1
    assert set(result["deleted"]) == {"memory", "sql"}
    assert result["processes_acknowledged"] == 1
    assert chat(server)[1]["x-sluicegate-cache"] == "miss"
    assert chat_calls(upstream) == 2
    # A feature that is not configured (a typo) would delete nothing: a 400 naming it.
    status, answer = call(server.url + "/api/ai/cache/invalidate", "POST", {"feature": "insigths"})
    assert status == 400 and answer["error"]["code"] == "invalid_match", answer
    assert_openai_error(answer, param="feature")
    assert "insights" in answer["error"]["message"]
    assert chat(server)[1]["x-sluicegate-cache"] == "hit-memory"
    # So is a model that is not configured; an alias means its model.
    status, answer = call(server.url + "/api/ai/cache/invalidate", "POST", {"model": "gpt-4o-mni"})
    assert status == 400 and answer["error"]["code"] == "invalid_match", answer
    assert_openai_error(answer, param="model")
    status, result = call(server.url + "/api/ai/cache/invalidate", "POST", {"model": "fast"})
    assert status == 200 and result["match"] == {"model": "gpt-4o-mini"}
    assert result["deleted"]["memory"] == 1
    assert chat(server)[1]["x-sluicegate-cache"] == "miss"


def test_bump(server: GatewayServer) -> None:
    """An unknown feature is a 400 naming the param; a known one gets a new namespace and a miss."""
    for body in ({"feature": "nope"}, {"feature": 3}, {}):
        status, answer = call(server.url + "/api/ai/cache/bump", "POST", body)
        assert status == 400
        assert_openai_error(answer, param="feature")
    headers = {"x_sluicegate_feature": "insights"}
    chat(server, **headers)
    assert chat(server, **headers)[1]["x-sluicegate-cache"] == "hit-memory"
    status, result = call(server.url + "/api/ai/cache/bump", "POST", {"feature": "insights"})
    assert status == 200
    assert (result["feature"], result["namespace"]) == ("insights", 1)
    assert chat(server, **headers)[1]["x-sluicegate-cache"] == "miss"
    assert call(server.url + "/api/ai/cache")[1]["namespaces"] == {"insights": 1}


def warm_requests(count: int) -> list[dict[str, Any]]:
    """``count`` distinct requests to warm."""
    return [{"request": chat_body(messages=[{"role": "user", "content": f"plan {i}"}])} for i in range(count)]


def test_warm_dry_run_then_for_real(server: GatewayServer, upstream: MockUpstream) -> None:
    """A dry run counts without calling upstream; a real run fetches; the warmed answers are hits."""
    status, report = call(
        server.url + "/api/ai/cache/warm", "POST", {"requests": warm_requests(3), "dry_run": True}
    )
    assert status == 200
    assert (report["fetched"], report["skipped_fresh"], report["failed"]) == (3, 0, 0)
    assert report["estimated_tokens"] > 0
    assert chat_calls(upstream) == 0
    body = {"requests": warm_requests(3), "max_requests": 2, "concurrency": 2}
    assert call(server.url + "/api/ai/cache/warm", "POST", body)[1]["fetched"] == 2
    assert chat_calls(upstream) == 2
    again = call(server.url + "/api/ai/cache/warm", "POST", {"requests": warm_requests(3)})[1]
    assert (again["fetched"], again["skipped_fresh"]) == (1, 2)
    warmed = warm_requests(1)[0]["request"]
    assert chat(server, warmed)[1]["x-sluicegate-cache"] == "hit-memory"


INVALID_WARMS: list[tuple[dict[str, Any], str | None, str]] = [
    ({"requests": "x"}, "requests", "requests must be a list"),
    ({}, "requests", "requests must be a list"),
    ({"requests": [], "concurrency": 0}, "concurrency", "concurrency"),
    ({"requests": [], "concurrency": 257}, "concurrency", "from 1 to 256"),
    ({"requests": [], "max_requests": -1}, "max_requests", "0 or more"),
    ({"requests": [], "max_requests": True}, "max_requests", "max_requests"),
    ({"requests": [{"kind": "images"}]}, None, "line 1"),
    ({"requests": [{}, "text"]}, None, "line 2"),
]


def test_warm_validation_errors(server: GatewayServer) -> None:
    """A malformed warm request is a 400 naming what is wrong."""
    for body, param, text in INVALID_WARMS:
        status, answer = call(server.url + "/api/ai/cache/warm", "POST", body)
        assert status == 400, body
        assert_openai_error(answer, param=param)
        assert text in answer["error"]["message"]


def test_warm_refuses_options_it_does_not_understand(server: GatewayServer, upstream: MockUpstream) -> None:
    """A dry_run that is not a boolean, or a misspelt option, is a 400, never a real (paid) warm."""
    for body, param in (
        ({"requests": warm_requests(1), "dry_run": "true"}, "dry_run"),
        ({"requests": warm_requests(1), "dryRun": True}, None),
    ):
        status, answer = call(server.url + "/api/ai/cache/warm", "POST", body)
        assert status == 400, body
        assert_openai_error(answer, param=param)
    assert chat_calls(upstream) == 0


# The chat route's cache headers


def test_miss_then_hit_headers(server: GatewayServer, upstream: MockUpstream) -> None:
    """A miss carries an ETag and Cache-Control; the hit repeats the ETag and adds Age."""
    status, first, first_body = chat(server)
    assert status == 200
    assert first["x-sluicegate-cache"] == "miss"
    assert first["etag"].startswith('"') and first["etag"].endswith('"')
    assert first["cache-control"].startswith("private, max-age=")
    assert "age" not in first
    status, second, second_body = chat(server)
    assert second["x-sluicegate-cache"] == "hit-memory"
    assert second["etag"] == first["etag"]
    assert int(second["age"]) >= 0
    assert second["cache-control"].startswith("private, max-age=")
    assert second_body == first_body
    assert chat_calls(upstream) == 1


def test_if_none_match_gets_304(server: GatewayServer, upstream: MockUpstream) -> None:
    """A request whose If-None-Match holds the ETag gets an empty 304, without an upstream call."""
    etag = chat(server)[1]["etag"]
    status, headers, body = chat(server, if_none_match=etag)
    assert status == 304
    assert body == b""
    assert headers["etag"] == etag
    assert headers["x-sluicegate-cache"] == "hit-browser-revalidated"
    status, headers, _ = chat(server, if_none_match='"something-else"')
    assert status == 200
    assert headers["x-sluicegate-cache"] == "hit-memory"
    assert chat_calls(upstream) == 1


def test_no_store_is_honoured(server: GatewayServer, upstream: MockUpstream) -> None:
    """Cache-Control: no-store answers with no-store and keeps nothing."""
    status, headers, _ = chat(server, cache_control="no-store")
    assert status == 200
    assert headers["cache-control"] == "no-store"
    assert chat(server)[1]["x-sluicegate-cache"] == "miss"
    assert chat_calls(upstream) == 2


def test_no_cache_goes_upstream_and_refreshes(server: GatewayServer, upstream: MockUpstream) -> None:
    """Cache-Control: no-cache skips the stored answer, and the fresh one is then served."""
    chat(server)
    assert chat(server, cache_control="no-cache")[1]["x-sluicegate-cache"] == "miss"
    assert chat(server)[1]["x-sluicegate-cache"] == "hit-memory"
    assert chat_calls(upstream) == 2


def test_body_cache_object_never_reaches_the_upstream(server: GatewayServer, upstream: MockUpstream) -> None:
    """The body's cache object is taken out before the upstream call; a bad one is a 400."""
    status, _, _ = chat(server, chat_body(cache={"ttl": 120, "tags": ["q3-report"]}))
    assert status == 200
    sent = upstream.calls[-1].body
    assert sent is not None
    assert "cache" not in sent
    assert sent["messages"] == chat_body()["messages"]
    status, _, content = chat(server, chat_body(cache={"ttl": "soon"}))
    assert status == 400
    assert_openai_error(json.loads(content), param="cache.ttl")
    assert chat_calls(upstream) == 1
    status, result = call(server.url + "/api/ai/cache/invalidate", "POST", {"tag": "q3-report"})
    assert result["deleted"]["memory"] == 1


def test_streamed_hit_is_cacheable(server: GatewayServer, upstream: MockUpstream) -> None:
    """A stream replayed from the cache keeps the cache's headers instead of no-cache."""
    body = chat_body(stream=True)
    status, first, original = chat(server, body)
    assert (status, first["x-sluicegate-cache"]) == (200, "miss")
    status, second, replay = chat(server, body)
    assert second["x-sluicegate-cache"] == "hit-memory"
    assert second["content-type"].startswith("text/event-stream")
    assert second["cache-control"].startswith("private, max-age=")
    assert replay == original
    assert replay.endswith(b"data: [DONE]\n\n")
    assert chat_calls(upstream) == 1


def test_unknown_feature_header_is_rejected(server: GatewayServer) -> None:
    """A feature that is not configured is a 400 naming the feature param, not a silent default."""
    status, _, content = http(
        server.url + "/v1/chat/completions", "POST", chat_body(), {"x-sluicegate-feature": "nope"}
    )
    assert status == 400
    assert_openai_error(json.loads(content), param="feature")
