"""consumed partner token ids, kept until they expire (single use across restarts and replicas)

One row per (issuer, jti, use) a node or broker accepted; the primary key refuses a second use
atomically, also between replicas on one database. infra/consumed_tokens.py declares the table and
prunes rows of expired tokens.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumed_tokens",
        sa.Column("issuer", sa.String(length=128), nullable=False),
        sa.Column("jti", sa.String(length=128), nullable=False),
        sa.Column("use", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", "use"),
    )
    op.create_index("ix_consumed_tokens_expires_at", "consumed_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_consumed_tokens_expires_at", table_name="consumed_tokens")
    op.drop_table("consumed_tokens")
