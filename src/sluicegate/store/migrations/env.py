"""Alembic's environment: runs on the connection `sluicegate.store.db.migrate` hands it."""

from __future__ import annotations

from alembic import context

from sluicegate.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
