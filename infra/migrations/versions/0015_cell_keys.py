"""every resident's fixed random cell key, for the cell_key disclosure regime

resident_cell_keys holds one key per resident, drawn at random by the database when the resident is
first numbered or first counted under a cell_key agreement (node.numbers.key_selected), and never
changed: a cell's perturbation is a function of its contributors' keys (node.cell_key).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resident_cell_keys",
        sa.Column("resident_id", sa.String(length=128), nullable=False),
        sa.Column("cell_key", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("resident_id"),
    )


def downgrade() -> None:
    op.drop_table("resident_cell_keys")
