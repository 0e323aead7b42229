"""Index the usage ledger by time alone, for the spend-rate breaker's sums over every org.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_usage_ledger_at", "usage_ledger", ["at"])


def downgrade() -> None:
    op.drop_index("ix_usage_ledger_at", "usage_ledger")
