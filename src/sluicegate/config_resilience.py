"""Settings of resilience: breakers, retries, fallbacks and deadlines (docs/resilience.md);
`sluicegate.config` re-exports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .config_base import Frozen

__all__ = [
    "FALLBACK_CAUSES",
    "BreakerConfig",
    "DeploymentConfig",
    "FallbackCause",
    "ResilienceConfig",
    "RetryConfig",
]

FallbackCause = Literal["circuit_open", "retries_exhausted", "timeout", "server_error", "quota"]
FALLBACK_CAUSES: tuple[FallbackCause, ...] = ("circuit_open", "retries_exhausted", "timeout", "server_error")


class DeploymentConfig(Frozen):
    """One more deployment of a model: another provider, or another name at the same one."""

    provider: str
    upstream_model: str | None = Field(None, description="the provider's name (default: the model's)")
    weight: float = Field(1.0, gt=0, description="its share of the traffic under weighted routing")


class BreakerConfig(Frozen):
    """The circuit breaker of each upstream deployment (provider and model), per process."""

    enabled: bool = True
    window: int = Field(20, ge=1, description="the last N calls the rates are taken over")
    min_calls: int = Field(10, ge=1, description="calls in the window before it can open")
    failure_rate: float = Field(0.5, gt=0, le=1, description="opens at this share of failures")
    slow_call_rate: float = Field(0.8, gt=0, le=1, description="opens at this share of slow calls")
    slow_call_s: float = Field(15.0, gt=0, description="a call whose first byte comes later is slow")
    open_s: float = Field(30.0, gt=0, description="the first wait before probing again")
    max_open_s: float = Field(300.0, gt=0, description="the wait doubles on each re-open, up to this")
    half_open_probes: int = Field(3, ge=1, description="calls let through to test a recovering upstream")

    @model_validator(mode="after")
    def _check(self) -> BreakerConfig:
        if self.min_calls > self.window:
            raise ValueError("min_calls must not exceed window")
        if self.max_open_s < self.open_s:
            raise ValueError("max_open_s must be at least open_s")
        return self


class RetryConfig(Frozen):
    """Retries of one deployment: full-jitter backoff inside a retry budget per provider."""

    max_attempts: int = Field(3, ge=1, le=10, description="attempts per deployment, the first included")
    base_ms: float = Field(200.0, gt=0, description="backoff before retry n is uniform in [0, base * 2^n]")
    cap_ms: float = Field(5000.0, gt=0, description="the backoff's upper bound")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries allowed per first attempt")
    budget_floor: int = Field(10, ge=0, description="retries always allowed per budget window")
    budget_window_s: float = Field(10.0, gt=0, description="the window the budget counts over")


class ResilienceConfig(Frozen):
    """Breakers, retries, fallbacks and the end-to-end deadline (docs/resilience.md)."""

    breaker: BreakerConfig = BreakerConfig()
    retry: RetryConfig = RetryConfig()
    deadline_s: float = Field(
        120.0, gt=0, description="each request's end-to-end deadline: attempts, backoffs and fallbacks"
    )
    fallback_on: tuple[FallbackCause, ...] = Field(
        FALLBACK_CAUSES, description="the failures after which the next deployment or model is tried"
    )
    routing: Literal["weighted", "latency"] = Field(
        "weighted", description="how a model's deployments are ordered: by weight, or least recent latency"
    )
    unavailable_retry_after_s: int = Field(
        5, ge=1, description="the Retry-After of a 503 when every option failed and no breaker says more"
    )
