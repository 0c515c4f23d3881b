"""trust bundle versions

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 03:18:21.758193
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_bundles",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("installed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_trust_bundles")),
    )


def downgrade() -> None:
    op.drop_table("trust_bundles")
