"""Create the budget tables: limits set at run time, spend per period, reservations, alerts.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_limits",
        sa.Column("scope", sa.String(160), primary_key=True),
        sa.Column("limit_micro", sa.BigInteger, nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "budget_periods",
        sa.Column("scope", sa.String(160), primary_key=True),
        sa.Column("period", sa.String(16), primary_key=True),
        sa.Column("spent_micro", sa.BigInteger, nullable=False),
        sa.Column("reserved_micro", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("scope", sa.String(160), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("amount_micro", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
    )
    op.create_index("ix_budget_reservations_open", "budget_reservations", ["state", "expires_at"])
    op.create_table(
        "budget_alerts",
        sa.Column("scope", sa.String(160), primary_key=True),
        sa.Column("period", sa.String(16), primary_key=True),
        sa.Column("level", sa.String(16), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("budget_alerts", "budget_reservations", "budget_periods", "budget_limits"):
        op.drop_table(table)
