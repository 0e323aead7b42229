"""Give virtual keys an expiry and a successor, for rotation with a grace period.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, without defaults: adding them rewrites no rows, and every existing key stays
    # as it was (no expiry, no successor).
    with op.batch_alter_table("virtual_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("replaced_by", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("virtual_keys") as batch:
        batch.drop_column("replaced_by")
        batch.drop_column("expires_at")
