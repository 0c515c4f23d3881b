"""agreement lifecycle: proposals (not yet activated) and revocations

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 03:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agreements", schema=None) as batch_op:
        batch_op.alter_column("activated_at", existing_type=sa.DateTime(), nullable=True)
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("revoked_by", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("revocation", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # Proposals were never activated; they have no place in the older schema.
    op.execute("DELETE FROM agreements WHERE activated_at IS NULL")
    with op.batch_alter_table("agreements", schema=None) as batch_op:
        batch_op.drop_column("revocation")
        batch_op.drop_column("revoked_by")
        batch_op.drop_column("revoked_at")
        batch_op.alter_column("activated_at", existing_type=sa.DateTime(), nullable=False)
