"""witnessing

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 03:22:26.244990
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "log_cosignatures",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.String(length=128), nullable=False),
        sa.Column("cosignature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", "witness", name=op.f("pk_log_cosignatures")),
    )
    op.create_table(
        "witnessed_logs",
        sa.Column("origin", sa.String(length=256), nullable=False),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("origin", name=op.f("pk_witnessed_logs")),
    )


def downgrade() -> None:
    op.drop_table("witnessed_logs")
    op.drop_table("log_cosignatures")
