"""Tenant isolation over real HTTP: org A's key never reads or changes org B's data, on any route.

Two orgs, acme (A) and globex (B), each with a virtual key, and the admin key. Every route the
server registers is listed in `ROUTES` with how it keeps tenants apart; the first test pins that
list to the app's routing table, so that a new route cannot arrive without being audited here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sluicegate import RequestContext, create_gateway
from sluicegate.server.app import create_app
from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body
from tests.server.test_cache_routes import ADMIN, call, http

# Every (method, path) the app serves, and what keeps one org out of another's data there.
ROUTES = {
    ("POST", "/v1/chat/completions"): "the org comes from the key; cache entries are scoped by org",
    ("POST", "/chat/completions"): "same handler as /v1/chat/completions",
    ("POST", "/v1/embeddings"): "the org comes from the key",
    ("POST", "/embeddings"): "same handler as /v1/embeddings",
    ("GET", "/v1/models"): "no tenant data",
    ("GET", "/models"): "no tenant data",
    ("GET", "/v1/models/"): "no tenant data",
    ("GET", "/models/"): "no tenant data",
    ("GET", "/api/ai/status"): "public health; every org's traffic totals only for the admin",
    ("GET", "/api/ai/keys"): "admin only",
    ("POST", "/api/ai/keys"): "admin only",
    ("DELETE", "/api/ai/keys/"): "admin only",
    ("POST", "/api/ai/keys/"): "admin only (rotate)",
    ("GET", "/api/ai/cache"): "admin only",
    ("POST", "/api/ai/cache/invalidate"): "admin only",
    ("POST", "/api/ai/cache/bump"): "admin only",
    ("POST", "/api/ai/cache/warm"): "admin only",
    ("GET", "/api/ai/usage"): "an org's key sees its own org, whatever it asks",
    ("GET", "/api/ai/stop"): "admin only",
    ("POST", "/api/ai/stop"): "admin only",
    ("POST", "/api/ai/resume"): "admin only",
    ("GET", "/api/ai/budgets"): "admin only",
    ("POST", "/api/ai/budgets"): "admin only",
    ("DELETE", "/api/ai/budgets"): "admin only",
    ("POST", "/api/ai/browser-tokens"): "the token's org is the key's",
    ("GET", "/sdk/sluicegate.js"): "static",
    ("GET", "/sdk/demo"): "static",
}


@dataclass
class Tenants:
    """A gateway with keys required, and each org's key, key id and browser token."""

    server: GatewayServer
    upstream: MockUpstream
    keys: dict[str, str]
    ids: dict[str, str]
    tokens: dict[str, str]

    def url(self, path: str) -> str:
        """The full URL of ``path``."""
        return self.server.url + path

    def chat(self, org: str, content: str, **headers: str) -> tuple[int, dict[str, str], Any]:
        """A chat completion with ``org``'s key; the status, headers and raw body."""
        named = {"authorization": f"Bearer {self.keys[org]}"}
        named.update({name.replace("_", "-"): value for name, value in headers.items()})
        body = chat_body(messages=[{"role": "user", "content": content}])
        return http(self.url("/v1/chat/completions"), "POST", body, named)


