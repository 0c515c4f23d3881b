"""resident-level statements enter the log as salted commitments; salts and statements kept apart (erasure)

From this revision a consent receipt or a bulk import's statement is appended to the node's log
as a signed commitment (domain.commitment: the statement's type and SHA-256(salt || statement)),
not whole. The city keeps the openings: a receipt's statement and salt in log_openings, a batch
statement's salt in consent_batches.salt (the statement is already there), and each imported
event's own salt in consent_events.salt (a batch's statement lists salted digests).
log_erasures and resident_erasures record erasures without naming the resident.

Entries logged before this revision keep their place and bytes: a Merkle log cannot drop or
rewrite an entry without breaking every checkpoint already signed and witnessed. Those old
consent receipts and unsalted batch statements stay readable in the log as they were; erasing
a resident deletes the city's own rows about them, and the old entries are left as they are.

Downgrade drops the new tables and columns, and with them the openings of every commitment
logged since: refused while any exists, as the statements would otherwise be lost to the log.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_NUMBER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("consent_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("salt", sa.LargeBinary(), nullable=True))
    op.create_table(
        "log_openings",
        sa.Column("log_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("statement_type", sa.String(64), nullable=False),
        sa.Column("resident_id", sa.String(128), nullable=False),
        sa.Column("record_id", sa.String(128), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_log_openings_resident_id", "log_openings", ["resident_id"])
    op.create_index("ix_log_openings_record_id", "log_openings", ["record_id"])
    op.create_table(
        "log_erasures",
        sa.Column("log_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("members", sa.Integer(), nullable=True),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "resident_erasures",
        sa.Column("erasure_id", _NUMBER, primary_key=True, autoincrement=True),
        sa.Column("erased_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    bind = op.get_bind()
    kept = bind.execute(sa.text("SELECT count(*) FROM log_openings")).scalar_one()
    kept += bind.execute(
        sa.text("SELECT count(*) FROM consent_batches WHERE salt IS NOT NULL")
    ).scalar_one()
    if kept:
        raise RuntimeError(
            f"cannot downgrade below 0014: {kept} statements are logged as commitments whose "
            "openings only these tables keep (export them first)"
        )
    op.drop_table("resident_erasures")
    op.drop_table("log_erasures")
    op.drop_index("ix_log_openings_record_id", table_name="log_openings")
    op.drop_index("ix_log_openings_resident_id", table_name="log_openings")
    op.drop_table("log_openings")
    # In place (SQLite 3.35+ and PostgreSQL): a batch rebuild of consent_batches would drop a
    # table that consent_events' foreign key points at.
    for table in ("consent_events", "consent_batches"):
        op.execute(f"ALTER TABLE {table} DROP COLUMN salt")
