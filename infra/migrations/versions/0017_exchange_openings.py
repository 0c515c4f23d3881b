"""exchanges about single residents enter logs as salted commitments; their openings kept apart

From this revision a node logs an attribute check's or a record release's signed query and signed
result (or refusal) as commitments (domain.commitment), and a broker the signed query of an
attribute check, instead of whole. exchange_openings keeps each statement and its salt by the
commitment's log index, with the attribute check's subject, so that erasing that resident deletes
them (node.erasure). Entries logged before this revision stay whole: a Merkle log cannot drop or
rewrite an entry without breaking every checkpoint already signed.

Downgrade drops the table, and with it the openings of every commitment logged since: refused
while any exists.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_openings",
        sa.Column("log_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("statement_type", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("resident_id", sa.String(length=128), nullable=True),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("log_index", name=op.f("pk_exchange_openings")),
    )
    op.create_index(op.f("ix_exchange_openings_resident_id"), "exchange_openings", ["resident_id"])


def downgrade() -> None:
    kept = op.get_bind().execute(sa.text("SELECT count(*) FROM exchange_openings")).scalar_one()
    if kept:
        raise RuntimeError(
            f"cannot downgrade below 0017: {kept} exchange statements are logged as commitments "
            "whose openings only exchange_openings keeps (export them first)"
        )
    op.drop_index(op.f("ix_exchange_openings_resident_id"), table_name="exchange_openings")
    op.drop_table("exchange_openings")
