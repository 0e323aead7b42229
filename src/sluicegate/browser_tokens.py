"""Browser tokens: short-lived, signed credentials that bind a browser to one org, user and features.

An application's backend mints one with its virtual key (``POST /api/ai/browser-tokens``) and
hands it to the page, which calls the gateway directly with ``Authorization: Bearer sgb_…``.
The gateway keeps no state for them: a token is ``sgb_<payload>.<signature>``, both base64url
without padding, the signature an HMAC-SHA256 of the prefix and payload under the server's
token secret. A token cannot be revoked before it expires, which is why its lifetime is short
(``browser.token_ttl_s``, 15 minutes by default).

Everything here is pure: the functions take the secret and the current time as arguments.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import AuthenticationFailed

__all__ = [
    "TOKEN_PREFIX",
    "BrowserPrincipal",
    "derive_secret",
    "is_browser_token",
    "sign_token",
    "verify_token",
]

TOKEN_PREFIX = "sgb_"
_SIGNED_PREFIX = TOKEN_PREFIX.encode()
_MAX_TOKEN = 4096


@dataclass(slots=True, frozen=True)
class BrowserPrincipal:
    """Who a browser token speaks for: one org and user, a set of features, until ``expires_at``;
    minted with the virtual key ``key_id`` (None in local development), whose budget, limits and
    revocation it shares."""

    org: str
    user: str
    features: tuple[str, ...]
    expires_at: int
    key_id: str | None = None

    def allows(self, feature: str) -> bool:
        """Whether the token may call ``feature``."""
        return feature in self.features

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "org": self.org,
            "user": self.user,
            "features": list(self.features),
            "expires_at": self.expires_at,
            "key_id": self.key_id,
        }


def derive_secret(pepper: bytes) -> bytes:
    """The token secret derived from the key pepper, used when no secret is configured."""
    return hmac.new(pepper, b"browser-tokens", hashlib.sha256).digest()


def is_browser_token(token: str) -> bool:
    """Whether ``token`` claims to be a browser token (it may still be forged or expired)."""
    return token.startswith(TOKEN_PREFIX)


def sign_token(secret: bytes, principal: BrowserPrincipal) -> str:
    """The token for ``principal``, signed with ``secret``."""
    claims: dict[str, Any] = {
        "o": principal.org,
        "u": principal.user,
        "f": list(principal.features),
        "e": principal.expires_at,
    }
    if principal.key_id is not None:  # minted with a virtual key (not in local development)
        claims["k"] = principal.key_id
    payload = _encode(orjson.dumps(claims))
    return f"{TOKEN_PREFIX}{payload}.{_encode(_signature(secret, payload.encode()))}"


def verify_token(secret: bytes, token: str, now: float) -> BrowserPrincipal:
    """The principal of a genuine, unexpired ``token``; `AuthenticationFailed` otherwise."""
    if not is_browser_token(token) or len(token) > _MAX_TOKEN:
        raise _invalid("it is not a sluicegate browser token")
    payload, dot, signature = token[len(TOKEN_PREFIX) :].partition(".")
    if not dot:
        raise _invalid("it is malformed")
    try:
        given = _decode(signature)
    except ValueError:
        raise _invalid("its signature is malformed") from None
    # The signature first: nothing in a forged payload is even parsed.
    if not hmac.compare_digest(given, _signature(secret, payload.encode())):
        raise _invalid("its signature does not match (forged, or signed with another secret)")
    principal = _principal(payload)
    if now >= principal.expires_at:
        raise AuthenticationFailed(
            "the browser token has expired; ask the application's backend for a new one",
            code="browser_token_expired",
        )
    return principal


def _principal(payload: str) -> BrowserPrincipal:
    try:
        claims = orjson.loads(_decode(payload))
    except (ValueError, orjson.JSONDecodeError):
        raise _invalid("its payload is malformed") from None
    if not isinstance(claims, dict):
        raise _invalid("its payload is malformed")
    org, user, features, expires, key_id = (claims.get(k) for k in ("o", "u", "f", "e", "k"))
    if (
        not isinstance(key_id, str | None)
        or not isinstance(org, str)
        or not isinstance(user, str)
        or not isinstance(features, list)
        or not all(isinstance(f, str) for f in features)
        or not isinstance(expires, int)
        or isinstance(expires, bool)
    ):
        raise _invalid("its payload is malformed")
    return BrowserPrincipal(org, user, tuple(features), expires, key_id)


def _signature(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, _SIGNED_PREFIX + payload, hashlib.sha256).digest()


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from None
    # The decoder skips stray characters and unused bits; only the canonical text is one token.
    if _encode(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _invalid(why: str) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"the browser token is invalid: {why}; ask the application's backend for a new one",
        code="invalid_browser_token",
    )
