"""Virtual keys, tenants and the admin key.

A virtual key (``sk-sg-…``) is shown once, when it is created; the database keeps only its
HMAC-SHA256 under a server pepper. The pepper comes from ``$SLUICEGATE_KEY_PEPPER`` or, on
the embedded default, from ``.sluicegate/pepper`` (made on first use, mode 0600).

With ``auth.require_keys`` off (the embedded default), every request belongs to the local
development org and the ``Authorization`` header is ignored, except for a browser token
(``sgb_…``, see `sluicegate.browser_tokens`): that one is always verified, so the org, user and
features it is bound to hold in every mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .browser_tokens import TOKEN_PREFIX, BrowserPrincipal, derive_secret, sign_token, verify_token
from .calls import RequestContext
from .config import DEFAULT_FEATURE, Settings
from .errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from .store.tables import virtual_keys

__all__ = [
    "Authenticator",
    "BrowserPrincipal",
    "KeyRecord",
    "KeyStore",
    "Principal",
    "browser_token_secret",
    "hash_key",
    "load_pepper",
    "new_key",
]

KEY_PREFIX = "sk-sg-"
_MAX_NAME = 128


def new_key() -> str:
    """A fresh virtual key: ``sk-sg-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(pepper: bytes, key: str) -> str:
    """The stored form of ``key``: HMAC-SHA256 under the server's pepper, in hex."""
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


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


@dataclass(slots=True, frozen=True)
class KeyRecord:
    """A stored virtual key, without the key."""

    id: str
    prefix: str
    org: str
    user: str | None
    name: str | None
    created_at: datetime
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "prefix": self.prefix,
            "org": self.org,
            "user": self.user,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


Principal: TypeAlias = KeyRecord | BrowserPrincipal
"""Who authenticated: a virtual key's record, or a browser token's principal."""


def _record(row: Any) -> KeyRecord:
    created = _utc(row.created_at)
    assert created is not None
    return KeyRecord(row.id, row.prefix, row.org, row.user, row.name, created, _utc(row.revoked_at))


def _check_label(what: str, value: str | None) -> None:
    if value is not None and not 0 < len(value) <= _MAX_NAME:
        raise InvalidRequest(f"{what} must be 1-{_MAX_NAME} characters", param=what)


