"""``GET /api/ai/usage`` over real HTTP: sums from the ledger, and each org sees only its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from sluicegate.testing import GatewayServer, MockUpstream, mock_settings
from tests.conftest import chat_body
from tests.server.test_cache_routes import ADMIN, call, http


def chat_as(server: GatewayServer, key: str, content: str, feature: str = "insights") -> None:
    headers = {"authorization": f"Bearer {key}", "x-sluicegate-feature": feature}
    body = chat_body()
    body["messages"] = [{"role": "user", "content": content}]
    status, _, raw = http(server.url + "/v1/chat/completions", "POST", body, headers)
    assert status == 200, raw


@pytest.fixture
def keyed(upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", ADMIN)
    settings = mock_settings(upstream.url, data_dir=tmp_path, auth={"require_keys": True})
    with GatewayServer(settings) as server:
        keys = {}
        for org in ("acme", "globex"):
            status, made = call(server.url + "/api/ai/keys", "POST", {"org": org}, ADMIN)
            assert status == 201
            keys[org] = made["key"]
        yield server, keys


def test_usage_sums_cost_and_savings_and_orgs_see_only_their_own(keyed: Any) -> None:
    server, keys = keyed
    chat_as(server, keys["acme"], "plan q3")
    chat_as(server, keys["acme"], "plan q3")  # a hit
    chat_as(server, keys["globex"], "plan q4", feature="chat")

    status, everything = call(server.url + "/api/ai/usage?group_by=org,feature", key=ADMIN)
    assert status == 200
    rows = {(r["org"], r["feature"]): r for r in everything["data"]}
    acme = rows[("acme", "insights")]
    assert (acme["requests"], acme["upstream_calls"], acme["cache_hits"]) == (2, 1, 1)
    assert acme["cost_micro"] > 0 and acme["saved_micro"] == acme["cost_micro"]
    assert acme["period"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert rows[("globex", "chat")]["requests"] == 1
    assert everything["totals"]["requests"] == 3

    # An org's key sees its own org only, even when it asks for another one.
    status, own = call(server.url + "/api/ai/usage?org=globex&period=month", key=keys["acme"])
    assert status == 200
    assert [r["org"] for r in own["data"]] == ["acme"] and own["filters"] == {"org": "acme"}
    assert own["data"][0]["period"] == time.strftime("%Y-%m", time.gmtime())


def test_usage_shows_the_callers_budgets_with_their_forecasts(keyed: Any) -> None:
    server, keys = keyed
    for org in ("acme", "globex"):
        assert call(server.url + "/api/ai/budgets", "POST", {"org": org, "limit_usd": 25}, ADMIN)[0] == 201
    chat_as(server, keys["acme"], "plan q3")
    status, everything = call(server.url + "/api/ai/usage", key=ADMIN)
    assert status == 200
    assert [b["scope"] for b in everything["budgets"]] == ["org:acme", "org:globex"]
    acme = everything["budgets"][0]
    assert acme["spent_usd"] > 0 and acme["forecast_usd"] >= acme["spent_usd"] and acme["limit_usd"] == 25
    status, own = call(server.url + "/api/ai/usage", key=keys["globex"])
    assert [b["scope"] for b in own["budgets"]] == ["org:globex"]


def test_usage_needs_a_key_and_checks_its_parameters(keyed: Any) -> None:
    server, keys = keyed
    assert call(server.url + "/api/ai/usage")[0] == 401
    for query, code in (
        ("group_by=org,colour", "invalid_group_by"),
        ("period=fortnight", "invalid_period"),
        ("days=abc", "invalid_range"),
        ("since=10&until=5", "invalid_range"),
    ):
        status, body = call(server.url + "/api/ai/usage?" + query, key=keys["acme"])
        assert (status, body["error"]["code"]) == (400, code), query


def test_usage_says_when_the_ledger_is_off(upstream: MockUpstream, tmp_path: Path) -> None:
    settings = mock_settings(upstream.url, data_dir=tmp_path, ledger={"enabled": False})
    with GatewayServer(settings) as server:
        status, body = call(server.url + "/api/ai/usage")
    assert (status, body["error"]["code"]) == (404, "ledger_disabled")


def test_budgets_route_sets_and_lists_and_refuses_bad_values(keyed: Any) -> None:
    server, keys = keyed
    status, made = call(server.url + "/api/ai/budgets", "POST", {"org": "acme", "limit_usd": 25}, ADMIN)
    assert status == 201 and made["scope"] == "org:acme" and made["limit_usd"] == 25
    status, listed = call(server.url + "/api/ai/budgets", key=ADMIN)
    assert [b["scope"] for b in listed["budgets"]] == ["org:acme"]
    status, user = call(
        server.url + "/api/ai/budgets",
        "POST",
        {"org": "acme", "user": "ann", "limit_usd": 2, "period": "day"},
        ADMIN,
    )
    assert status == 201 and user["scope"] == "org:acme/user:ann"
    two = {"org": "acme", "user": "ann", "feature": "chat", "limit_usd": 1}
    for bad in ({"org": "acme", "limit_usd": -1}, {"org": "acme", "limit_usd": "x"}, {"limit_usd": 5}, two):
        assert call(server.url + "/api/ai/budgets", "POST", bad, ADMIN)[0] == 400
    assert (
        call(server.url + "/api/ai/budgets", "POST", {"org": "acme", "limit_usd": 1}, keys["acme"])[0] == 401
    )


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        ({"org": "acme", "limit_usd": 5, "period": "year"}, "period", "period must be day, week or month"),
        ({"org": "acme", "limit_usd": 1e13}, "limit_usd", "at most $1,000,000,000"),
        ({"org": "acme", "limit_usd": "0.0000001"}, "limit_usd", "at most 6 decimals"),
        (
            {"org": "acme", "limit_usd": 5, "feature": "nope"},
            "feature",
            "feature must be a configured feature",
        ),
    ],
    ids=["period", "too-large", "below-a-micro-dollar", "unknown-feature"],
)
def test_setting_a_budget_names_the_field_that_is_wrong(
    keyed: Any, body: dict[str, Any], param: str, said: str
) -> None:
    server, _ = keyed
    status, answer = call(server.url + "/api/ai/budgets", "POST", body, ADMIN)
    assert status == 400, answer
    assert answer["error"]["param"] == param and said in answer["error"]["message"]


def test_usage_of_a_model_alias_is_the_usage_of_its_model(upstream: MockUpstream, tmp_path: Path) -> None:
    """The ledger records a model by its configured name: asking by an alias finds its rows."""
    models = {"gpt-4o-mini": {"provider": "upstream", "aliases": ["fast"]}}
    settings = mock_settings(upstream.url, data_dir=tmp_path, models=models)
    with GatewayServer(settings) as server:
        status, _, raw = http(server.url + "/v1/chat/completions", "POST", {**chat_body(), "model": "fast"})
        assert status == 200, raw
        for name in ("fast", "gpt-4o-mini"):
            status, found = call(server.url + f"/api/ai/usage?model={name}")
            assert status == 200 and found["totals"]["requests"] == 1, (name, found)
            assert found["filters"]["model"] == "gpt-4o-mini"


def test_a_key_budget_needs_one_of_the_orgs_keys(keyed: Any) -> None:
    """A budget for a key that does not exist, or is another org's, would never apply: a 400."""
    server, _ = keyed
    status, made = call(server.url + "/api/ai/keys", "POST", {"org": "acme"}, ADMIN)
    assert status == 201
    url = server.url + "/api/ai/budgets"
    for org, key in (("globex", made["id"]), ("acme", "nonexistent")):
        status, answer = call(url, "POST", {"org": org, "key": key, "limit_usd": 1}, ADMIN)
        assert (status, answer["error"]["param"]) == (400, "key"), answer
    assert call(url, "POST", {"org": "acme", "key": made["id"], "limit_usd": 1}, ADMIN)[0] == 201


