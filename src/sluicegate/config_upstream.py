"""Settings of the upstreams: providers, their timeouts, and how the built-in mock answers."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from .config_base import Frozen

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header's name (RFC 9110, 5.6.2)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a header's value may hold tabs, no other

__all__ = ["Latency", "MockBehaviour", "ProviderConfig", "Timeouts"]


class Timeouts(Frozen):
    """Per-provider timeouts in seconds."""

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(
        60.0, gt=0, description="the longest wait for upstream bytes: the first, and each gap in a stream"
    )
    total: float = Field(600.0, gt=0, description="the whole exchange, streams included")


class Latency(Frozen):
    """A latency: fixed, uniform between ``ms`` and ``max_ms``, or lognormal with median ``ms``."""

    distribution: Literal["fixed", "uniform", "lognormal"] = "fixed"
    ms: float = Field(0.0, ge=0)
    max_ms: float | None = Field(None, ge=0)
    sigma: float = Field(0.5, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _from_number(cls, value: Any) -> Any:
        # `latency: 50` is shorthand for a fixed 50 ms.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"ms": value}
        return value

    @model_validator(mode="after")
    def _check_uniform(self) -> Latency:
        if self.distribution == "uniform" and (self.max_ms is None or self.max_ms < self.ms):
            raise ValueError("a uniform latency needs max_ms >= ms")
        return self


class MockBehaviour(Frozen):
    """How the built-in mock provider answers: timing, chunking and injected faults."""

    latency: Latency = Latency()
    ttft_ms: float = Field(0.0, ge=0, description="streaming: delay before the first chunk")
    chunk_interval_ms: float = Field(0.0, ge=0, description="streaming: delay between chunks")
    chunks: int | None = Field(None, ge=1, description="streaming: content chunks (default: one a word)")
    answer_words: int | None = Field(None, ge=1, description="words per answer (default: from the prompt)")
    error_rate: float = Field(0.0, ge=0, le=1)
    error_status: int = Field(500, ge=400, le=599)
    error_code: str | None = Field(None, description="the injected error's code, e.g. insufficient_quota")
    error_retry_after: str | None = Field(
        None, description="the injected error's Retry-After header (seconds or an HTTP date)"
    )
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered 429")
    retry_after_s: int = Field(1, ge=0)
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of requests never answered")
    slow_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered after slow_ms instead")
    slow_ms: float = Field(3000.0, ge=0, description="the latency of the slow share")
    drop_after_chunks: int | None = Field(None, ge=0, description="streaming: cut the stream here")
    report_usage: bool = Field(True, description="off: answers carry no usage, as some servers send")
    seed: int | None = None


class ProviderConfig(Frozen):
    """An upstream: OpenAI-compatible over HTTP, or the in-process mock."""

    kind: Literal["openai", "mock"] = "openai"
    base_url: str | None = Field(None, validate_default=True)
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    max_connections: int = Field(1024, ge=1)
    mock: MockBehaviour = MockBehaviour()

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == "openai":
            if not value:
                raise ValueError("an openai provider needs base_url, e.g. https://api.openai.com/v1")
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
            parts = urlsplit(value)
            if not parts.hostname or parts.query or parts.fragment:
                raise ValueError(f"base_url must name a host, with no query or fragment, got {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if _TOKEN.fullmatch(name) is None:
                raise ValueError(f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)")
            if _CONTROL.search(text) is not None:
                raise ValueError(f"the value of {name} has a control character (a line break, say)")
        return value
