"""Settings of the response cache and the browser tier (docs/caching.md); `sluicegate.config`
re-exports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config_base import Frozen, check_origin

__all__ = [
    "ALL_TIERS",
    "BrowserConfig",
    "CacheConfig",
    "CostTtlConfig",
    "FeatureCache",
    "MemoryTierConfig",
    "RedisTierConfig",
    "RemoteTierConfig",
    "Scope",
    "SqlTierConfig",
    "Tier",
]

Tier = Literal["browser", "memory", "redis", "sql"]
Scope = Literal["global", "org", "user"]
ALL_TIERS: tuple[Tier, ...] = ("browser", "memory", "redis", "sql")


class FeatureCache(Frozen):
    """How one feature's answers are cached (docs/caching.md)."""

    enabled: bool = True
    ttl_s: int = Field(3600, ge=1, description="base TTL, before the cost-aware multiplier")
    scope: Scope = Field("org", description="who shares an entry: everyone, the org, or one user")
    tiers: tuple[Tier, ...] = Field(ALL_TIERS, min_length=1)
    browser_ttl_s: int | None = Field(
        None, ge=1, description="how long a browser keeps an answer (default: as long as the server)"
    )
    cache_temperature: bool = Field(False, description="cache answers to requests with temperature > 0")
    cache_truncated: bool = Field(False, description="cache answers cut by max_tokens")
    cache_tool_calls: bool = Field(False, description="cache answers that call tools")
    cost_aware: bool = Field(True, description="scale the TTL by the answer's cost and popularity")
    stale_while_revalidate_s: int = Field(0, ge=0, description="serve this long past expiry, refreshing")
    stale_if_error_s: int = Field(0, ge=0, description="serve this long past expiry when the upstream fails")
    refresh_ahead_hits: int | None = Field(
        None, ge=1, description="re-fetch an entry with this many hits shortly before it expires"
    )
    replay_pace: bool = Field(False, description="replay cached streams at their original pace")


class MemoryTierConfig(Frozen):
    """The in-process tier: a byte-bounded LRU in each worker."""

    enabled: bool = True
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)


class RemoteTierConfig(Frozen):
    """What a shared tier (Redis, SQL) has in common: a timeout, a local breaker, compression."""

    enabled: bool = True
    compress_min_bytes: int = Field(1024, ge=0, description="zlib-compress values at least this big")
    timeout_ms: float = Field(100.0, gt=0, description="each cache call to the tier gives up after this")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that open the local breaker")
    breaker_open_s: float = Field(2.0, gt=0, description="how long an open breaker skips the tier")


class RedisTierConfig(RemoteTierConfig):
    """The Redis tier (used only when ``redis.url`` is set)."""


class SqlTierConfig(RemoteTierConfig):
    """The SQL tier: the ``cache_entries`` table in the gateway's database."""

    timeout_ms: float = Field(1000.0, gt=0, description="each cache read from SQL gives up after this")
    breaker_open_s: float = Field(5.0, gt=0, description="how long an open breaker skips SQL")
    purge_interval_s: float = Field(300.0, gt=0, description="how often expired rows are purged")
    purge_batch: int = Field(1000, ge=1, description="rows deleted per purge statement")


class CostTtlConfig(Frozen):
    """The cost-aware TTL rule: base * clamp(cost / reference, floor, cap) * popularity, bounded."""

    reference_usd: float = Field(0.001, gt=0, description="the cost at which the multiplier is 1")
    max_multiplier: float = Field(5.0, gt=0)
    min_multiplier: float = Field(
        1.0, gt=0, description="the floor: a cheap answer keeps this share of the base TTL"
    )
    popular_hits: int = Field(100, ge=1, description="more hits than this count as popular")
    popular_multiplier: float = Field(2.0, ge=1)
    min_ttl_s: int = Field(60, ge=1)
    max_ttl_s: int = Field(30 * 86400, ge=1)

    @model_validator(mode="after")
    def _check(self) -> CostTtlConfig:
        if self.min_multiplier > self.max_multiplier:
            raise ValueError(
                f"min_multiplier ({self.min_multiplier:g}) is above max_multiplier ({self.max_multiplier:g})"
            )
        if self.min_ttl_s > self.max_ttl_s:
            raise ValueError(f"min_ttl_s ({self.min_ttl_s}) is above max_ttl_s ({self.max_ttl_s})")
        return self


class CacheConfig(Frozen):
    """The response cache (docs/caching.md)."""

    enabled: bool = True
    memory: MemoryTierConfig = MemoryTierConfig()
    redis: RedisTierConfig = RedisTierConfig()
    sql: SqlTierConfig = SqlTierConfig()
    ttl: CostTtlConfig = CostTtlConfig()
    default: FeatureCache = Field(FeatureCache(), description="the policy of features that set none")
    lock_lease_s: float = Field(30.0, gt=0, description="single-flight: how long a leader holds its lock")
    wait_s: float = Field(30.0, gt=0, description="single-flight: how long followers wait for the leader")
    refresh_ahead_s: float = Field(60.0, ge=0, description="refresh popular entries this long before expiry")


class BrowserConfig(Frozen):
    """The browser tier: short-lived browser tokens and the origins allowed to call the gateway."""

    token_ttl_s: int = Field(900, ge=10, le=86400)
    token_secret_env: str = "SLUICEGATE_BROWSER_TOKEN_SECRET"
    cors_origins: tuple[str, ...] = Field((), description="origins allowed by CORS; none by default")

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_origin(origin) for origin in value)