class KeyStore:
    """Virtual keys in the SQL database."""

    def __init__(self, engine: AsyncEngine, pepper: bytes) -> None:
        self._engine = engine
        self._pepper = pepper

    async def create(
        self, org: str, *, user: str | None = None, name: str | None = None
    ) -> tuple[str, KeyRecord]:
        """Create a key for ``org``; return the key (shown only now) and its record."""
        _check_label("org", org)
        _check_label("user", user)
        _check_label("name", name)
        key = new_key()
        record = KeyRecord(
            secrets.token_hex(8),
            key[: len(KEY_PREFIX) + 6],
            org,
            user,
            name,
            datetime.now(UTC),
            None,
        )
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(virtual_keys).values(
                    key_hash=hash_key(self._pepper, key),
                    **{f: getattr(record, f) for f in ("id", "prefix", "org", "user", "name", "created_at")},
                )
            )
        return key, record

    async def list_keys(self, org: str | None = None, *, include_revoked: bool = False) -> list[KeyRecord]:
        """Keys, newest first, optionally of one org."""
        query = select(virtual_keys).order_by(virtual_keys.c.created_at.desc())
        if org is not None:
            query = query.where(virtual_keys.c.org == org)
        if not include_revoked:
            query = query.where(virtual_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def revoke(self, id_or_prefix: str) -> KeyRecord:
        """Revoke the key with this id or prefix; `NotFound` when none or several match."""
        match = or_(virtual_keys.c.id == id_or_prefix, virtual_keys.c.prefix == id_or_prefix)
        async with self._engine.begin() as conn:
            rows = list(await conn.execute(select(virtual_keys).where(match)))
            if len(rows) != 1:
                what = "no key" if not rows else f"{len(rows)} keys"
                raise NotFound(f"{what} match {id_or_prefix!r}; use the id from `sluicegate keys list`")
            now = datetime.now(UTC)
            await conn.execute(
                update(virtual_keys).where(virtual_keys.c.id == rows[0].id).values(revoked_at=now)
            )
        record = _record(rows[0])
        return KeyRecord(
            record.id, record.prefix, record.org, record.user, record.name, record.created_at, now
        )

    async def find(self, key: str) -> KeyRecord | None:
        """The live record for ``key``, or None when unknown or revoked."""
        query = select(virtual_keys).where(
            virtual_keys.c.key_hash == hash_key(self._pepper, key),
            virtual_keys.c.revoked_at.is_(None),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None


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
        # and at the latest when the entry expires after `key_cache_seconds`.
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
        `AuthenticationFailed` for a missing, malformed, unknown or revoked key, and for a
        forged or expired browser token.
        """
        token = _browser_token(authorization)
        if token is not None:
            return verify_token(self._token_secret(), token, self._wall_clock())
        if not self._require_keys:
            return None
        return await self._lookup(_bearer(authorization))

    def mint_browser_token(
        self, org: str, user: str, features: tuple[str, ...], ttl_s: int
    ) -> tuple[str, BrowserPrincipal]:
        """A browser token for ``user`` of ``org``, valid for ``ttl_s`` seconds, and its principal."""
        principal = BrowserPrincipal(org, user, features, int(self._wall_clock()) + ttl_s)
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
        if body is not None:
            metadata = body.get("metadata")
            if isinstance(metadata, dict):
                feature = feature or _str_or_none(metadata.get("feature"))
                user = user or _str_or_none(metadata.get("user"))
            user = user or _str_or_none(body.get("user"))
        feature = feature or DEFAULT_FEATURE
        if feature not in self._features:
            known = ", ".join(sorted(self._features))
            raise InvalidRequest(
                f"unknown feature {feature!r}; configured features are: {known}",
                param="feature",
                code="unknown_feature",
            )
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
            return RequestContext(key.org, key.user, feature, None)
        return RequestContext(key.org, user or key.user, feature, key.id)

    def forget(self, key_ids: set[str]) -> None:
        """Drop the cached records of these keys (revoked elsewhere): the next use looks again."""
        for key, (record, _) in list(self._cache.items()):
            if record is not None and record.id in key_ids:
                del self._cache[key]

    async def _lookup(self, key: str) -> KeyRecord:
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            record = cached[0]
        else:
            assert self._store is not None
            record = await self._store.find(key)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (record, now + self._ttl)
        if record is None:
            raise AuthenticationFailed(
                "the API key is unknown or revoked; create one with `sluicegate keys create`"
            )
        return record

    def is_admin(self, authorization: str | None) -> bool:
        """Whether ``authorization`` is the admin key (always, in local development mode)."""
        if _browser_token(authorization) is not None:
            return False
        if self._admin_key is None:
            return not self._require_keys
        given = authorization.partition(" ")[2].strip().encode() if authorization else b""
        return hmac.compare_digest(given, self._admin_key)

    def check_admin(self, authorization: str | None) -> None:
        """Allow admin routes: with the admin key, or freely in local development mode.

        A browser token is refused in every mode.
        """
        if _browser_token(authorization) is not None:
            raise PermissionDenied("browser tokens cannot call admin routes; use the admin key")
        if self._admin_key is None:
            if not self._require_keys:
                return
            raise PermissionDenied(f"admin routes are disabled: set {self._admin_env} to enable them")
        given = _bearer(authorization).encode()
        if not hmac.compare_digest(given, self._admin_key):
            raise AuthenticationFailed("this route needs the admin key as the Bearer token")


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


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def pepper_path(settings: Settings) -> Path:
    """Where the embedded default keeps its pepper."""
    return settings.data_dir / "pepper"
