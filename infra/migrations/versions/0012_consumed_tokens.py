"""consumed partner token ids, kept until they expire (single use across restarts and replicas)

Placeholder: filled in by the change that needs it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
