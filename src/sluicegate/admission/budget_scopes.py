"""Which budgets a call is under: its org's, and optionally its user's, its feature's and its
virtual key's within that org, each named by a scope string.

A scope reads ``org:acme``, ``org:acme/user:alice``, ``org:acme/feature:chat`` or
``org:acme/key:k_12ab``. The org comes first so that every budget of an org shares its Redis
Cluster hash slot, and a call's budgets can be reserved together, atomically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..calls import RequestContext
from ..config_base import name_problem
from ..config_money import check_org_name, limit_micro
from ..errors import InvalidRequest
from .budget_math import Period

__all__ = ["KINDS", "Book", "Budget", "BudgetIndex", "budget_scope", "new_budget", "parse_scope", "scope_of"]

KINDS = ("user", "feature", "key")  # what a budget can narrow an org's spend to
MAX_SCOPE = 160  # the budget tables' scope columns


def scope_of(org: str, kind: str | None = None, name: str | None = None) -> str:
    """The scope of an org's budget, or of one of its users, features or keys."""
    return f"org:{org}" if kind is None else f"org:{org}/{kind}:{name}"


def budget_scope(
    org: str,
    narrow: tuple[str, str] | None,
    features: Collection[str] | None,
    spell: Callable[[str], str] = str,
) -> str:
    """The scope of an org's budget, or of one of its users, features or keys (``narrow``),
    checked (pure): `InvalidRequest` whose ``param`` is the field that cannot be one, and whose
    message calls it as the caller does (``spell``: ``org``, or the CLI's ``--org``). A feature
    must be one of ``features`` (None: any name, to delete the budget of one no longer configured)."""

    def refuse(field: str, why: str) -> InvalidRequest:
        return InvalidRequest(f"{spell(field)} {why}", param=field)

    try:
        check_org_name(org)
    except ValueError as exc:
        raise refuse("org", f"is not an org's name: {exc}") from None
    if narrow is not None and narrow[0] == "feature" and features is not None and narrow[1] not in features:
        known = ", ".join(sorted(features))
        raise refuse("feature", f"must be a configured feature ({known}), not {narrow[1]!r}")
    if narrow is not None and (problem := name_problem(narrow[1])) is not None:
        raise refuse(narrow[0], problem)
    kind, name = narrow or (None, None)
    scope = scope_of(org, kind, name)
    if len(scope) > MAX_SCOPE:
        raise refuse(
            kind or "org", f"makes the budget's scope {len(scope)} characters long; it holds {MAX_SCOPE}"
        )
    return scope


def new_budget(
    org: str,
    limit_usd: Decimal,
    period: str,
    narrow: tuple[str, str] | None,
    features: Collection[str],
    spell: Callable[[str], str] = str,
) -> Budget:
    """A budget set at run time, for an org or for one user, feature or key (``narrow``) of it,
    checked (pure) as `budget_scope` checks its scope, and its limit and period likewise.
    Whether a key is the org's is `BudgetStore.set_limit`'s to check."""
    scope = budget_scope(org, narrow, features, spell)
    try:
        micro = limit_micro(limit_usd)
    except ValueError as exc:
        raise InvalidRequest(f"{spell('limit_usd')} {exc}", param="limit_usd") from None
    if period not in ("day", "week", "month"):
        raise InvalidRequest(f"{spell('period')} must be day, week or month, not {period!r}", param="period")
    return Budget(scope, micro, period)  # type: ignore[arg-type]


_NARROWED = re.compile(r"^org:(.*?)/(user|feature|key):(.*)$", re.DOTALL)


def parse_scope(scope: str) -> tuple[str, str | None, str | None]:
    """``org:acme/user:alice`` → (``acme``, ``user``, ``alice``); (org, None, None) for an org's.
    An org or a name may hold a ``/`` of its own."""
    match = _NARROWED.match(scope)
    if match is None:
        return scope.removeprefix("org:"), None, None
    return match.group(1), match.group(2), match.group(3)


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget in force: its scope, limit and period."""

    scope: str
    limit_micro: int
    period: Period

    @property
    def org(self) -> str:
        """The org the budget belongs to."""
        return parse_scope(self.scope)[0]

    def describe(self) -> str:
        """``the org 'acme'``, ``the user 'alice' of the org 'acme'``: for messages."""
        org, kind, name = parse_scope(self.scope)
        return f"the org {org!r}" if kind is None else f"the {kind} {name!r} of the org {org!r}"

    def ledger_filter(self) -> tuple[str, dict[str, Any]]:
        """The ``WHERE`` condition (and its parameters) of the ledger rows this budget counts."""
        org, kind, name = parse_scope(self.scope)
        if kind is None:
            return "org = :o", {"o": org}
        column = {"user": '"user"', "feature": "feature", "key": "key_id"}[kind]
        return f"org = :o AND {column} = :n", {"o": org, "n": name}


Book = tuple[Budget, str, float]  # a budget, the name of its current period, and the period's end


class BudgetIndex:
    """The budgets in force, indexed for the hot path: an org without any costs one lookup."""

    def __init__(self, budgets: dict[str, Budget]) -> None:
        self.budgets = budgets
        kinds: dict[str, set[str | None]] = {}  # per org, the kinds of its budgets (None: its own)
        for scope in budgets:
            org, kind, _ = parse_scope(scope)
            kinds.setdefault(org, set()).add(kind)
        self._orgs = set(kinds)
        # The common case, an org with a budget of its own and none per user, feature or key.
        self._org_only = {org: budgets[scope_of(org)] for org, found in kinds.items() if found == {None}}

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def applicable(self, context: RequestContext) -> list[Budget]:
        """The budgets a call is under: its org's first, then its user's, feature's and key's."""
        org = context.org
        if org not in self._orgs:
            return []
        only = self._org_only.get(org)
        if only is not None:
            return [only]
        found = []
        budgets = self.budgets
        for kind, name in (
            (None, None),
            ("user", context.user),
            ("feature", context.feature),
            ("key", context.key_id),
        ):
            if kind is None or name is not None:
                budget = budgets.get(scope_of(org, kind, name))
                if budget is not None:
                    found.append(budget)
        return found
