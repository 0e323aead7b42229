"""Errors raised by sluicegate, all rooted at `SluicegateError`.

Each error knows the HTTP status and the OpenAI-style ``type`` and ``code`` it is served with,
so the HTTP layer and library users see the same thing::

    SluicegateError
    ├── ConfigError                 (startup only: a bad sluicegate.yaml or environment value)
    ├── InvalidRequest              400 invalid_request_error
    │   ├── RequestTooLarge         413 invalid_request_error / request_too_large
    │   └── RequestTimeout          408 invalid_request_error / request_timeout
    ├── AuthenticationFailed        401 authentication_error / invalid_api_key
    ├── PermissionDenied            403 permission_error
    ├── RateLimited                 429 requests / rate_limit_exceeded (with Retry-After)
    │   ├── BudgetExceeded          429 requests / budget_exceeded or budget_throttled
    │   └── TokensLimited           429 tokens / rate_limit_exceeded (with Retry-After)
    ├── ServiceUnavailable          503 api_error / service_unavailable
    │   ├── EmergencyStopped        503 api_error / emergency_stop
    │   ├── BudgetUnavailable       503 api_error / budget_unavailable
    │   ├── CircuitOpen             503 api_error / circuit_open (with Retry-After)
    │   └── AllUpstreamsFailed      503 api_error / all_upstreams_failed (with Retry-After)
    ├── NotFound                    404 invalid_request_error
    │   ├── ModelNotFound           404 invalid_request_error / model_not_found
    │   └── MethodNotAllowed        405 invalid_request_error / method_not_allowed
    └── UpstreamError               the upstream's own status, type and message
        ├── UpstreamUnavailable     502 upstream_error / upstream_unavailable
        ├── UpstreamTimeout         504 upstream_error / upstream_timeout
        └── UpstreamStreamBroken    502 upstream_error / upstream_stream_broken
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Self

import orjson

__all__ = [
    "AllUpstreamsFailed",
    "AuthenticationFailed",
    "BudgetExceeded",
    "BudgetUnavailable",
    "CircuitOpen",
    "ConfigError",
    "EmergencyStopped",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "RequestTimeout",
    "RequestTooLarge",
    "ServiceUnavailable",
    "SluicegateError",
    "TokensLimited",
    "UpstreamError",
    "UpstreamStreamBroken",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class SluicegateError(Exception):
    """The root of every error sluicegate raises on purpose."""

    # The HTTP status and OpenAI ``type`` it is served with: each class's own, or (`UpstreamError`)
    # the provider's, per error. `status_code` and `error_type` read the same values.
    status: int = 500
    type: str = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        """The HTTP status this error is served with."""
        return self.status

    def with_headers(self, headers: dict[str, str]) -> Self:
        """A copy of this error that also sends ``headers`` (the same error may be raised to
        several requests, waiting for one call: each adds its own without touching the others')."""
        twin = copy.copy(self)
        twin.headers = {**self.headers, **headers}
        return twin

    def without_headers(self, names: tuple[str, ...]) -> Self:
        """This error, or a copy of it without the headers ``names`` if it has any."""
        if not any(name in self.headers for name in names):
            return self
        twin = copy.copy(self)
        twin.headers = {k: v for k, v in self.headers.items() if k not in names}
        return twin

    @property
    def error_type(self) -> str:
        """The OpenAI error ``type`` this error is served with."""
        return self.type

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """The OpenAI error body, serialised."""
        return orjson.dumps(self.to_dict())


class ConfigError(SluicegateError):
    """The configuration file or an environment override is invalid; the message names the key."""

    type = "config_error"


class InvalidRequest(SluicegateError):
    """The request is malformed; fix the named ``param`` and send it again."""

    status = 400
    type = "invalid_request_error"


class RequestTooLarge(InvalidRequest):
    """The request body is larger than ``server.max_body_bytes``."""

    status = 413
    default_code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The client took longer than the gateway allows to send its request."""

    status = 408
    default_code = "request_timeout"


class AuthenticationFailed(SluicegateError):
    """The API key is missing, unknown or revoked."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(SluicegateError):
    """The key is valid but may not do this."""

    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class RateLimited(SluicegateError):
    """A rate limit of this gateway refused the request; ``Retry-After`` says when to come back."""

    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """The org's budget for the period has no room for this call; cached answers still come."""

    default_code = "budget_exceeded"


class TokensLimited(RateLimited):
    """A per-minute token limit has no room for the call's worst case (its prompt and
    ``max_tokens``); ``Retry-After`` says when it will."""

    type = "tokens"


class ServiceUnavailable(SluicegateError):
    """A store the gateway needs for this is unreachable; the message says what was done anyway."""

    status = 503
    default_code = "service_unavailable"


class EmergencyStopped(ServiceUnavailable):
    """An emergency stop covers the caller: no upstream calls until an admin lifts it."""

    default_code = "emergency_stop"


class BudgetUnavailable(ServiceUnavailable):
    """Neither Redis nor the database can count the caller's budget: a hard cap fails closed."""

    default_code = "budget_unavailable"


class CircuitOpen(ServiceUnavailable):
    """A deployment's breaker is open (or it is cooling down after a 429): no call goes to it
    until the time the message and ``Retry-After`` give."""

    default_code = "circuit_open"


class AllUpstreamsFailed(ServiceUnavailable):
    """Every deployment and fallback of the model failed and the feature has no degraded answer;
    the message gives the last failure, ``Retry-After`` when to try again."""

    default_code = "all_upstreams_failed"


class NotFound(SluicegateError):
    """No such route or resource."""

    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The requested model is not configured; ``GET /v1/models`` lists those that are."""

    default_code = "model_not_found"


class MethodNotAllowed(NotFound):
    """The route exists but not with this HTTP method."""

    status = 405
    default_code = "method_not_allowed"


class UpstreamError(SluicegateError):
    """The upstream provider answered with an error, passed on with its status and message."""

    type = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.status = status
        self.type = error_type or type(self).type


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached (connection refused, reset or DNS failure)."""

    default_code = "upstream_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the provider's timeouts. ``sent`` is False only when
    the request is known not to have reached it (no connection was made, or the deadline
    passed first): otherwise the provider had the prompt, and may bill it."""

    default_code = "upstream_timeout"

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message, status=504)
        self.sent = sent


class UpstreamStreamBroken(UpstreamError):
    """The upstream stream ended before ``[DONE]``; what was sent is incomplete."""

    default_code = "upstream_stream_broken"

    def __init__(self, message: str) -> None:
        super().__init__(message, status=502)
