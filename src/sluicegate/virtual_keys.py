"""Virtual keys: making them, their stored record, and the `KeyStore` that keeps them in SQL.

A key is shown once, when it is created or rotated in; the database keeps only its HMAC-SHA256
under the server's pepper. Rotation makes a new key for the same org, user and name and gives
the old one an expiry (``expires_at``) after a grace period; until then both work. A key that
was rotated cannot be rotated again (rotate its replacement, or revoke it to end the grace).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config_base import name_problem
from .config_money import org_of_request
from .errors import InvalidRequest, NotFound
from .store.tables import virtual_keys

__all__ = [
    "DEFAULT_GRACE_S",
    "KEY_PREFIX",
    "MAX_GRACE_S",
    "KeyRecord",
    "KeyStore",
    "hash_key",
    "new_key",
    "rotation_refusal",
]

KEY_PREFIX = "sk-sg-"
DEFAULT_GRACE_S = 86_400
MAX_GRACE_S = 365 * 86_400


def new_key() -> str:
    """A fresh virtual key: ``sk-sg-`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(pepper: bytes, key: str) -> str:
    """The stored form of ``key``: HMAC-SHA256 under the server's pepper, in hex."""
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
    expires_at: datetime | None = None
    replaced_by: str | None = None
    """The id of the key that replaced this one, when it was rotated."""
    replaced_by_prefix: str | None = None

    def expired(self, now: datetime) -> bool:
        """Whether the key's expiry (set by a rotation) has passed at ``now``."""
        return self.expires_at is not None and self.expires_at <= now

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "prefix": self.prefix,
            "org": self.org,
            "user": self.user,
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": _iso(self.revoked_at),
            "expires_at": _iso(self.expires_at),
            "replaced_by": self.replaced_by,
            "replaced_by_prefix": self.replaced_by_prefix,
        }


def rotation_refusal(record: KeyRecord, now: datetime) -> str | None:
    """Why ``record`` cannot be rotated at ``now``, or None when it can."""
    if record.revoked_at is not None:
        return f"key {record.id} was revoked; create a new one with `sluicegate keys create`"
    if record.expired(now):
        assert record.expires_at is not None
        return (
            f"key {record.id} expired at {record.expires_at.isoformat(timespec='seconds')}; "
            "create a new one with `sluicegate keys create`"
        )
    if record.replaced_by is not None:
        return (
            f"key {record.id} was already rotated; its replacement is {record.replaced_by} "
            f"({record.replaced_by_prefix}…): rotate that one, or revoke this one to end its grace now"
        )
    return None


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: Any) -> KeyRecord:
    created = _utc(row.created_at)
    assert created is not None
    return KeyRecord(
        row.id,
        row.prefix,
        row.org,
        row.user,
        row.name,
        created,
        _utc(row.revoked_at),
        _utc(row.expires_at),
        row.replaced_by,
        row.replaced_by_prefix,
    )


def _select() -> Select[Any]:
    """Every column of a key, and the prefix of the key that replaced it."""
    successor = virtual_keys.alias("successor")
    return select(virtual_keys, successor.c.prefix.label("replaced_by_prefix")).outerjoin(
        successor, successor.c.id == virtual_keys.c.replaced_by
    )


def _check_label(what: str, value: str | None) -> None:
    problem = name_problem(value) if value is not None else None
    if problem is not None:
        raise InvalidRequest(f"{what} {problem}", param=what)


def _check_grace(grace_s: float) -> None:
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise InvalidRequest(f"the grace period is 0 to {MAX_GRACE_S} seconds (365 days)", param="grace_s")


class KeyStore:
    """Virtual keys in the SQL database."""

    def __init__(self, engine: AsyncEngine, pepper: bytes) -> None:
        self._engine = engine
        self._pepper = pepper

    def _new(self, org: str, user: str | None, name: str | None, now: datetime) -> tuple[str, KeyRecord]:
        org_of_request(org)
        _check_label("user", user)
        _check_label("name", name)
        key = new_key()
        return key, KeyRecord(secrets.token_hex(8), key[: len(KEY_PREFIX) + 6], org, user, name, now, None)

    async def _insert(self, conn: AsyncConnection, key: str, record: KeyRecord) -> None:
        fields = ("id", "prefix", "org", "user", "name", "created_at")
        values = {f: getattr(record, f) for f in fields}
        await conn.execute(insert(virtual_keys).values(key_hash=hash_key(self._pepper, key), **values))

    async def create(
        self, org: str, *, user: str | None = None, name: str | None = None
    ) -> tuple[str, KeyRecord]:
        """Create a key for ``org``; return the key (shown only now) and its record."""
        key, record = self._new(org, user, name, datetime.now(UTC))
        async with self._engine.begin() as conn:
            await self._insert(conn, key, record)
        return key, record

    async def list_keys(
        self, org: str | None = None, *, include_revoked: bool = False, now: datetime | None = None
    ) -> list[KeyRecord]:
        """Keys, newest first, optionally of one org; revoked and expired ones only when asked."""
        query = _select().order_by(virtual_keys.c.created_at.desc())
        if org is not None:
            query = query.where(virtual_keys.c.org == org)
        if not include_revoked:
            moment = now or datetime.now(UTC)
            query = query.where(
                virtual_keys.c.revoked_at.is_(None),
                or_(virtual_keys.c.expires_at.is_(None), virtual_keys.c.expires_at > moment),
            )
        async with self._engine.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

    async def _one(self, conn: AsyncConnection, id_or_prefix: str) -> KeyRecord:
        match = or_(virtual_keys.c.id == id_or_prefix, virtual_keys.c.prefix == id_or_prefix)
        rows = list(await conn.execute(_select().where(match)))
        if len(rows) != 1:
            what = "no key" if not rows else f"{len(rows)} keys"
            raise NotFound(f"{what} match {id_or_prefix!r}; use the id from `sluicegate keys list`")
        return _record(rows[0])

    async def revoke(self, id_or_prefix: str) -> KeyRecord:
        """Revoke the key with this id or prefix; `NotFound` when none or several match. A key
        revoked already keeps the time it was revoked first."""
        async with self._engine.begin() as conn:
            record = await self._one(conn, id_or_prefix)
            if record.revoked_at is not None:
                return record
            now = datetime.now(UTC)
            await conn.execute(
                update(virtual_keys).where(virtual_keys.c.id == record.id).values(revoked_at=now)
            )
        return replace(record, revoked_at=now)

    async def rotate(
        self, id_or_prefix: str, grace_s: float = DEFAULT_GRACE_S, *, now: datetime | None = None
    ) -> tuple[str, KeyRecord, KeyRecord]:
        """Replace a key: a new one for the same org, user and name, and the old one expiring
        ``grace_s`` seconds from now. Returns the new key (shown only now), its record and the
        old key's record. `NotFound` as for `revoke`; `InvalidRequest` for a revoked, expired or
        already rotated key."""
        _check_grace(grace_s)
        now = now or datetime.now(UTC)
        async with self._engine.begin() as conn:
            old = await self._one(conn, id_or_prefix)
            refusal = rotation_refusal(old, now)
            if refusal is not None:
                raise InvalidRequest(refusal, code="key_not_rotatable")
            key, new = self._new(old.org, old.user, old.name, now)
            await self._insert(conn, key, new)
            expires = now + timedelta(seconds=grace_s)
            # Only if nobody rotated or revoked it meanwhile: otherwise the new key is rolled back.
            changed = await conn.execute(
                update(virtual_keys)
                .where(
                    and_(
                        virtual_keys.c.id == old.id,
                        virtual_keys.c.replaced_by.is_(None),
                        virtual_keys.c.revoked_at.is_(None),
                    )
                )
                .values(expires_at=expires, replaced_by=new.id)
            )
            if changed.rowcount != 1:
                raise InvalidRequest(
                    f"key {old.id} was rotated or revoked at the same moment; list the keys and try again",
                    code="key_not_rotatable",
                )
        return key, new, replace(old, expires_at=expires, replaced_by=new.id, replaced_by_prefix=new.prefix)

    async def find_id(self, key_id: str) -> KeyRecord | None:
        """The live (not revoked) record of the key ``key_id``, or None."""
        query = _select().where(virtual_keys.c.id == key_id, virtual_keys.c.revoked_at.is_(None))
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def find(self, key: str) -> KeyRecord | None:
        """The record for ``key``, or None when unknown or revoked (an expired record is
        returned: the caller compares its expiry with its own clock)."""
        query = _select().where(
            virtual_keys.c.key_hash == hash_key(self._pepper, key),
            virtual_keys.c.revoked_at.is_(None),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None
