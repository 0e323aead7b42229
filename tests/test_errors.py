"""Tests for sluicegate.errors: statuses, OpenAI types and codes, and the error body."""

from __future__ import annotations

import orjson
import pytest

from sluicegate import errors
from sluicegate.errors import (
    AllUpstreamsFailed,
    AuthenticationFailed,
    BudgetExceeded,
    BudgetUnavailable,
    CircuitOpen,
    ConfigError,
    EmergencyStopped,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    ServiceUnavailable,
    SluicegateError,
    TokensLimited,
    UpstreamError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# class, HTTP status, OpenAI type, default code
TABLE: list[tuple[type[SluicegateError], int, str, str | None]] = [
    (SluicegateError, 500, "api_error", None),
    (ConfigError, 500, "config_error", None),
    (InvalidRequest, 400, "invalid_request_error", None),
    (RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
    (RequestTimeout, 408, "invalid_request_error", "request_timeout"),
    (AuthenticationFailed, 401, "authentication_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (ServiceUnavailable, 503, "api_error", "service_unavailable"),
    (CircuitOpen, 503, "api_error", "circuit_open"),
    (AllUpstreamsFailed, 503, "api_error", "all_upstreams_failed"),
    (RateLimited, 429, "requests", "rate_limit_exceeded"),
    (EmergencyStopped, 503, "api_error", "emergency_stop"),
    (BudgetUnavailable, 503, "api_error", "budget_unavailable"),
    (TokensLimited, 429, "tokens", "rate_limit_exceeded"),
    (BudgetExceeded, 429, "requests", "budget_exceeded"),
    (UpstreamError, 502, "upstream_error", None),
    (UpstreamUnavailable, 502, "upstream_error", "upstream_unavailable"),
    (UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
    (UpstreamStreamBroken, 502, "upstream_error", "upstream_stream_broken"),
]


@pytest.mark.parametrize(("cls", "status", "kind", "code"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_status_type_and_code(cls: type[SluicegateError], status: int, kind: str, code: str | None) -> None:
    """Each error carries its HTTP status, OpenAI type and default code."""
    error = cls("something went wrong")
    assert error.status_code == status
    assert error.error_type == kind
    assert error.code == code
    assert error.message == "something went wrong"
    assert str(error) == "something went wrong"


@pytest.mark.parametrize(("cls", "status", "kind", "code"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_to_dict_shape(cls: type[SluicegateError], status: int, kind: str, code: str | None) -> None:
    """to_dict() is the OpenAI error body with exactly message, type, param and code."""
    body = cls("try again").to_dict()
    assert body == {"error": {"message": "try again", "type": kind, "param": None, "code": code}}


def test_to_json_matches_to_dict() -> None:
    """to_json() serialises the same body as to_dict()."""
    error = InvalidRequest("bad model", param="model", code="invalid_type")
    assert orjson.loads(error.to_json()) == error.to_dict()


def test_param_and_explicit_code_are_kept() -> None:
    """An explicit param and code replace the defaults."""
    error = ModelNotFound("no such model", param="model", code="custom")
    assert error.to_dict()["error"]["param"] == "model"
    assert error.code == "custom"


def test_headers_default_to_empty() -> None:
    """Headers default to an empty dict, and given ones are kept."""
    assert InvalidRequest("x").headers == {}
    assert UpstreamError("x", headers={"retry-after": "2"}).headers == {"retry-after": "2"}


def test_upstream_error_carries_the_given_status_and_type() -> None:
    """UpstreamError is served with the upstream's own status, type, param and code."""
    error = UpstreamError(
        "slow down", status=429, error_type="rate_limit_error", param="p", code="rate_limit_exceeded"
    )
    assert error.status_code == 429
    assert error.error_type == "rate_limit_error"
    assert error.to_dict() == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": "p",
            "code": "rate_limit_exceeded",
        }
    }


def test_upstream_error_without_type_uses_upstream_error() -> None:
    """With no type given, an UpstreamError's type is upstream_error."""
    assert UpstreamError("x", status=503).error_type == "upstream_error"


@pytest.mark.parametrize("name", errors.__all__)
def test_every_exported_error_subclasses_the_root(name: str) -> None:
    """Every exported error is a SluicegateError."""
    cls = getattr(errors, name)
    assert issubclass(cls, SluicegateError)
    assert issubclass(cls, Exception)


def test_every_exported_error_is_in_the_table() -> None:
    """Each exported error has a row above, so a new one cannot go untested."""
    assert {row[0].__name__ for row in TABLE} == set(errors.__all__)


def test_subclass_tree() -> None:
    """The hierarchy matches the tree in the module docstring."""
    assert issubclass(RequestTooLarge, InvalidRequest)
    assert issubclass(ModelNotFound, NotFound)
    assert issubclass(MethodNotAllowed, NotFound)
    for cls in (UpstreamUnavailable, UpstreamTimeout, UpstreamStreamBroken):
        assert issubclass(cls, UpstreamError)


def test_an_upstream_error_says_its_status_and_type_the_same_way_as_every_error() -> None:
    """``status`` and ``type`` are the provider's on an `UpstreamError`, as ``status_code`` and
    ``error_type`` are: a library caller reading either sees the 400 the provider sent."""
    from sluicegate.errors import UpstreamError, UpstreamTimeout

    error = UpstreamError("bad input", status=400, error_type="invalid_request_error")
    assert (error.status, error.status_code) == (400, 400)
    assert (error.type, error.error_type) == ("invalid_request_error", "invalid_request_error")
    assert UpstreamError("x").status == 502 and UpstreamError("x").type == "upstream_error"
    assert UpstreamTimeout("slow").status == 504
    assert UpstreamError.status == 500  # the class's default, untouched by its instances
