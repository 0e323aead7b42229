"""``POST /api/ai/browser-tokens``: an application's backend mints a token for one of its users."""

from __future__ import annotations

from typing import Any

import orjson

from ..browser_tokens import BrowserPrincipal
from ..config import DEFAULT_FEATURE, Settings
from ..config_base import MAX_NAME, name_problem
from ..errors import InvalidRequest, PermissionDenied
from ..gateway import Gateway
from .http import Request, json_object, read_json, send_json

__all__ = ["create_browser_token"]


async def create_browser_token(gateway: Gateway, request: Request) -> None:
    """``POST /api/ai/browser-tokens`` with ``{"user", "features"?, "ttl_s"?}``, under a virtual key.

    In local development mode (keys not required) no key is needed and the token is for the
    development org; in production the application's backend calls this with its key.
    """
    principal = await gateway.authenticator.authenticate(request.authorization)
    if isinstance(principal, BrowserPrincipal):
        raise PermissionDenied(
            "a browser token cannot mint browser tokens; mint them on the application's backend "
            "with its virtual key",
            code="browser_token_not_allowed",
        )
    settings = gateway.settings
    body = await read_json(request, settings.server.max_body_bytes, settings.server.body_timeout_s)
    body = json_object(body, ("user", "features", "ttl_s"))
    user = _user(body.get("user"))
    features = _features(body.get("features"), settings)
    ttl_s = _ttl(body.get("ttl_s"), settings.browser.token_ttl_s)
    org = principal.org if principal is not None else settings.auth.dev_org
    key_id = principal.id if principal is not None else None  # its budget, limits and revocation
    token, minted = gateway.authenticator.mint_browser_token(org, user, features, ttl_s, key_id)
    await send_json(request, 201, orjson.dumps({"token": token, **minted.to_dict()}))


def _user(value: Any) -> str:
    if not isinstance(value, str) or name_problem(value) is not None:
        raise InvalidRequest(
            f"user is required: the end user's id, 1-{MAX_NAME} characters without control characters",
            param="user",
        )
    return value


def _features(value: Any, settings: Settings) -> tuple[str, ...]:
    """The requested features, checked; by default every configured feature and ``default``
    (what a request that names no feature is for)."""
    if value is None:
        return tuple(dict.fromkeys([*settings.features, DEFAULT_FEATURE]))
    if not isinstance(value, list) or not value or not all(isinstance(f, str) for f in value):
        raise InvalidRequest("features must be a non-empty list of feature names", param="features")
    known = settings.feature_names
    unknown = [f for f in value if f not in known]
    if unknown:
        raise InvalidRequest(
            f"unknown features {', '.join(map(repr, unknown))}; configured features are: "
            f"{', '.join(sorted(known))}",
            param="features",
            code="unknown_feature",
        )
    return tuple(dict.fromkeys(value))


def _ttl(value: Any, limit: int) -> int:
    if value is None:
        return limit
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise InvalidRequest(
            f"ttl_s must be a whole number of seconds from 1 to {limit} (browser.token_ttl_s)",
            param="ttl_s",
        )
    return value