@pytest.fixture
def tenants(upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tenants]:
    """acme and globex, each with a key and a browser token, on a gateway that requires keys."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", ADMIN)
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as server:
        keys, ids, tokens = {}, {}, {}
        for org, user in (("acme", "ann"), ("globex", "gus")):
            status, made = call(server.url + "/api/ai/keys", "POST", {"org": org, "user": user}, ADMIN)
            assert status == 201
            keys[org], ids[org] = made["key"], made["id"]
            status, minted = call(server.url + "/api/ai/browser-tokens", "POST", {"user": user}, made["key"])
            assert status == 201 and minted["org"] == org
            tokens[org] = minted["token"]
        yield Tenants(server, upstream, keys, ids, tokens)


def test_every_route_is_audited(tmp_path: Path) -> None:
    """The routes listed here are exactly the routes the app serves."""
    app = create_app(mock_settings(data_dir=tmp_path))
    served = {(method, path) for path, methods in app._routes.items() for method in methods}
    served |= {(method, prefix) for prefix, methods in app._prefixes for method in methods}
    assert served == set(ROUTES)


# Admin routes, each naming globex, in groups of at most five: past five failures in a minute,
# one address is answered more and more slowly (server/auth_delay.py).
ADMIN_ATTEMPTS = {
    "keys": [
        ("GET", "/api/ai/keys?org=globex", None),
        ("POST", "/api/ai/keys", {"org": "globex", "name": "mine now"}),
        ("DELETE", "/api/ai/keys/{globex}", None),
        ("POST", "/api/ai/keys/{globex}/rotate", {"grace_s": 0}),
    ],
    "cache": [
        ("GET", "/api/ai/cache", None),
        ("POST", "/api/ai/cache/invalidate", {"org": "globex", "tag": "shared"}),
        ("POST", "/api/ai/cache/bump", {"feature": "insights"}),
        (
            "POST",
            "/api/ai/cache/warm",
            {"requests": [{"org": "globex", "feature": "insights", **chat_body()}]},
        ),
    ],
    "controls": [
        ("GET", "/api/ai/stop", None),
        ("POST", "/api/ai/stop", {"org": "globex", "reason": "sabotage"}),
        ("POST", "/api/ai/resume", {"org": "globex"}),
        ("GET", "/api/ai/budgets", None),
        ("POST", "/api/ai/budgets", {"org": "globex", "limit_usd": 0}),
        ("DELETE", "/api/ai/budgets?org=globex", None),
    ],
}


@pytest.mark.parametrize("group", sorted(ADMIN_ATTEMPTS))
def test_admin_routes_refuse_org_keys_and_browser_tokens(tenants: Tenants, group: str) -> None:
    """An org's key gets a 401 and its browser token a 403; globex's key, cache and budget are intact."""
    assert tenants.chat("globex", "before")[0] == 200
    for method, path, body in ADMIN_ATTEMPTS[group]:
        url = tenants.url(path.format(globex=tenants.ids["globex"]))
        status, answer = call(url, method, body, tenants.keys["acme"])
        assert (status, answer["error"]["type"]) == (401, "authentication_error"), (method, path)
        assert "admin key" in answer["error"]["message"]
        status, answer = call(url, method, body, tenants.tokens["acme"])
        assert (status, answer["error"]["type"]) == (403, "permission_error"), (method, path)
    # Nothing changed for globex: its key works, is not rotated, and it has no stop or budget.
    status, headers, _ = tenants.chat("globex", "before")
    assert status == 200 and headers["x-sluicegate-cache"] == "hit-memory"
    _, listed = call(tenants.url("/api/ai/keys"), key=ADMIN)
    assert sorted(k["org"] for k in listed["data"]) == ["acme", "globex"]
    assert all(k["expires_at"] is None for k in listed["data"])
    assert call(tenants.url("/api/ai/stop"), key=ADMIN)[1]["stops"] == []
    assert call(tenants.url("/api/ai/budgets"), key=ADMIN)[1]["budgets"] == []


def test_usage_is_the_callers_own_whatever_it_asks(tenants: Tenants) -> None:
    """Query parameters naming globex, its user or its key still give acme's usage and budget only."""
    for org in ("acme", "globex"):
        assert call(tenants.url("/api/ai/budgets"), "POST", {"org": org, "limit_usd": 10}, ADMIN)[0] == 201
    tenants.chat("acme", "plan q3")
    tenants.chat("globex", "plan q4")
    tenants.chat("globex", "plan q5")
    for query in (
        "org=globex",
        "org=globex&group_by=org,user,key_id",
        "user=gus",
        "group_by=key_id&org=",
        "org=acme&org=globex",
    ):
        status, report = call(tenants.url("/api/ai/usage?" + query), key=tenants.keys["acme"])
        assert status == 200, query
        assert report["totals"]["requests"] in (0, 1), query  # acme made one; gus is not acme's
        assert all(row.get("org", "acme") == "acme" for row in report["data"]), query
        assert all(row.get("key_id", tenants.ids["acme"]) == tenants.ids["acme"] for row in report["data"])
        assert [b["scope"] for b in report["budgets"]] == ["org:acme"], query
    _, everything = call(tenants.url("/api/ai/usage?group_by=org"), key=ADMIN)
    assert {r["org"]: r["requests"] for r in everything["data"]} == {"acme": 1, "globex": 2}
    status, answer = call(tenants.url("/api/ai/usage?org=globex"), key=tenants.tokens["acme"])
    assert (status, answer["error"]["type"]) == (403, "permission_error")
    assert call(tenants.url("/api/ai/usage?org=globex"))[0] == 401


def test_requests_naming_the_other_org_stay_in_their_own(tenants: Tenants) -> None:
    """Org names in headers or the body are ignored: usage and cache entries are the key's org's."""
    body = chat_body(metadata={"org": "globex", "feature": "insights"}, org="globex")
    headers = {
        "authorization": f"Bearer {tenants.keys['acme']}",
        "x-sluicegate-org": "globex",
        "x-sluicegate-tenant": "globex",
    }
    status, _, raw = http(tenants.url("/v1/chat/completions"), "POST", body, headers)
    assert status == 200, raw
    status, _, raw = http(
        tenants.url("/v1/embeddings"),
        "POST",
        {"model": "text-embedding-3-small", "input": "hi", "metadata": {"org": "globex"}},
        headers,
    )
    assert status == 200, raw
    _, everything = call(tenants.url("/api/ai/usage?group_by=org"), key=ADMIN)
    assert [(r["org"], r["requests"]) for r in everything["data"]] == [("acme", 2)]
    # globex asking the same question does not get acme's entry.
    status, answered, _ = tenants.chat("globex", "Suggest an OKR", x_sluicegate_feature="insights")
    assert status == 200 and answered["x-sluicegate-cache"] == "miss"


