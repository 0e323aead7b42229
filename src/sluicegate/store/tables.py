"""The SQL schema, as SQLAlchemy Core tables; Alembic migrations create it."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table

__all__ = ["metadata", "virtual_keys"]

metadata = MetaData()

virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    # HMAC-SHA256 of the key with the server's pepper; the key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("org", String(128), nullable=False),
    Column("user", String(128), nullable=True),
    Column("name", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Index("ix_virtual_keys_org", "org"),
)
