"""imported consent events keep what their receipt payload is rebuilt from, not the payload

An imported event's receipt payload (covered by its batch's signed statement) was stored whole,
about 740 bytes an event, a third of what a bulk import writes. Everything in it but the record's
validity end is in the event row (event, actor, time; the state follows from the event) or the
record (its terms never change, only its validity end through renewals). consent_events.valid_until
now keeps the record's validity end as of each imported event, so the payload is rebuilt, byte for
byte, from the record and the event (node.consent.imported_payload). Events imported before keep
their stored payload, and an event needs a receipt or a batch.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 05:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BEFORE = "receipt IS NOT NULL OR (payload IS NOT NULL AND batch_id IS NOT NULL)"
_AFTER = "receipt IS NOT NULL OR batch_id IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("valid_until", sa.DateTime(), nullable=True))
        batch_op.drop_constraint("ck_consent_events_evidence", type_="check")
        batch_op.create_check_constraint("ck_consent_events_evidence", _AFTER)


def downgrade() -> None:
    # The older schema needs each imported event's payload stored, which would need the city's
    # name to rebuild; refuse rather than drop evidence.
    rebuilt = (
        op.get_bind()
        .execute(
            sa.text("SELECT count(*) FROM consent_events WHERE receipt IS NULL AND payload IS NULL")
        )
        .scalar_one()
    )
    if rebuilt:
        raise RuntimeError(
            f"cannot downgrade below 0011: {rebuilt} imported consent events have no stored "
            "receipt payload (export their receipts first)"
        )
    with op.batch_alter_table("consent_events", schema=None) as batch_op:
        batch_op.drop_constraint("ck_consent_events_evidence", type_="check")
        batch_op.create_check_constraint("ck_consent_events_evidence", _BEFORE)
        batch_op.drop_column("valid_until")
