"""Create the cache tables: cache_entries (the SQL tier), cache_namespaces and cache_stats.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("feature", sa.String(64), nullable=False),
        sa.Column("org", sa.String(128), nullable=False),
        sa.Column("user", sa.String(128), nullable=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("namespace", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("hits", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("keep_until", sa.Float, nullable=False),
    )
    op.create_index("ix_cache_entries_keep_until", "cache_entries", ["keep_until"])
    op.create_index("ix_cache_entries_feature", "cache_entries", ["feature"])
    op.create_index("ix_cache_entries_org", "cache_entries", ["org"])
    op.create_table(
        "cache_namespaces",
        sa.Column("feature", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "cache_stats",
        sa.Column("feature", sa.String(64), primary_key=True),
        sa.Column("metric", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("cache_stats")
    op.drop_table("cache_namespaces")
    op.drop_index("ix_cache_entries_org", table_name="cache_entries")
    op.drop_index("ix_cache_entries_feature", table_name="cache_entries")
    op.drop_index("ix_cache_entries_keep_until", table_name="cache_entries")
    op.drop_table("cache_entries")
