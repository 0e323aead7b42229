"""Minting browser tokens over HTTP, and what a browser token may and may not do."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluicegate import Settings, create_gateway
from sluicegate.auth import browser_token_secret
from sluicegate.browser_tokens import BrowserPrincipal, sign_token
from sluicegate.observe.events import RequestEvent
from sluicegate.server.app import create_app
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body

MINT = "/api/ai/browser-tokens"


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request; the status and the parsed JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    if key:
        request.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Recorder:
    """An event sink that keeps every event, to see whom each request was counted for."""

    def __init__(self) -> None:
        self.events: list[RequestEvent] = []

    def record(self, event: RequestEvent) -> None:
        """Keep the event."""
        self.events.append(event)


@pytest.fixture
def recorder() -> Recorder:
    """The events of the `recorded` gateway."""
    return Recorder()


@pytest.fixture
def recorded(http_settings: Settings, recorder: Recorder) -> Iterator[GatewayServer]:
    """The gateway over HTTP in dev mode, recording its events."""
    with GatewayServer(app=create_app(gateway=create_gateway(http_settings, sink=recorder))) as gw:
        yield gw


def mint(gw: GatewayServer, key: str | None = None, **body: Any) -> dict[str, Any]:
    """A browser token for ``body`` (user ann by default), asserting it was created."""
    status, minted = call(gw.url + MINT, "POST", {"user": "ann", **body}, key=key)
    assert status == 201, minted
    return minted


def test_dev_mode_mints_without_a_key(server: GatewayServer) -> None:
    """In dev mode no key is needed; the token is for the dev org, every configured feature and
    `default` (a request that names no feature)."""
    before = int(time.time())
    minted = mint(server)
    assert set(minted) == {"token", "expires_at", "org", "user", "features", "key_id"}
    assert minted["key_id"] is None  # no key in local development
    assert minted["token"].startswith("sgb_")
    assert (minted["org"], minted["user"]) == ("local", "ann")
    assert minted["features"] == ["okr-template", "chat", "insights", "preferences", "default"]
    assert before + 900 <= minted["expires_at"] <= int(time.time()) + 900


def test_features_and_ttl_can_be_narrowed(server: GatewayServer) -> None:
    """A token can carry fewer features and a shorter life than the defaults."""
    minted = mint(server, features=["chat", "chat"], ttl_s=60)
    assert minted["features"] == ["chat"]
    assert minted["expires_at"] <= int(time.time()) + 60


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "user"),
        ({"user": ""}, "user"),
        ({"user": "u" * 129}, "user"),
        ({"user": "a\x00b"}, "user"),
        ({"user": 7}, "user"),
        ({"user": "ann", "features": ["nope"]}, "features"),
        ({"user": "ann", "features": []}, "features"),
        ({"user": "ann", "features": "chat"}, "features"),
        ({"user": "ann", "ttl_s": 901}, "ttl_s"),
        ({"user": "ann", "ttl_s": 0}, "ttl_s"),
        ({"user": "ann", "ttl_s": True}, "ttl_s"),
        ({"user": "ann", "ttl_s": 1.5}, "ttl_s"),
    ],
)
def test_invalid_mint_requests(server: GatewayServer, body: dict[str, Any], param: str) -> None:
    """A bad user, feature list or lifetime is a 400 naming the parameter."""
    status, answer = call(server.url + MINT, "POST", body)
    assert status == 400 and answer["error"]["param"] == param, answer


def test_token_binds_org_and_user(recorded: GatewayServer, recorder: Recorder) -> None:
    """The token's user wins over the X-Sluicegate-User header, metadata.user and the body's user."""
    token = mint(recorded)["token"]
    body = chat_body(user="mallory", metadata={"user": "eve", "feature": "chat"})
    status, answer = call(
        recorded.url + "/v1/chat/completions", "POST", body, key=token, headers={"x-sluicegate-user": "bob"}
    )
    assert status == 200, answer
    event = recorder.events[-1]
    assert (event.org, event.user, event.feature) == ("local", "ann", "chat")


def test_feature_outside_the_token_is_forbidden(recorded: GatewayServer, upstream: MockUpstream) -> None:
    """A feature the token does not list is a 403 that names the allowed ones; nothing reaches upstream."""
    token = mint(recorded, features=["chat"])["token"]
    for headers in ({"x-sluicegate-feature": "insights"}, {}):
        status, answer = call(
            recorded.url + "/v1/chat/completions", "POST", chat_body(), key=token, headers=headers
        )
        assert status == 403, answer
        assert answer["error"]["type"] == "permission_error"
        assert answer["error"]["code"] == "feature_not_allowed" and "chat" in answer["error"]["message"]
    status, _ = call(
        recorded.url + "/v1/chat/completions",
        "POST",
        chat_body(),
        key=token,
        headers={"x-sluicegate-feature": "chat"},
    )
    assert status == 200 and len(upstream.calls) == 1


def test_forged_and_expired_tokens_fail_even_in_dev_mode(
    server: GatewayServer, http_settings: Settings
) -> None:
    """Dev mode ignores keys, but a browser token is always verified: forged or expired is a 401."""
    token = mint(server)["token"]
    payload, signature = token.split(".")
    forged = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    secret = browser_token_secret(http_settings)
    expired = sign_token(secret, BrowserPrincipal("local", "ann", ("chat",), int(time.time()) - 1))
    for bad, code in ((forged, "invalid_browser_token"), (expired, "browser_token_expired")):
        status, answer = call(server.url + "/v1/chat/completions", "POST", chat_body(), key=bad)
        assert status == 401 and answer["error"]["code"] == code, answer
        assert "backend" in answer["error"]["message"]


def test_secret_from_the_environment(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the secret variable set, tokens are signed with it, not with the pepper."""
    monkeypatch.setenv("SLUICEGATE_BROWSER_TOKEN_SECRET", "shared-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path)
    outsider = sign_token(
        b"shared-secret", BrowserPrincipal("local", "zoe", ("chat",), int(time.time()) + 60)
    )
    with GatewayServer(settings) as gw:
        status, _ = call(
            gw.url + "/v1/chat/completions",
            "POST",
            chat_body(),
            key=outsider,
            headers={"x-sluicegate-feature": "chat"},
        )
        assert status == 200
    assert not (tmp_path / "pepper").exists()


def test_browser_token_cannot_mint_or_administer(server: GatewayServer) -> None:
    """A browser token gets a 403 from the mint route and from admin routes, even in dev mode."""
    token = mint(server)["token"]
    status, answer = call(server.url + MINT, "POST", {"user": "bob"}, key=token)
    assert status == 403 and answer["error"]["code"] == "browser_token_not_allowed"
    status, answer = call(server.url + "/api/ai/keys", key=token)
    assert status == 403 and "browser tokens" in answer["error"]["message"]
    assert call(server.url + "/api/ai/keys")[0] == 200  # dev mode without a token: still open


def test_keys_required_mint_with_a_virtual_key(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """With keys required, minting needs a virtual key, and the token is for that key's org."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    app = create_app(gateway=create_gateway(settings, sink=recorder))
    with GatewayServer(app=app) as gw:
        _, created = call(gw.url + "/api/ai/keys", "POST", {"org": "acme"}, key="admin-secret")
        status, answer = call(gw.url + MINT, "POST", {"user": "ann"})
        assert status == 401 and answer["error"]["code"] == "missing_api_key"
        assert call(gw.url + MINT, "POST", {"user": "ann"}, key="sk-sg-made-up")[0] == 401
        minted = mint(gw, key=created["key"], features=["chat"])
        assert minted["org"] == "acme"
        status, _ = call(
            gw.url + "/v1/chat/completions",
            "POST",
            chat_body(),
            key=minted["token"],
            headers={"x-sluicegate-feature": "chat"},
        )
        assert status == 200
        assert call(gw.url + "/api/ai/keys", key=minted["token"])[0] == 403
    assert (recorder.events[-1].org, recorder.events[-1].user) == ("acme", "ann")


def test_a_token_shares_its_keys_budget_and_revocation(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token minted with a key counts against that key's budget, and stops working when the
    key is revoked: it cannot outlive or outspend the key that minted it."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", "admin-secret")
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as gw:
        _, created = call(gw.url + "/api/ai/keys", "POST", {"org": "acme"}, key="admin-secret")
        minted = mint(gw, key=created["key"], features=["chat"])
        assert minted["key_id"] == created["id"]
        ask = {"x-sluicegate-feature": "chat"}
        assert call(gw.url + "/v1/chat/completions", "POST", chat_body(), minted["token"], ask)[0] == 200
        budget = {"org": "acme", "key": created["id"], "limit_usd": 0}
        assert call(gw.url + "/api/ai/budgets", "POST", budget, key="admin-secret")[0] == 201
        body = chat_body(messages=[{"role": "user", "content": "another question"}])
        status, refused = call(gw.url + "/v1/chat/completions", "POST", body, minted["token"], ask)
        assert status == 429 and refused["error"]["code"] == "budget_exceeded"
        assert call(gw.url + f"/api/ai/keys/{created['id']}", "DELETE", key="admin-secret")[0] == 200
        status, refused = call(gw.url + "/v1/chat/completions", "POST", chat_body(), minted["token"], ask)
        assert status == 401 and "revoked" in refused["error"]["message"]
        assert refused["error"]["code"] == "browser_token_revoked"
