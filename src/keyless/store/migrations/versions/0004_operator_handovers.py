"""Apps handed to the keyless operator: the KeylessApp the control plane wrote for each, and from which revision.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from keyless.store.models import UtcDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_handovers",
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("target_name", sa.String(63), nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("refresh_interval", sa.String(32), nullable=True),
        sa.Column("suspend", sa.Boolean(), nullable=False),
        sa.Column("handed_by", sa.String(200), nullable=False),
        sa.Column("handed_at", UtcDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("operator_handovers")
