"""consent events counted by kind and source, in the transaction that records them

From this revision the registry and bulk imports add every consent event they record to
consent_event_counts (node.consent_counts), so that a node's metrics read a few rows at scrape
time, and count imports run by other processes too. The upgrade counts the events already stored
(one pass over consent_events): an API event is a `registry` one, an event of a batch an
`import`. Downgrade drops the table.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 11:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consent_event_counts",
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event", "source", name=op.f("pk_consent_event_counts")),
    )
    op.execute(
        "INSERT INTO consent_event_counts (event, source, events) "
        "SELECT event, CASE WHEN batch_id IS NULL THEN 'registry' ELSE 'import' END, count(*) "
        "FROM consent_events "
        "GROUP BY event, CASE WHEN batch_id IS NULL THEN 'registry' ELSE 'import' END"
    )


def downgrade() -> None:
    op.drop_table("consent_event_counts")
