"""The /api/ai routes: status, and key management (create, list, revoke, rotate) with the admin key."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sluicegate import create_gateway
from sluicegate.server.app import create_app
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body


def call(
    url: str, method: str = "GET", body: Any = None, key: str | None = None, **headers: str
) -> tuple[int, Any]:
    """One request; the status and the parsed JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_reports_dependencies(server: GatewayServer) -> None:
    """Status is live and ready, with the database probed and Redis disabled."""
    status, body = call(server.url + "/api/ai/status")
    assert status == 200
    assert body["live"] is True and body["ready"] is True and body["status"] == "ok"
    assert body["dependencies"]["database"]["status"] == "up"
    assert body["dependencies"]["redis"]["status"] == "disabled"
    assert body["providers"] == {"upstream": {"kind": "openai"}}
    assert body["ledger"] == {"backlog": 0} and body["controls_read"] is True


async def test_status_does_not_wait_for_a_hanging_probe(tmp_path: Path) -> None:
    """Status reads cached probe results, so a hung dependency cannot hold it up."""
    gateway = create_gateway(mock_settings(data_dir=tmp_path))
    release = asyncio.Event()

    async def hangs() -> None:
        await release.wait()

    gateway.probes._probes["slow-dependency"] = hangs
    probing = asyncio.create_task(gateway.probes.check_once())
    app = create_app(gateway=gateway)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/api/ai/status", "headers": []}
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    assert not probing.done()
    body = json.loads(sent[1]["body"])
    assert body["dependencies"]["slow-dependency"] == {"status": "unknown", "required": False}
    release.set()
    await probing
    await gateway.aclose()


def test_open_admin_routes_refuse_web_pages(server: GatewayServer) -> None:
    """With no admin key (local development), a web page the developer opens must not reach the
    admin routes: a request with an Origin gets a 403, and nothing changed."""
    status, body = call(
        server.url + "/api/ai/stop", "POST", {"reason": "csrf"}, Origin="https://evil.example"
    )
    assert status == 403 and "web pages" in body["error"]["message"]
    status, body = call(server.url + "/api/ai/cache/bump", "POST", {"feature": "chat"}, Origin="null")
    assert status == 403
    assert call(server.url + "/api/ai/stop")[1]["stops"] == []
    assert call(server.url + "/api/ai/status")[0] == 200  # the CLI and curl send no Origin


def test_traffic_counts_requests(server: GatewayServer) -> None:
    """Status shows the requests served so far."""
    call(server.url + "/v1/chat/completions", "POST", chat_body())
    _, body = call(server.url + "/api/ai/status")
    assert body["traffic"]["requests"] == 1 and body["traffic"]["prompt_tokens"] > 0


def test_keys_lifecycle_over_http(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With keys required: the admin creates a key, it works, it is revoked, it stops working."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(
        upstream.url, data_dir=tmp_path, auth={"require_keys": True, "key_cache_seconds": 0}
    )
    with GatewayServer(settings) as gw:
        assert call(gw.url + "/api/ai/keys", "POST", {"org": "acme"})[0] == 401
        assert call(gw.url + "/api/ai/keys", "POST", {"org": "acme"}, key="wrong")[0] == 401
        assert call(gw.url + "/api/ai/keys", "POST", {"user": "x"}, key="admin-secret")[0] == 400
        status, created = call(
            gw.url + "/api/ai/keys", "POST", {"org": "acme", "name": "web"}, key="admin-secret"
        )
        assert status == 201 and created["key"].startswith("sk-sg-")
        status, listed = call(gw.url + "/api/ai/keys", key="admin-secret")
        assert [k["id"] for k in listed["data"]] == [created["id"]]
        assert "key" not in listed["data"][0]

        status, body = call(gw.url + "/v1/chat/completions", "POST", chat_body())
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        status, body = call(gw.url + "/api/ai/keys")  # an admin route names the admin key, not sk-sg-
        assert status == 401 and body["error"]["code"] == "missing_api_key"
        assert "admin key" in body["error"]["message"] and "sk-sg-" not in body["error"]["message"]
        status, body = call(gw.url + "/v1/chat/completions", "POST", chat_body(), key="sk-sg-made-up")
        assert status == 401 and body["error"]["type"] == "authentication_error"
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=created["key"])[0] == 200

        # A malformed URL revokes nothing, not the id at its end.
        for path in (f"/api/ai/keys/not-a-key/{created['id']}", f"/api/ai/keys/{created['id']}/rotate"):
            status, body = call(gw.url + path, "DELETE", key="admin-secret")
            assert (status, body["error"]["code"]) == (404, "unknown_url"), (path, body)
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=created["key"])[0] == 200
        status, _ = call(gw.url + f"/api/ai/keys/{created['id']}", "DELETE", key="admin-secret")
        assert status == 200
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=created["key"])[0] == 401
        assert call(gw.url + "/api/ai/keys/nope", "DELETE", key="admin-secret")[0] == 404


