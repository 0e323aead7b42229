"""Settings of cost control: prices (docs/cost-control.md); `sluicegate.config` re-exports them."""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config_base import Frozen, WebhookUrl, name_problem
from .errors import InvalidRequest

__all__ = [
    "AlertsConfig",
    "BudgetsConfig",
    "ControlsConfig",
    "LedgerConfig",
    "LimitsConfig",
    "OrgBudget",
    "PriceConfig",
    "PricingConfig",
    "RequestLimit",
    "SpendBreakerConfig",
    "TokenLimit",
    "check_org_name",
    "limit_micro",
    "org_of_request",
    "usd",
]


MAX_PRICE = 1_000_000  # US dollars a million tokens


class PriceConfig(Frozen):
    """A model's price in US dollars per million tokens (a custom or self-hosted model, or an
    override of genai-prices)."""

    # At most $1,000,000 a million tokens (no model comes near): the dearest worst case the
    # request fields allow then still fits the ledger's 64-bit integers of micro-USD.
    input_per_mtok: Decimal = Field(
        ge=0, le=MAX_PRICE, description="prompt tokens not served from the provider's cache"
    )
    output_per_mtok: Decimal = Field(ge=0, le=MAX_PRICE, description="completion tokens")
    cached_input_per_mtok: Decimal | None = Field(
        None,
        ge=0,
        le=MAX_PRICE,
        description="prompt tokens the provider served from its cache (default: input)",
    )
    reasoning_per_mtok: Decimal | None = Field(
        None, ge=0, le=MAX_PRICE, description="reasoning tokens, part of the completion (default: output)"
    )


class PricingConfig(Frozen):
    """Where prices come from: each model's ``price``, else genai-prices, else ``default``."""

    provider_id: str | None = Field(
        "openai", description="the genai-prices provider whose prices apply (None: guess from the model)"
    )
    default: PriceConfig | None = Field(
        None, description="the price of models no other source knows (default: refuse them at start-up)"
    )


class LedgerConfig(Frozen):
    """The usage ledger: spooled locally, written to the database in batches."""

    enabled: bool = True
    batch: int = Field(500, ge=1, description="rows per INSERT")
    flush_interval_s: float = Field(0.2, gt=0, description="how often spooled rows are written")
    max_pending: int = Field(100_000, ge=1, description="rows kept in memory while the database is down")
    replay_interval_s: float = Field(
        30.0, gt=0, description="how often the spools of processes that died are replayed"
    )
    retention_days: int | None = Field(
        90,
        ge=1,
        description="ledger rows of UTC days older than this are deleted once rolled up (None: kept)",
    )
    rollup_retention_days: int | None = Field(
        None, ge=1, description="daily roll-ups older than this are deleted (None: kept forever)"
    )
    compact_interval_s: float = Field(
        3600.0, gt=0, description="how often each worker rolls up ended days and applies retention"
    )
    compact_batch: int = Field(5000, ge=1, description="ledger rows per DELETE when applying retention")

    @model_validator(mode="after")
    def _check(self) -> LedgerConfig:
        kept = self.rollup_retention_days
        if kept is not None and (self.retention_days is None or kept < self.retention_days):
            raise ValueError(
                "rollup_retention_days must be at least retention_days (and needs it set): a day's "
                "roll-up may only go once its ledger rows have"
            )
        return self


class RequestLimit(Frozen):
    """At most ``limit`` requests per ``window_s`` seconds for each user, org or key."""

    per: Literal["user", "org", "key"]
    limit: int = Field(ge=1)
    window_s: int = Field(3600, ge=1, le=30 * 86400)
    feature: str | None = Field(None, description="only this feature's requests (default: all)")

    @cached_property
    def name(self) -> str:
        """The policy's name in the RateLimit headers, e.g. ``user-3600``."""
        return f"{self.per}{'-' + self.feature if self.feature else ''}-{self.window_s}"

    @cached_property
    def policy(self) -> str:
        """The policy in the ``RateLimit-Policy`` header, e.g. ``"user-3600";q=100;w=3600``."""
        return f'"{self.name}";q={self.limit};w={self.window_s}'


class TokenLimit(Frozen):
    """At most ``tokens_per_minute`` tokens (prompt and completion) a minute for each org or key:
    a token bucket holding a minute's worth, refilled continuously."""

    per: Literal["org", "key"]
    tokens_per_minute: int = Field(ge=1)
    feature: str | None = Field(None, description="only this feature's calls (default: all)")

    @cached_property
    def name(self) -> str:
        """The limit's name, e.g. ``org-chat``: one bucket per name and org or key."""
        return f"{self.per}{'-' + self.feature if self.feature else ''}"


class SpendBreakerConfig(Frozen):
    """Stops an org's upstream calls by itself when it spends too fast (a runaway loop)."""

    max_usd: Decimal | None = Field(
        None, ge=0, description="an org spending more than this within the window is stopped (default: off)"
    )
    window_minutes: float = Field(5.0, gt=0, le=1440)


class AlertsConfig(Frozen):
    """Operator alerts (Redis unreachable for limits, token limits or budgets): always logged."""

    webhook_url: WebhookUrl = Field(
        None, description="each alert raised or resolved is also POSTed here as JSON"
    )


class ControlsConfig(Frozen):
    """How fast every worker learns of an emergency stop or a key revocation made elsewhere."""

    poll_interval_s: float = Field(0.5, gt=0, le=10, description="how often each worker reads them")
    spend_breaker: SpendBreakerConfig = SpendBreakerConfig()


