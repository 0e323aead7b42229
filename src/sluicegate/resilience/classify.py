"""What a failure means for resilience, pure: retry it? count it against the breaker? fall back?

=====================================  =======  ==================  ===================
failure                                retried  breaker             fallback cause
=====================================  =======  ==================  ===================
connection error, stream cut early     yes      failure             server_error
timeout (ours or the upstream's 504)   yes      failure             timeout
500, 502, 503, 529                     yes      failure             server_error
other 5xx                              no       failure             server_error
408, 409                               yes      —                   retries_exhausted
429 rate limit                         yes      cools down          retries_exhausted
429 ``insufficient_quota``             no       —                   quota
breaker open or cooling down           no       —                   circuit_open
400, 401, 403, 404, 413, 422, other    no       —                   (none: the answer)
content filter                         no       —                   (none: the answer)
the client left                        no       no verdict          —
=====================================  =======  ==================  ===================
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config_resilience import FallbackCause
from ..errors import (
    CircuitOpen,
    SluicegateError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__all__ = ["Verdict", "classify"]

_RETRIED_SERVER = frozenset({500, 502, 503, 504, 529})
_RETRIED_CLIENT = frozenset({408, 409})
_QUOTA = frozenset({"insufficient_quota", "quota_exceeded", "billing_hard_limit_reached"})
_FILTERED = frozenset({"content_filter", "content_policy_violation"})


@dataclass(slots=True, frozen=True)
class Verdict:
    """What to do about one failure."""

    retry: bool = False
    breaker_failure: bool = False
    cools_down: bool = False  # a 429: hold the deployment back for its Retry-After
    cause: FallbackCause | None = None


_ANSWER = Verdict()
_TIMEOUT = Verdict(retry=True, breaker_failure=True, cause="timeout")
_SERVER = Verdict(retry=True, breaker_failure=True, cause="server_error")
_SERVER_FINAL = Verdict(breaker_failure=True, cause="server_error")
_CONFLICT = Verdict(retry=True, cause="retries_exhausted")
_RATE_LIMITED = Verdict(retry=True, cools_down=True, cause="retries_exhausted")
_QUOTA_VERDICT = Verdict(cause="quota")
_OPEN = Verdict(cause="circuit_open")


def classify(error: SluicegateError) -> Verdict:
    """The verdict on ``error``, raised by a stage at or below the breaker."""
    if isinstance(error, CircuitOpen):
        return _OPEN
    if not isinstance(error, UpstreamError):
        return _ANSWER  # the gateway's own refusal (a bad request, a budget): not the upstream's fault
    if isinstance(error, UpstreamTimeout):
        return _TIMEOUT
    if isinstance(error, UpstreamUnavailable | UpstreamStreamBroken):
        return _SERVER
    status = error.status_code
    if status >= 500:
        if status == 504:
            return _TIMEOUT
        return _SERVER if status in _RETRIED_SERVER else _SERVER_FINAL
    if error.code in _FILTERED:
        return _ANSWER
    if status == 429:
        if error.code in _QUOTA or error.error_type in _QUOTA:
            return _QUOTA_VERDICT
        return _RATE_LIMITED
    if status in _RETRIED_CLIENT:
        return _CONFLICT
    return _ANSWER