def test_with_the_database_down_admin_routes_and_keys_say_503_not_500(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator mid-incident is told the database is unreachable, with Retry-After."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(
        upstream.url,
        data_dir=tmp_path,
        auth={"require_keys": True},
        database={"url": "postgresql+asyncpg://nobody@127.0.0.1:1/none", "migrate_on_start": False},
    )
    with GatewayServer(settings) as gw:
        for path, method, key in (
            ("/api/ai/keys", "GET", "admin-secret"),
            ("/api/ai/budgets", "GET", "admin-secret"),
            ("/v1/models", "GET", "sk-sg-some-key"),
        ):
            status, body = call(gw.url + path, method, key=key)
            assert status == 503 and body["error"]["code"] == "database_unavailable", (path, body)
        _, status_body = call(gw.url + "/api/ai/status")
        assert status_body["controls_read"] is False and status_body["status"] != "ok"


def test_admin_routes_closed_without_admin_key(upstream: MockUpstream, tmp_path: Path) -> None:
    """With keys required and no admin key configured, admin routes answer 403."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        status, body = call(gw.url + "/api/ai/keys", key="anything")
    assert status == 403 and "SLUICEGATE_ADMIN_KEY" in body["error"]["message"]


def test_rotate_over_http(upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin rotates a key: both work during the grace; after it the old one gets a clear 401."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        keys = gw.url + "/api/ai/keys"
        _, old = call(keys, "POST", {"org": "acme", "user": "ann", "name": "web"}, key="admin-secret")
        rotate = f"{keys}/{old['id']}/rotate"
        assert call(rotate, "POST", {"grace_s": 60}, key=old["key"])[0] == 401
        assert call(rotate, "POST", {"grace_s": "soon"}, key="admin-secret")[0] == 400
        assert call(rotate, "POST", {"grace": 60}, key="admin-secret")[0] == 400
        assert call(f"{keys}/nope/rotate", "POST", key="admin-secret")[0] == 404
        assert call(f"{keys}/{old['id']}/spin", "POST", key="admin-secret")[0] == 404

        status, new = call(rotate, "POST", {"grace_s": 2}, key="admin-secret")
        assert status == 201 and new["key"].startswith("sk-sg-") and new["key"] != old["key"]
        assert (new["org"], new["user"], new["name"]) == ("acme", "ann", "web")
        assert new["replaces"]["id"] == old["id"] and new["replaces"]["replaced_by"] == new["id"]
        assert "key" not in new["replaces"]
        _, listed = call(keys, key="admin-secret")
        by_id = {k["id"]: k for k in listed["data"]}
        assert by_id[old["id"]]["expires_at"] == new["replaces"]["expires_at"]
        assert by_id[old["id"]]["replaced_by_prefix"] == new["prefix"]
        for key in (old["key"], new["key"]):
            assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=key)[0] == 200

        status, again = call(rotate, "POST", key="admin-secret")
        assert (status, again["error"]["code"]) == (400, "key_not_rotatable")
        assert "already rotated" in again["error"]["message"]

        expiry = datetime.fromisoformat(new["replaces"]["expires_at"])
        time.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.1)
        status, body = call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=old["key"])
        assert status == 401
        error = body["error"]
        assert (error["type"], error["code"]) == ("authentication_error", "expired_api_key")
        assert "rotated and expired at" in error["message"] and new["prefix"] in error["message"]
        assert new["key"] not in error["message"]
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=new["key"])[0] == 200
        # Without a body, the grace is 24 h.
        status, third = call(f"{keys}/{new['id']}/rotate", "POST", key="admin-secret")
        left = datetime.fromisoformat(third["replaces"]["expires_at"]) - datetime.now(UTC)
        assert status == 201 and timedelta(hours=23, minutes=59) < left <= timedelta(hours=24)


def test_rotating_with_no_grace_refuses_the_old_key_at_once(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grace of 0 ends the old key immediately, even though this worker had it cached."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        _, old = call(gw.url + "/api/ai/keys", "POST", {"org": "acme"}, key="admin-secret")
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=old["key"])[0] == 200
        rotate = f"{gw.url}/api/ai/keys/{old['prefix']}/rotate"
        assert call(rotate, "POST", {"grace_s": 0}, key="admin-secret")[0] == 201
        status, body = call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=old["key"])
        assert (status, body["error"]["code"]) == (401, "expired_api_key")
        status, body = call(rotate, "POST", key="admin-secret")
        assert status == 400 and "expired at" in body["error"]["message"]


def test_admin_bodies_refuse_unknown_fields_and_orgs_with_a_slash(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo is a 400 naming it, not a request with the field left out: `orgg` must not stop
    every org, `usr` must not replace the org's own budget. An org named `acme/user:boss`
    would share the budget of acme's user boss: refused."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    with GatewayServer(mock_settings(upstream.url, data_dir=tmp_path)) as gw:
        for path, body, param in (
            ("/api/ai/stop", {"orgg": "acme", "reason": "x"}, "orgg"),
            ("/api/ai/resume", {"org": "acme", "reason": "x"}, "reason"),
            ("/api/ai/budgets", {"org": "acme", "limit_usd": 1, "usr": "ann"}, "usr"),
            ("/api/ai/keys", {"org": "acme", "nmae": "web"}, "nmae"),
            ("/api/ai/keys", {"orgg": "acme"}, "orgg"),  # named even with the org missing
            ("/api/ai/budgets", {"orgg": "acme", "limit_usd": 1}, "orgg"),
            ("/api/ai/cache/bump", {"featur": "chat"}, "featur"),
            ("/api/ai/keys/abc/rotate", {"grace": 60}, "grace"),
            ("/api/ai/browser-tokens", {"user": "ann", "feature": ["chat"]}, "feature"),
            ("/api/ai/budgets", {"org": "acme/user:boss", "limit_usd": 1}, "org"),
            ("/api/ai/keys", {"org": "acme/user:boss"}, "org"),
        ):
            status, answer = call(gw.url + path, "POST", body, key="admin-secret")
            assert (status, answer["error"]["param"]) == (400, param), (path, answer)
        assert call(gw.url + "/api/ai/stop", key="admin-secret")[1]["stops"] == []
        assert call(gw.url + "/api/ai/budgets", key="admin-secret")[1]["budgets"] == []


def test_models_need_a_key_when_keys_are_required_and_a_revocation_keeps_its_time(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        assert call(gw.url + "/v1/models")[0] == 401
        assert call(gw.url + "/v1/models", key="sk-sg-made-up")[0] == 401
        _, created = call(gw.url + "/api/ai/keys", "POST", {"org": "acme"}, key="admin-secret")
        assert call(gw.url + "/v1/models", key=created["key"])[0] == 200
        assert call(gw.url + "/v1/models", key="admin-secret")[0] == 200
        first = call(gw.url + f"/api/ai/keys/{created['id']}", "DELETE", key="admin-secret")[1]
        time.sleep(0.01)
        again = call(gw.url + f"/api/ai/keys/{created['id']}", "DELETE", key="admin-secret")[1]
        assert again["revoked_at"] == first["revoked_at"] is not None
