"""the node's long-lived secret, for pseudonyms and observational cell keys

Pseudonym keys and observational cell keys were derived from the signing key, so rotating it changed
them. node_secrets holds one random root secret per node database (node.secrets), drawn on first use.
Pseudonyms released before this revision were keyed by the signing key: releases under the same
agreement before and after it do not link.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("node_secrets")
