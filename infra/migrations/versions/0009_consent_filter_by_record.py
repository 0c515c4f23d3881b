"""consent filter index in record order

ix_consent_filter was (purpose, recipient, data_category, state, resident_id): every new scope
row went to a random place in it (resident ids have no order), so each batch of a bulk import
dirtied about one index page per row, and the commit wrote them all. Keyed by record id before
the resident id, new records (whose ids grow with creation in portal exports: sequence numbers,
UUIDv7, ULIDs) append at the end of each (purpose, recipient, category, state) range. The consent
filter reads the same range and takes resident_id from the index as before (covering).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 01:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = ["purpose", "recipient", "data_category", "state"]


def upgrade() -> None:
    op.drop_index("ix_consent_filter", table_name="consent_scopes")
    op.create_index("ix_consent_filter", "consent_scopes", [*_COLUMNS, "record_id", "resident_id"])


def downgrade() -> None:
    op.drop_index("ix_consent_filter", table_name="consent_scopes")
    op.create_index("ix_consent_filter", "consent_scopes", [*_COLUMNS, "resident_id"])
