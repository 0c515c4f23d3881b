"""released cells and their contributors per partner, agreement and dataset (differencing guard)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "release_histories",
        sa.Column("history_id", _ID, autoincrement=True, nullable=False),
        sa.Column("partner", sa.String(length=128), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("dataset", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("history_id"),
        sa.UniqueConstraint("partner", "agreement_id", "dataset", name="uq_release_histories_key"),
    )
    op.create_index(
        "ix_release_histories_expires_at", "release_histories", ["expires_at"], unique=False
    )
    op.create_table(
        "release_cells",
        sa.Column("cell_id", _ID, autoincrement=True, nullable=False),
        sa.Column("history_id", _ID, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("contributors", sa.Integer(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.BigInteger(), nullable=False),
        sa.Column("members", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["history_id"], ["release_histories.history_id"]),
        sa.PrimaryKeyConstraint("cell_id"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_release_cells_history", "release_cells", ["history_id", "cell_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_release_cells_history", table_name="release_cells")
    op.drop_table("release_cells")
    op.drop_index("ix_release_histories_expires_at", table_name="release_histories")
    op.drop_table("release_histories")
