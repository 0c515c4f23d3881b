"""consent scopes and exchanges

A consent record now covers several purposes, recipients and data categories (ISO/IEC TS 27560),
so its scope moves to consent_scopes; records gain their notice, language, jurisdiction and
methods; exchanges remember which residents' records each released result used.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 03:32:32.830773
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def new_record_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("lawful_basis", sa.String(length=64), server_default="consent", nullable=False),
        sa.Column("notice_url", sa.String(length=512), server_default="", nullable=False),
        sa.Column("notice_hash", sa.String(length=80), server_default="", nullable=False),
        sa.Column("language", sa.String(length=35), server_default="en", nullable=False),
        sa.Column("jurisdiction", sa.String(length=32), server_default="", nullable=False),
        sa.Column("retention_days", sa.Integer(), server_default="0", nullable=False),
        sa.Column("collection_method", sa.String(length=64), server_default="", nullable=False),
        sa.Column("withdrawal_method", sa.String(length=64), server_default="", nullable=False),
        sa.Column("content_digest", sa.String(length=80), server_default="", nullable=False),
    ]


SCOPE_COLUMNS = ("purpose", "recipient", "data_category")


def upgrade() -> None:
    # The old filter index lives on consent_records; its name moves to consent_scopes.
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_filter")
    op.create_table(
        "consent_scopes",
        sa.Column("record_id", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=128), nullable=False),
        sa.Column("recipient", sa.String(length=128), nullable=False),
        sa.Column("data_category", sa.String(length=128), nullable=False),
        sa.Column("resident_id", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("valid_from", sa.DateTime(), nullable=False),
        sa.Column("valid_until", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["record_id"], ["consent_records.record_id"]),
        sa.PrimaryKeyConstraint("record_id", "purpose", "recipient", "data_category"),
    )
    op.execute(
        "INSERT INTO consent_scopes (record_id, purpose, recipient, data_category, resident_id,"
        " state, valid_from, valid_until) SELECT record_id, purpose, recipient, data_category,"
        " resident_id, state, valid_from, valid_until FROM consent_records"
    )
    op.create_index(
        "ix_consent_filter",
        "consent_scopes",
        ["purpose", "recipient", "data_category", "state", "resident_id"],
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        for column in new_record_columns():
            batch_op.add_column(column)
        batch_op.drop_index("ix_consent_resident")
        batch_op.create_index("ix_consent_records_resident_id", ["resident_id"], unique=False)
        for name in SCOPE_COLUMNS:
            batch_op.drop_column(name)
    op.create_table(
        "exchanges",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("partner", sa.String(length=128), nullable=False),
        sa.Column("purpose", sa.String(length=128), nullable=False),
        sa.Column("dataset", sa.String(length=128), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("agreement_version", sa.Integer(), nullable=False),
        sa.Column("released_at", sa.DateTime(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_table(
        "exchange_residents",
        sa.Column("resident_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["request_id"], ["exchanges.request_id"]),
        sa.PrimaryKeyConstraint("resident_id", "request_id"),
    )


def downgrade() -> None:
    """Back to one scope per record: a record covering several keeps its first (sorted) scope."""
    op.drop_table("exchange_residents")
    op.drop_table("exchanges")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        for name in SCOPE_COLUMNS:
            batch_op.add_column(
                sa.Column(name, sa.String(length=128), server_default="", nullable=False)
            )
    for name in SCOPE_COLUMNS:
        op.execute(
            f"UPDATE consent_records SET {name} = (SELECT s.{name} FROM consent_scopes s"
            " WHERE s.record_id = consent_records.record_id"
            " ORDER BY s.purpose, s.recipient, s.data_category LIMIT 1)"
            " WHERE EXISTS (SELECT 1 FROM consent_scopes s"
            " WHERE s.record_id = consent_records.record_id)"
        )
    op.drop_index("ix_consent_filter", table_name="consent_scopes")
    op.drop_table("consent_scopes")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_records_resident_id")
        batch_op.create_index("ix_consent_resident", ["resident_id"], unique=False)
        batch_op.create_index(
            "ix_consent_filter",
            ["purpose", "recipient", "data_category", "state", "resident_id"],
            unique=False,
        )
        for column in new_record_columns():
            batch_op.drop_column(column.name)
