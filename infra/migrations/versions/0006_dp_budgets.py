"""differential-privacy budgets and their ledger

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 04:00:00
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
        "dp_budgets",
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("total_epsilon", sa.Float(), nullable=False),
        sa.Column("spent_epsilon", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("agreement_id", "version"),
    )
    op.create_table(
        "dp_ledger",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("charged_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )


def downgrade() -> None:
    op.drop_table("dp_ledger")
    op.drop_table("dp_budgets")
