"""Tests for sluicegate.resilience.classify: which failures are retried, counted, fallen back from."""

from __future__ import annotations

import pytest

from sluicegate.errors import (
    BudgetExceeded,
    CircuitOpen,
    InvalidRequest,
    SluicegateError,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.resilience.classify import classify


def upstream(status: int, code: str | None = None, error_type: str | None = None) -> UpstreamError:
    return UpstreamError("x", status=status, code=code, error_type=error_type)


@pytest.mark.parametrize(
    ("error", "retry", "failure", "cools", "cause"),
    [
        (UpstreamUnavailable("refused"), True, True, False, "server_error"),
        (UpstreamTimeout("slow"), True, True, False, "timeout"),
        (UpstreamStreamBroken("cut"), True, True, False, "server_error"),
        *[(upstream(s), True, True, False, "server_error") for s in (500, 502, 503, 529)],
        (upstream(504), True, True, False, "timeout"),
        (upstream(501), False, True, False, "server_error"),
        (upstream(408), True, False, False, "retries_exhausted"),
        (upstream(409), True, False, False, "retries_exhausted"),
        (upstream(429, "rate_limit_exceeded"), True, False, True, "retries_exhausted"),
        (upstream(429, "insufficient_quota"), False, False, False, "quota"),
        (upstream(429, None, "insufficient_quota"), False, False, False, "quota"),
        *[(upstream(s), False, False, False, None) for s in (400, 401, 403, 404, 413, 422)],
        (upstream(400, "content_filter"), False, False, False, None),
        (upstream(500, "content_filter"), True, True, False, "server_error"),
        (CircuitOpen("open"), False, False, False, "circuit_open"),
        (InvalidRequest("bad"), False, False, False, None),
        (BudgetExceeded("spent"), False, False, False, None),
    ],
)
def test_each_failure_class(
    error: SluicegateError, retry: bool, failure: bool, cools: bool, cause: str | None
) -> None:
    verdict = classify(error)
    assert (verdict.retry, verdict.breaker_failure, verdict.cools_down, verdict.cause) == (
        retry,
        failure,
        cools,
        cause,
    )