def test_a_budget_deleted_at_run_time_stops_applying_at_once(keyed: Any) -> None:
    """`DELETE /api/ai/budgets?org=…` removes a budget set at run time: this worker stops
    refusing at once; a second delete, or one for a scope with no budget, is a 404."""
    server, keys = keyed
    url = server.url + "/api/ai/budgets"
    assert call(url, "POST", {"org": "acme", "limit_usd": 0}, ADMIN)[0] == 201
    body = {**chat_body(), "messages": [{"role": "user", "content": "over budget"}]}
    headers = {"authorization": f"Bearer {keys['acme']}"}
    status, _, raw = http(server.url + "/v1/chat/completions", "POST", body, headers)
    assert status == 429 and b"budget_exceeded" in raw
    status, deleted = call(url + "?org=acme", "DELETE", key=ADMIN)
    assert (status, deleted) == (200, {"scope": "org:acme", "deleted": True, "in_force": None})
    assert call(url, key=ADMIN)[1]["budgets"] == []
    status, _, raw = http(server.url + "/v1/chat/completions", "POST", body, headers)
    assert status == 200, raw
    status, again = call(url + "?org=acme", "DELETE", key=ADMIN)
    assert (status, again["error"]["code"]) == (404, "budget_not_found"), again
    assert "the org 'acme'" in again["error"]["message"]
    assert call(url + "?org=acme", "DELETE", key=keys["acme"])[0] == 401


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("", "org"),
        ("?org=", "org"),
        ("?org=acme&usr=ann", "usr"),
        ("?org=acme&user=ann&feature=chat", "feature"),
        ("?org=acme&user=", "user"),
        ("?org=acme/user:ann", "org"),
    ],
)
def test_deleting_a_budget_names_the_parameter_that_is_wrong(keyed: Any, query: str, param: str) -> None:
    server, _ = keyed
    assert call(server.url + "/api/ai/budgets", "POST", {"org": "acme", "limit_usd": 3}, ADMIN)[0] == 201
    status, answer = call(server.url + "/api/ai/budgets" + query, "DELETE", key=ADMIN)
    assert (status, answer["error"]["param"]) == (400, param), answer
    assert [b["scope"] for b in call(server.url + "/api/ai/budgets", key=ADMIN)[1]["budgets"]] == ["org:acme"]


def test_deleting_a_run_time_budget_brings_back_the_configs(
    upstream: MockUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A budget of the config file can only be removed there; one set at run time over it can
    be deleted, and the config's applies again."""
    monkeypatch.setenv("SLUICEGATE_ADMIN_KEY", ADMIN)
    budgets = {"orgs": [{"org": "acme", "limit_usd": 5}]}
    with GatewayServer(mock_settings(upstream.url, data_dir=tmp_path, budgets=budgets)) as server:
        url = server.url + "/api/ai/budgets"
        status, refused = call(url + "?org=acme", "DELETE", key=ADMIN)
        assert (status, refused["error"]["code"], refused["error"]["param"]) == (
            400,
            "budget_in_config",
            "org",
        )
        assert "config file" in refused["error"]["message"]
        assert call(url, "POST", {"org": "acme", "limit_usd": 10}, ADMIN)[0] == 201
        status, deleted = call(url + "?org=acme", "DELETE", key=ADMIN)
        assert status == 200 and deleted["in_force"]["limit_usd"] == 5, deleted
        assert [b["limit_usd"] for b in call(url, key=ADMIN)[1]["budgets"]] == [5]