class LimitsConfig(Frozen):
    """Rate limits on requests and on tokens (docs/cost-control.md); none by default."""

    requests: tuple[RequestLimit, ...] = ()
    tokens: tuple[TokenLimit, ...] = ()
    redis_timeout_ms: float = Field(
        300.0, gt=0, description="a check Redis has not answered by then counts as Redis being down"
    )
    local_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="with Redis configured but down, each process (each worker of each replica) "
        "admits this share of a limit alone",
    )

    @model_validator(mode="after")
    def _one_limit_per_name(self) -> LimitsConfig:
        # Two limits of one name (per, feature, window) would share their count, and headers.
        for kind, rules in (("requests", self.requests), ("tokens", self.tokens)):
            names = [rule.name for rule in rules]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise ValueError(
                    f"limits.{kind}: two limits for {', '.join(twice)} (the same per, feature and "
                    "window); keep the one you mean"
                )
        return self


MAX_LIMIT_USD = Decimal(1_000_000_000)


def check_org_name(org: str) -> str:
    """``org`` if it can name an org; `ValueError` otherwise. A ``/`` is refused: a budget's
    scope reads ``org:ORG/user:NAME``, so an org called ``acme/user:boss`` would share the
    budget of the user boss of acme."""
    problem = name_problem(org)
    if problem is not None:
        raise ValueError(f"an org's name {problem}")
    if "/" in org:
        raise ValueError(f"an org's name cannot contain '/' (got {org!r}): budget scopes use it")
    return org


def org_of_request(org: str) -> str:
    """`check_org_name` for an org a request names: `InvalidRequest` (``param`` org) instead."""
    try:
        return check_org_name(org)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="org") from None


def limit_micro(limit_usd: Decimal) -> int:
    """A budget's limit in micro-USD (pure); `ValueError` saying why ``limit_usd`` cannot be one."""
    if not limit_usd.is_finite() or limit_usd < 0:
        raise ValueError("must be a number of US dollars, 0 or more")
    if limit_usd > MAX_LIMIT_USD:
        raise ValueError(f"must be at most ${MAX_LIMIT_USD:,}")
    micro = limit_usd * 1_000_000
    if micro != micro.to_integral_value():
        raise ValueError("has at most 6 decimals: budgets count whole micro-dollars ($0.000001)")
    return int(micro)


def usd(micro: int, cents: bool = False) -> str:
    """``$0.0012``, ``$250`` (``$250.00`` with ``cents``): micro-USD as dollars, with as many
    decimals as the amount needs, up to six (pure)."""
    text = f"{micro / 1_000_000:,.6f}".rstrip("0")
    if cents and len(text.partition(".")[2]) < 2:
        return "$" + f"{micro / 1_000_000:,.2f}"
    return "$" + text.rstrip(".")


class OrgBudget(Frozen):
    """A spending limit per period (UTC) for an org, or for one user, feature or key of it."""

    org: str = Field(min_length=1)
    limit_usd: Decimal = Field(ge=0)
    period: Literal["day", "week", "month"] = "month"
    user: str | None = Field(None, min_length=1, description="only this user's calls in the org")
    feature: str | None = Field(None, min_length=1, description="only this feature's calls in the org")
    key: str | None = Field(None, min_length=1, description="only the calls made with this key id")

    @field_validator("limit_usd")
    @classmethod
    def _a_countable_limit(cls, value: Decimal) -> Decimal:
        limit_micro(value)
        return value

    @field_validator("org")
    @classmethod
    def _an_org_name(cls, value: str) -> str:
        return check_org_name(value)

    @field_validator("user", "key")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        problem = name_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_narrowing(self) -> OrgBudget:
        if sum(value is not None for value in (self.user, self.feature, self.key)) > 1:
            raise ValueError("a budget narrows an org to one user, one feature or one key, not several")
        return self

    @property
    def scope(self) -> str:
        """``org:acme``, or ``org:acme/user:alice`` (``feature:…``, ``key:…``)."""
        for kind in ("user", "feature", "key"):
            name = getattr(self, kind)
            if name is not None:
                return f"org:{self.org}/{kind}:{name}"
        return f"org:{self.org}"


class BudgetsConfig(Frozen):
    """Budgets per org, user, feature or key (docs/cost-control.md#budgets): none by default."""

    orgs: tuple[OrgBudget, ...] = ()
    alert_at: float = Field(0.8, gt=0, le=1, description="share of the limit that raises the alert")
    throttle_at: float = Field(
        0.95, gt=0, le=1, description="share of the limit past which the org is throttled"
    )
    throttle_model: str | None = Field(
        None,
        description="past throttle_at, misses go to this (cheaper) model; with no throttle_model, "
        "throttle_concurrency or throttle_per_minute: cache only",
    )
    throttle_concurrency: int | None = Field(
        None,
        ge=1,
        description="past throttle_at, at most this many calls under the budget in flight at once, "
        "across every replica (with or without throttle_model)",
    )
    throttle_per_minute: int | None = Field(
        None,
        ge=1,
        description="past throttle_at, at most this many calls under the budget admitted a minute, "
        "across every replica (with or without throttle_model)",
    )
    webhook_url: WebhookUrl = Field(None, description="the alert is also POSTed here as JSON")
    lease_s: float = Field(
        600.0, gt=0, description="a reservation whose call never settles is released after this"
    )
    default_max_tokens: int = Field(
        4096, ge=1, description="the worst case of a request that sets no max_tokens"
    )
    redis_timeout_ms: float = Field(
        300.0, gt=0, description="a reservation Redis has not answered by then: the database takes over"
    )

    @model_validator(mode="after")
    def _one_budget_per_scope(self) -> BudgetsConfig:
        scopes = [budget.scope for budget in self.orgs]
        twice = sorted({scope for scope in scopes if scopes.count(scope) > 1})
        if twice:
            raise ValueError(f"more than one budget for {', '.join(twice)}")
        return self
