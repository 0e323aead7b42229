"""Which budgets a call is under, and how their scopes read."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from sluicegate.admission.budget_scopes import Budget, BudgetIndex, new_budget, parse_scope, scope_of
from sluicegate.calls import RequestContext
from sluicegate.config import BudgetsConfig
from sluicegate.errors import InvalidRequest


@pytest.mark.parametrize(
    ("kind", "name", "scope"),
    [
        (None, None, "org:acme"),
        ("user", "ann", "org:acme/user:ann"),
        ("feature", "chat", "org:acme/feature:chat"),
        ("key", "k_12ab", "org:acme/key:k_12ab"),
    ],
)
def test_a_scope_names_the_org_first_and_reads_back(kind: str | None, name: str | None, scope: str) -> None:
    """The org leads every scope (one Redis Cluster slot per org), and parsing gives it back."""
    assert scope_of("acme", kind, name) == scope
    assert parse_scope(scope) == ("acme", kind, name)


def test_slashes_in_names_do_not_confuse_a_scope() -> None:
    """An org or a user whose name holds a slash reads back whole."""
    assert parse_scope("org:acme/eu") == ("acme/eu", None, None)
    assert parse_scope(scope_of("acme/eu", "user", "a/b")) == ("acme/eu", "user", "a/b")


def test_a_call_is_under_its_orgs_budget_then_its_users_features_and_keys() -> None:
    """Only the budgets that name the call's org, user, feature or key apply, org first."""
    budgets = {
        b.scope: b
        for b in (
            Budget("org:acme", 100, "month"),
            Budget("org:acme/user:ann", 10, "day"),
            Budget("org:acme/feature:chat", 50, "week"),
            Budget("org:acme/key:k1", 5, "day"),
            Budget("org:acme/user:bob", 10, "day"),
            Budget("org:other", 100, "month"),
        )
    }
    index = BudgetIndex(budgets)
    found = index.applicable(RequestContext("acme", "ann", "chat", "k1"))
    assert [b.scope for b in found] == [
        "org:acme",
        "org:acme/user:ann",
        "org:acme/feature:chat",
        "org:acme/key:k1",
    ]
    assert [b.scope for b in index.applicable(RequestContext("acme", None, "insights"))] == ["org:acme"]
    assert index.applicable(RequestContext("nobody", "ann", "chat")) == []
    only_users = BudgetIndex({"org:x/user:ann": Budget("org:x/user:ann", 1, "day")})
    assert [b.scope for b in only_users.applicable(RequestContext("x", "ann"))] == ["org:x/user:ann"]
    mixed = BudgetIndex(
        {
            "org:solo": Budget("org:solo", 5, "month"),  # an org budget alone: the fast path
            **budgets,
        }
    )
    assert [b.scope for b in mixed.applicable(RequestContext("solo", "ann", "chat", "k1"))] == ["org:solo"]
    assert len(mixed.applicable(RequestContext("acme", "ann", "chat", "k1"))) == len(found)


def test_a_budget_counts_the_ledger_rows_of_its_scope_and_describes_itself() -> None:
    """The ledger condition and the message follow the scope."""
    user = Budget("org:acme/user:ann", 10, "day")
    assert user.ledger_filter() == ('org = :o AND "user" = :n', {"o": "acme", "n": "ann"})
    assert Budget("org:acme", 1, "day").ledger_filter() == ("org = :o", {"o": "acme"})
    assert user.describe() == "the user 'ann' of the org 'acme'" and user.org == "acme"


def test_the_config_takes_one_narrowing_per_budget_and_one_budget_per_scope() -> None:
    """A budget for a user and a feature at once, or two for one scope, is refused at start-up."""
    ok = BudgetsConfig(orgs=({"org": "a", "limit_usd": 1}, {"org": "a", "user": "ann", "limit_usd": 1}))  # type: ignore[arg-type]
    assert [b.scope for b in ok.orgs] == ["org:a", "org:a/user:ann"]
    with pytest.raises(ValidationError, match="one user, one feature or one key"):
        BudgetsConfig(orgs=({"org": "a", "user": "ann", "feature": "chat", "limit_usd": 1},))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="more than one budget for org:a"):
        BudgetsConfig(orgs=({"org": "a", "limit_usd": 1}, {"org": "a", "limit_usd": 2}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("org", "limit", "period", "narrow", "param", "text"),
    [
        ("acme/user:boss", "1", "month", None, "org", "cannot contain '/'"),
        ("acme", "0.0000001", "month", None, "limit_usd", "at most 6 decimals"),
        ("acme", "2000000000", "month", None, "limit_usd", "at most $1,000,000,000"),
        ("acme", "1", "year", None, "period", "not 'year'"),
        ("acme", "1", "day", ("feature", "nope"), "feature", "not 'nope'"),
        ("acme", "1", "day", ("user", "a\x00b"), "user", "control characters"),
        ("o" * 128, "1", "day", ("user", "u" * 128), "user", "holds 160"),
    ],
)
def test_a_budget_set_at_run_time_is_checked_naming_the_field(
    org: str, limit: str, period: str, narrow: tuple[str, str] | None, param: str, text: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        new_budget(org, Decimal(limit), period, narrow, ("chat",), lambda field: f"--{field}")
    assert refused.value.param == param and text in refused.value.message
    assert refused.value.message.startswith(f"--{param} ")


def test_a_budget_set_at_run_time_names_its_scope() -> None:
    made = new_budget("acme", Decimal("2.5"), "week", ("user", "ann"), ())
    assert (made.scope, made.limit_micro, made.period) == ("org:acme/user:ann", 2_500_000, "week")
