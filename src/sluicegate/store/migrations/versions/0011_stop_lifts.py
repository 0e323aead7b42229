"""Record when each emergency stop was last lifted, so that the spend-rate breaker counts only
what an org spent since.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stop_lifts",
        sa.Column("scope", sa.String(160), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stop_lifts")
