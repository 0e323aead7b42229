"""The /api/ai routes: status, and key management with the admin key."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sluicegate import create_gateway
from sluicegate.server.app import create_app
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body


def call(url: str, method: str = "GET", body: Any = None, key: str | None = None) -> tuple[int, Any]:
    """One request; the status and the parsed JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
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
        status, body = call(gw.url + "/v1/chat/completions", "POST", chat_body(), key="sk-sg-made-up")
        assert status == 401 and body["error"]["type"] == "authentication_error"
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=created["key"])[0] == 200

        status, _ = call(gw.url + f"/api/ai/keys/{created['id']}", "DELETE", key="admin-secret")
        assert status == 200
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), key=created["key"])[0] == 401
        assert call(gw.url + "/api/ai/keys/nope", "DELETE", key="admin-secret")[0] == 404


def test_admin_routes_closed_without_admin_key(upstream: MockUpstream, tmp_path: Path) -> None:
    """With keys required and no admin key configured, admin routes answer 403."""
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        status, body = call(gw.url + "/api/ai/keys", key="anything")
    assert status == 403 and "SLUICEGATE_ADMIN_KEY" in body["error"]["message"]
