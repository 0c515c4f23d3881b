"""The node's own tables. Datasets are the city's and live wherever its catalogue says."""

from __future__ import annotations

import sqlalchemy as sa

# Datetimes are stored as naive UTC (keys.timefmt.to_db) so SQLite and PostgreSQL compare them alike.
metadata = sa.MetaData()

consent_records = sa.Table(
    "consent_records",
    metadata,
    sa.Column("record_id", sa.String(128), primary_key=True),
    sa.Column("resident_id", sa.String(128), nullable=False),
    sa.Column("purpose", sa.String(128), nullable=False),
    sa.Column("recipient", sa.String(128), nullable=False),
    sa.Column("data_category", sa.String(128), nullable=False),
    sa.Column("valid_from", sa.DateTime(), nullable=False),
    sa.Column("valid_until", sa.DateTime(), nullable=True),
    # Derived from consent_events, kept here so the consent filter is one indexed semi-join.
    sa.Column("state", sa.String(32), nullable=False),
    sa.Index("ix_consent_filter", "purpose", "recipient", "data_category", "state", "resident_id"),
    sa.Index("ix_consent_resident", "resident_id"),
)

consent_events = sa.Table(
    "consent_events",
    metadata,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "record_id",
        sa.String(128),
        sa.ForeignKey("consent_records.record_id"),
        nullable=False,
        index=True,
    ),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("receipt", sa.LargeBinary, nullable=False),
)

agreements = sa.Table(
    "agreements",
    metadata,
    sa.Column("agreement_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("consumer", sa.String(128), nullable=False, index=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("valid_from", sa.DateTime(), nullable=False),
    sa.Column("valid_until", sa.DateTime(), nullable=False),
    # The DSSE envelope exactly as both parties signed it.
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("activated_at", sa.DateTime(), nullable=False),
)