@pytest.mark.parametrize("feature", ["insights", "chat"])  # scoped by org, and by user
def test_cache_entries_are_never_shared_between_orgs(tenants: Tenants, feature: str) -> None:
    """The same question from globex, even as the same user name and with acme's ETag, goes upstream."""

    def ask(org: str, **headers: str) -> tuple[int, dict[str, str]]:
        status, answered, _ = tenants.chat(
            org, "same question", x_sluicegate_feature=feature, x_sluicegate_user="ann", **headers
        )
        return status, answered

    def upstream_calls() -> int:
        return sum(1 for c in tenants.upstream.calls if c.path.endswith("/chat/completions"))

    status, first = ask("acme")
    assert status == 200 and first["x-sluicegate-cache"] == "miss" and upstream_calls() == 1
    assert ask("acme")[1]["x-sluicegate-cache"] == "hit-memory"
    status, other = ask("globex")
    assert status == 200 and other["x-sluicegate-cache"] == "miss" and upstream_calls() == 2
    # acme's ETag does not reach acme's entry either: globex's request goes upstream, and only
    # its own fresh answer (the mock's is the same text) can make it a 304.
    status, _ = ask("globex", cache_control="no-cache", if_none_match=first["etag"])
    assert status in (200, 304) and upstream_calls() == 3
    _, everything = call(tenants.url("/api/ai/usage?group_by=org"), key=ADMIN)
    by_org = {r["org"]: r for r in everything["data"]}
    assert (by_org["acme"]["cache_hits"], by_org["globex"]["cache_hits"]) == (1, 0)


def test_invalidation_by_tag_for_one_org_spares_the_other(tenants: Tenants) -> None:
    """The admin invalidating a tag for acme leaves globex's entries with the same tag in place."""
    for org in ("acme", "globex"):
        body = chat_body(cache={"tags": ["shared"]})
        headers = {"authorization": f"Bearer {tenants.keys[org]}", "x-sluicegate-feature": "insights"}
        assert (
            http(tenants.url("/v1/chat/completions"), "POST", body, headers)[1]["x-sluicegate-cache"]
            == "miss"
        )
    status, report = call(
        tenants.url("/api/ai/cache/invalidate"), "POST", {"tag": "shared", "org": "acme"}, ADMIN
    )
    assert status == 200, report
    for org, expected in (("globex", "hit"), ("acme", "miss")):
        headers = {"authorization": f"Bearer {tenants.keys[org]}", "x-sluicegate-feature": "insights"}
        answered = http(tenants.url("/v1/chat/completions"), "POST", chat_body(), headers)[1]
        assert answered["x-sluicegate-cache"].startswith(expected), org


def test_browser_tokens_are_bound_to_the_minting_org(tenants: Tenants) -> None:
    """A token minted with acme's key is acme's, whatever the mint body or the request says."""
    asked = {"user": "ann", "org": "globex"}
    status, refused = call(tenants.url("/api/ai/browser-tokens"), "POST", asked, tenants.keys["acme"])
    assert status == 400 and refused["error"]["param"] == "org"  # the org is not the body's to say
    status, minted = call(
        tenants.url("/api/ai/browser-tokens"), "POST", {"user": "ann"}, tenants.keys["acme"]
    )
    assert status == 201 and minted["org"] == "acme"
    headers = {
        "authorization": f"Bearer {minted['token']}",
        "x-sluicegate-feature": "chat",
        "x-sluicegate-org": "globex",
    }
    body = chat_body(metadata={"org": "globex"})
    assert http(tenants.url("/v1/chat/completions"), "POST", body, headers)[0] == 200
    _, everything = call(tenants.url("/api/ai/usage?group_by=org"), key=ADMIN)
    assert [r["org"] for r in everything["data"]] == ["acme"]


def test_status_shows_traffic_totals_to_the_admin_only(tenants: Tenants) -> None:
    """Every org's request and token totals are the admin's to see, not an org's."""
    tenants.chat("globex", "busy")
    for key in (None, tenants.keys["acme"], tenants.tokens["acme"]):
        status, body = call(tenants.url("/api/ai/status"), key=key)
        assert status == 200 and body["live"] is True and "traffic" not in body
    _, body = call(tenants.url("/api/ai/status"), key=ADMIN)
    assert body["traffic"]["requests"] >= 1


async def test_usage_without_keys_but_with_an_admin_key_is_the_dev_orgs(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys off and an admin key set: a caller without it sees the dev org's usage, not every org's."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", ADMIN)
    settings = mock_settings(upstream.url, data_dir=tmp_path)
    async with create_gateway(settings) as library:  # the library serves another org
        body = chat_body()
        await library.send(library.new_call("chat", body, RequestContext("globex", None, "chat")))
    with GatewayServer(settings) as server:
        assert http(server.url + "/v1/chat/completions", "POST", chat_body())[0] == 200
        for key in (None, "not-the-admin-key"):
            status, own = call(server.url + "/api/ai/usage?org=globex", key=key)
            assert status == 200 and own["filters"] == {"org": "local"}
            assert [r["org"] for r in own["data"]] == ["local"]
        _, everything = call(server.url + "/api/ai/usage", key=ADMIN)
        assert sorted(r["org"] for r in everything["data"]) == ["globex", "local"]
