"""Create usage_daily: the usage ledger summed per UTC day, org, user, feature and model.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("org", sa.String(128), primary_key=True),
        sa.Column("user", sa.String(128), primary_key=True),
        sa.Column("feature", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("model_requests", sa.BigInteger, nullable=False),
        sa.Column("upstream_calls", sa.BigInteger, nullable=False),
        sa.Column("cache_hits", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_micro", sa.BigInteger, nullable=False),
        sa.Column("saved_micro", sa.BigInteger, nullable=False),
        sa.Column("ledger_purged", sa.Boolean(create_constraint=False), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
