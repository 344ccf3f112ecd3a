"""Deploy locks record the server that holds them, so a restarted server frees its own at once.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("app_locks") as batch:  # batch: SQLite cannot alter a table in place
        batch.add_column(sa.Column("server", sa.String(200), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("app_locks") as batch:
        batch.drop_column("server")
