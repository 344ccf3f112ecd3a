"""Alembic's entry point: runs the migrations on the connection the store hands over (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from keyless.store.models import Base

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things, so later migrations copy tables instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
