"""Tenants, the admin key, and who a request's key or browser token says the caller is.

A virtual key (``sk-sg-…``, see `sluicegate.virtual_keys`) is stored only as its HMAC-SHA256
under a server pepper. The pepper comes from ``$SLUICEGATE_KEY_PEPPER`` or, on the embedded
default, from ``.sluicegate/pepper`` (made on first use, mode 0600).

With ``auth.require_keys`` off (the embedded default), every request belongs to the local
development org and the ``Authorization`` header is ignored, except for a browser token
(``sgb_…``, see `sluicegate.browser_tokens`): that one is always verified, so the org, user and
features it is bound to hold in every mode.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy.exc import SQLAlchemyError

from .browser_tokens import TOKEN_PREFIX, BrowserPrincipal, derive_secret, sign_token, verify_token
from .calls import RequestContext
from .config import DEFAULT_FEATURE, Settings
from .config_base import name_problem
from .config_money import org_of_request
from .errors import AuthenticationFailed, InvalidRequest, PermissionDenied, ServiceUnavailable
from .store.transactions import in_time
from .virtual_keys import KeyRecord, KeyStore, hash_key, new_key

__all__ = [
    "Authenticator",
    "BrowserPrincipal",
    "KeyRecord",
    "KeyStore",
    "Principal",
    "browser_token_secret",
    "expired_key_message",
    "hash_key",
    "load_pepper",
    "new_key",
]


def load_pepper(settings: Settings) -> bytes:
    """The server pepper, from the environment or the data folder (created on first use)."""
    value = os.environ.get(settings.auth.pepper_env)
    if value:
        return value.encode()
    path = pepper_path(settings)
    if not path.exists():
        # Several workers may start at once: each writes a private file and links it into
        # place, which fails if another got there first, so every worker reads the same pepper.
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".pepper.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_hex(32).encode())
            with contextlib.suppress(FileExistsError):
                os.link(scratch, path)
        finally:
            scratch.unlink()
    return path.read_bytes().strip()


def browser_token_secret(settings: Settings) -> bytes:
    """The secret browser tokens are signed with: from the environment, else derived from the pepper."""
    value = os.environ.get(settings.browser.token_secret_env)
    if value:
        return value.encode()
    return derive_secret(load_pepper(settings))


Principal: TypeAlias = KeyRecord | BrowserPrincipal
"""Who authenticated: a virtual key's record, or a browser token's principal."""


_RETRY_LOOKUP_S = 5.0  # with the database unreachable, how long a key's last known record stands


class Authenticator:
    """Turns a request's key and headers into a `RequestContext`."""

    def __init__(
        self,
        settings: Settings,
        store: KeyStore | None,
        *,
        clock: Any = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._require_keys = settings.auth.require_keys
        self._dev_org = settings.auth.dev_org
        self._features = frozenset(settings.features) | {DEFAULT_FEATURE}
        self._store = store
        self._ttl = settings.auth.key_cache_seconds
        self._clock = clock
        # Keys seen recently, so that the hot path does not query the database. A revocation
        # reaches every worker within `controls.poll_interval_s` (`Controls` calls `forget`),
        # and at the latest when the entry expires after `key_cache_seconds`. A rotated key's
        # expiry is compared at each request; a record cached before the rotation lacks it,
        # and the same poll forgets that record as the expiry passes.
        self._cache: dict[str, tuple[KeyRecord | None, float]] = {}
        admin = os.environ.get(settings.auth.admin_key_env)
        self._admin_key = admin.encode() if admin else None
        self._admin_env = settings.auth.admin_key_env
        self._wall_clock = wall_clock
        # Loaded on first use, so that a gateway no browser calls never reads the pepper.
        self._browser_secret: bytes | None = None

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller's key or browser token, checked before anything else is read.

        None when keys are not required and no browser token is presented. Raises
        `AuthenticationFailed` for a missing, malformed, unknown, revoked or expired key, and
        for a forged or expired browser token.
        """
        token = _browser_token(authorization)
        if token is not None:
            principal = verify_token(self._token_secret(), token, self._wall_clock())
            if principal.key_id is not None and self._store is not None:
                await self._lookup(principal.key_id, by_id=True)  # the key it was minted with lives
            return principal
        if not self._require_keys:
            return None
        return await self._lookup(_bearer(authorization))

    def mint_browser_token(
        self, org: str, user: str, features: tuple[str, ...], ttl_s: int, key_id: str | None = None
    ) -> tuple[str, BrowserPrincipal]:
        """A browser token for ``user`` of ``org``, valid for ``ttl_s`` seconds, minted with the
        key ``key_id``, and its principal."""
        principal = BrowserPrincipal(org, user, features, int(self._wall_clock()) + ttl_s, key_id)
        return sign_token(self._token_secret(), principal), principal

    def _token_secret(self) -> bytes:
        if self._browser_secret is None:
            self._browser_secret = browser_token_secret(self._settings)
        return self._browser_secret

    def context(
        self,
        key: Principal | None,
        feature: str | None,
        user: str | None,
        body: dict[str, Any] | None = None,
    ) -> RequestContext:
        """Who the request is for: the key's org, and the feature and user from headers or body.

        Headers win over the body's ``metadata.feature`` / ``metadata.user``, then ``user``,
        then the key's own user. Raises `InvalidRequest` for a feature not configured.
        A browser token fixes the org and user whatever the request says, and raises
        `PermissionDenied` for a feature outside its list.
        """
        if body is not None:  # checked whether or not a header wins: they go upstream too
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                named = _str_or_none(metadata.get("feature"), "metadata.feature")
                feature = feature or named
                named = _str_or_none(metadata.get("user"), "metadata.user")
                user = user or named
            named = _str_or_none(body.get("user"), "user")
            user = user or named
        if user is not None:
            _check_user(user)
        feature = feature or DEFAULT_FEATURE
        self.check_feature(feature)
        if key is None:
            return RequestContext(self._dev_org, user, feature, None)
        if isinstance(key, BrowserPrincipal):
            if not key.allows(feature):
                raise PermissionDenied(
                    f"this browser token does not allow the feature {feature!r}; it allows "
                    f"{', '.join(key.features) or 'none'}: name one in X-Sluicegate-Feature, "
                    "or mint a token that includes it",
                    param="feature",
                    code="feature_not_allowed",
                )
            return RequestContext(key.org, key.user, feature, key.key_id)
        return RequestContext(key.org, user or key.user, feature, key.id)

    def check_context(self, context: RequestContext) -> None:
        """Raise `InvalidRequest` for a context the stores cannot hold: an unknown feature, a
        user or an org that cannot be one's name (a library caller's own `RequestContext`)."""
        for name, value in (("org", context.org), ("feature", context.feature), ("user", context.user)):
            if not isinstance(value, str) and (value is not None or name != "user"):
                raise InvalidRequest(
                    f"the context's {name} must be a string, got {type(value).__name__}",
                    param=name,
                    code="invalid_type",
                )
        self.check_feature(context.feature)
        if context.user is not None:
            _check_user(context.user)
        org_of_request(context.org)

    def check_feature(self, feature: str) -> None:
        """Raise `InvalidRequest` (``unknown_feature``) when ``feature`` is not configured."""
        if feature not in self._features:
            known = ", ".join(sorted(self._features))
            raise InvalidRequest(
                f"unknown feature {feature!r}; configured features are: {known}",
                param="feature",
                code="unknown_feature",
            )

    def forget(self, key_ids: set[str]) -> None:
        """Drop the cached records of these keys (revoked elsewhere): the next use looks again."""
        for key, (record, _) in list(self._cache.items()):
            if record is not None and record.id in key_ids:
                del self._cache[key]

    async def _lookup(self, key: str, by_id: bool = False) -> KeyRecord:
        """The live record of ``key`` (or, ``by_id``, of the key with that id: a browser
        token's), cached; `AuthenticationFailed` when it is unknown, revoked or expired."""
        now = self._clock()
        cache_key = "id:" + key if by_id else key
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > now:
            record = cached[0]
        else:
            assert self._store is not None
            try:
                async with in_time():
                    record = await (self._store.find_id(key) if by_id else self._store.find(key))
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                if cached is None or cached[0] is None:
                    raise ServiceUnavailable(
                        "the API key cannot be checked: the database is unreachable; try again shortly",
                        code="database_unavailable",
                        headers={"retry-after": "5"},
                    ) from exc
                # The database is unreachable: the key's last known record stands (a revocation
                # made meanwhile reaches this process with the database, as it would anyway), and
                # is asked again in a few seconds, not on every request.
                record = cached[0]
                self._cache[cache_key] = (record, now + _RETRY_LOOKUP_S)
            else:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[cache_key] = (record, now + self._ttl)
        gone = (
            "the virtual key this browser token was minted with is revoked or expired; ask the "
            "application's backend for a new token"
        )
        if record is None:
            if by_id:
                raise AuthenticationFailed(gone, code="browser_token_revoked")
            raise AuthenticationFailed(
                "the API key is unknown or revoked; create one with `sluicegate keys create`"
            )
        # Compared here, not when cached: an expiry holds on time whatever the cache's age.
        if record.expires_at is not None:
            now_utc = datetime.fromtimestamp(self._wall_clock(), UTC)
            if record.expired(now_utc):
                if by_id:  # a browser is not told of the key's replacement
                    raise AuthenticationFailed(gone, code="browser_token_revoked")
                raise AuthenticationFailed(expired_key_message(record), code="expired_api_key")
        return record

    def is_admin(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is the admin key (always, in local development mode)."""
        if _browser_token(authorization) is not None:
            return False
        if self._admin_key is None:
            return not self._require_keys
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self._admin_key)

    def check_admin(self, authorization: str | None, origin: str | None = None) -> None:
        """Allow admin routes: with the admin key, or freely in local development mode, but for
        a browser's request there (``origin``: any web page the developer opens could send it).

        A browser token is refused in every mode.
        """
        if _browser_token(authorization) is not None:
            raise PermissionDenied("browser tokens cannot call admin routes; use the admin key")
        if self._admin_key is None:
            if not self._require_keys:
                if origin is not None:
                    raise PermissionDenied(
                        f"admin routes refuse requests from web pages (Origin: {origin[:100]}) in local "
                        f"development mode, where they need no key; use the CLI or curl, or set "
                        f"{self._admin_env} and send it"
                    )
                return
            raise PermissionDenied(f"admin routes are disabled: set {self._admin_env} to enable them")
        if not authorization:
            raise AuthenticationFailed(
                f"missing admin key: this route needs the admin key (${self._admin_env}) as "
                "`Authorization: Bearer …`",
                code="missing_api_key",
            )
        given = _bearer(authorization).encode()
        if not hmac.compare_digest(given, self._admin_key):
            raise AuthenticationFailed("this route needs the admin key as the Bearer token")


def expired_key_message(record: KeyRecord) -> str:
    """What a caller with an expired key is told: when it expired, and its replacement's prefix."""
    assert record.expires_at is not None
    when = record.expires_at.isoformat(timespec="seconds")
    if record.replaced_by_prefix is not None:
        return (
            f"this API key was rotated and expired at {when}; use its replacement, the key "
            f"starting {record.replaced_by_prefix}… (ask whoever manages your keys for it)"
        )
    return f"this API key expired at {when}; ask for a new one (`sluicegate keys create`)"


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationFailed(
            "missing API key: send it as `Authorization: Bearer sk-sg-…`", code="missing_api_key"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("the Authorization header must be `Bearer <key>`")
    return token


def _browser_token(authorization: str | None) -> str | None:
    """The browser token in ``Bearer sgb_…``, or None for anything else (cheaply)."""
    if authorization is None or TOKEN_PREFIX not in authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    return token


def _check_user(user: str) -> None:
    """`InvalidRequest` (``invalid_user``) for a user id the stores cannot hold."""
    problem = name_problem(user)
    if problem is not None:
        raise InvalidRequest(f"the user's id {problem}", param="user", code="invalid_user")


def _str_or_none(value: object, param: str) -> str | None:
    """The body's ``param`` if it names something; `InvalidRequest` if it is not a string."""
    if value is None or isinstance(value, str):
        return value or None
    raise InvalidRequest(
        f"{param} must be a string, got {type(value).__name__}", param=param, code="invalid_type"
    )


def pepper_path(settings: Settings) -> Path:
    """Where the embedded default keeps its pepper."""
    return settings.data_dir / "pepper"
