"""consent import batches

A bulk import signs one statement per batch, covering the receipt payloads of its events, instead
of one receipt per event: consent_batches holds those statements, and an imported event keeps its
receipt payload and its batch (its signed receipt is made on demand).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 06:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_EVIDENCE = "receipt IS NOT NULL OR (payload IS NOT NULL AND batch_id IS NOT NULL)"


def upgrade() -> None:
    op.create_table(
        "consent_batches",
        sa.Column("batch_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("batch_id"),
    )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch_op.alter_column("receipt", existing_type=sa.LargeBinary(), nullable=True)
        batch_op.create_foreign_key(
            "fk_consent_events_batch_id", "consent_batches", ["batch_id"], ["batch_id"]
        )
        batch_op.create_check_constraint("ck_consent_events_evidence", _EVIDENCE)


def downgrade() -> None:
    # The older schema needs a stored receipt for every event; refuse rather than drop evidence.
    imported = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM consent_events WHERE receipt IS NULL"))
        .scalar_one()
    )
    if imported:
        raise RuntimeError(
            f"cannot downgrade below 0007: {imported} imported consent events have no stored "
            "receipt (export their receipts first)"
        )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.drop_constraint("ck_consent_events_evidence", type_="check")
        batch_op.drop_constraint("fk_consent_events_batch_id", type_="foreignkey")
        batch_op.alter_column("receipt", existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column("batch_id")
        batch_op.drop_column("payload")
    op.drop_table("consent_batches")
