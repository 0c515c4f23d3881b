"""consent scopes without rowid (SQLite)

On SQLite, consent_scopes was a rowid table: each scope row went into the table, into the
automatic index of its composite primary key, and into ix_consent_filter, three b-trees for one
row. As a WITHOUT ROWID table it is stored in its primary key's order and needs no separate
primary-key index: one b-tree fewer per scope row (about 2.3 per consent given), which a bulk
import of consent events writes by the million. Other engines are unchanged.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 05:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Batch mode copies the table into a new one (with its indexes and foreign key): SQLite
    # cannot change a table's storage in place. Nothing references consent_scopes.
    with op.batch_alter_table(
        "consent_scopes", recreate="always", table_kwargs={"sqlite_with_rowid": with_rowid}
    ):
        pass


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
