"""The node's own tables. Datasets are the city's and live wherever its catalogue says."""

from __future__ import annotations

import sqlalchemy as sa

# Datetimes are stored as naive UTC (keys.timefmt.to_db) so SQLite and PostgreSQL compare them alike.
metadata = sa.MetaData()

# One consent record (ISO/IEC TS 27560 as mapped by W3C DPV). Its state is derived from
# consent_events and updated in the same transaction as each event.
consent_records = sa.Table(
    "consent_records",
    metadata,
    sa.Column("record_id", sa.String(128), primary_key=True),
    sa.Column("resident_id", sa.String(128), nullable=False, index=True),
    sa.Column("lawful_basis", sa.String(64), nullable=False, server_default="consent"),
    sa.Column("notice_url", sa.String(512), nullable=False, server_default=""),
    sa.Column("notice_hash", sa.String(80), nullable=False, server_default=""),
    sa.Column("language", sa.String(35), nullable=False, server_default="en"),
    sa.Column("jurisdiction", sa.String(32), nullable=False, server_default=""),
    sa.Column("retention_days", sa.Integer, nullable=False, server_default="0"),
    sa.Column("collection_method", sa.String(64), nullable=False, server_default=""),
    sa.Column("withdrawal_method", sa.String(64), nullable=False, server_default=""),
    sa.Column("valid_from", sa.DateTime(), nullable=False),
    sa.Column("valid_until", sa.DateTime(), nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    # SHA-256 of the record's terms, so a repeated import is recognised and a conflict refused.
    sa.Column("content_digest", sa.String(80), nullable=False, server_default=""),
)

# What a record covers, one row per (purpose, recipient, data category), with the record's
# resident, state and validity copied in so the query-time consent filter is one indexed semi-join.
consent_scopes = sa.Table(
    "consent_scopes",
    metadata,
    sa.Column(
        "record_id", sa.String(128), sa.ForeignKey("consent_records.record_id"), primary_key=True
    ),
    sa.Column("purpose", sa.String(128), primary_key=True),
    sa.Column("recipient", sa.String(128), primary_key=True),
    sa.Column("data_category", sa.String(128), primary_key=True),
    sa.Column("resident_id", sa.String(128), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("valid_from", sa.DateTime(), nullable=False),
    sa.Column("valid_until", sa.DateTime(), nullable=True),
    # Record id before resident id: new records append (migration 0009), the filter still reads
    # resident ids from the index alone.
    sa.Index(
        "ix_consent_filter",
        "purpose",
        "recipient",
        "data_category",
        "state",
        "record_id",
        "resident_id",
    ),
    # SQLite: stored in primary-key order, with no separate primary-key index (migration 0010).
    sqlite_with_rowid=False,
)

# One signed statement of a bulk import (node.consent_import): it lists the SHA-256 digests of
# the receipt payloads of the events it covers, and is appended to the node's Merkle log.
consent_batches = sa.Table(
    "consent_batches",
    metadata,
    sa.Column("batch_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    # Set in the log's own transaction once the statement is logged.
    sa.Column("log_index", sa.BigInteger, nullable=True),
    # Migration 0014: the salt of the statement's commitment in the log (domain.commitment);
    # NULL for statements logged whole before it.
    sa.Column("salt", sa.LargeBinary, nullable=True),
)

# An event's evidence is either its own signed receipt (the API), or, for imported events, the
# receipt payload that `batch_id`'s signed statement covers: stored (imports before migration
# 0011), or rebuilt from the record and the event with `valid_until` (node.consent.imported_payload).
# Its receipt is signed on demand, byte for byte what signing at import would have given (Ed25519
# is deterministic).
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
    sa.Column("receipt", sa.LargeBinary, nullable=True),
    sa.Column("payload", sa.LargeBinary, nullable=True),
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("consent_batches.batch_id"), nullable=True),
    # The record's validity end as of this (imported) event; NULL: open-ended, or an API event.
    sa.Column("valid_until", sa.DateTime(), nullable=True),
    sa.CheckConstraint(
        "receipt IS NOT NULL OR batch_id IS NOT NULL", name="ck_consent_events_evidence"
    ),
    # Migration 0014: an imported event's own salt in its batch's statement
    # (domain.commitment.member_digest); NULL for API events and imports before it.
    sa.Column("salt", sa.LargeBinary, nullable=True),
)

# Migration 0018 (node.consent_counts): how many consent events of each kind were recorded, by
# source (registry: the API and expiry; import), added to in the transaction that writes them,
# so that the node's metrics read these few rows, whichever process wrote the events.
consent_event_counts = sa.Table(
    "consent_event_counts",
    metadata,
    sa.Column("event", sa.String(32), primary_key=True),
    sa.Column("source", sa.String(16), primary_key=True),
    sa.Column("events", sa.BigInteger, nullable=False),
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
    # The DSSE envelope exactly as signed (by one party while proposed, by both once active).
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    sa.Column("activated_at", sa.DateTime(), nullable=True),
    sa.Column("revoked_at", sa.DateTime(), nullable=True),
    sa.Column("revoked_by", sa.String(128), nullable=True),
    # The revoking party's signed statement.
    sa.Column("revocation", sa.LargeBinary, nullable=True),
)

# Which residents' records went into which released result: the node's answer to a resident's
# "who received data about me?" (GDPR Art. 15). It never leaves the city (node.transparency).
exchanges = sa.Table(
    "exchanges",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("partner", sa.String(128), nullable=False),
    sa.Column("purpose", sa.String(128), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("agreement_id", sa.String(128), nullable=False),
    sa.Column("agreement_version", sa.Integer, nullable=False),
    sa.Column("released_at", sa.DateTime(), nullable=False),
    sa.Column("log_index", sa.BigInteger, nullable=False),
    # A resident's exchanges are read newest first.
    sa.Index("ix_exchanges_released", "released_at", "log_index"),
)

# A node-local number for each resident, assigned once (the database's own counter) and never
# reused, so that an exchange's contributors are a set of small integers.
resident_numbers = sa.Table(
    "resident_numbers",
    metadata,
    # INTEGER PRIMARY KEY on SQLite: the rowid, dense and increasing.
    sa.Column(
        "number",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("resident_id", sa.String(128), nullable=False, unique=True),
)

# An exchange's contributors as bitmaps over resident numbers, one row per block of numbers
# holding any (node.transparency.BLOCK_BITS), zlib-compressed.
exchange_contributors = sa.Table(
    "exchange_contributors",
    metadata,
    sa.Column("request_id", sa.String(64), sa.ForeignKey("exchanges.request_id"), primary_key=True),
    sa.Column("block", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bits", sa.LargeBinary, nullable=False),
)

# Differential-privacy budgets: what each agreement version has spent, charged (with a ledger row
# naming the answer) in one transaction before the answer is released, never after.
dp_budgets = sa.Table(
    "dp_budgets",
    metadata,
    sa.Column("agreement_id", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("total_epsilon", sa.Float, nullable=False),
    sa.Column("spent_epsilon", sa.Float, nullable=False),
)

dp_ledger = sa.Table(
    "dp_ledger",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("agreement_id", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("epsilon", sa.Float, nullable=False),
    sa.Column("charged_at", sa.DateTime(), nullable=False),
)

# Disclosure regime cell_key (node.cell_key): each resident's fixed random key, drawn by the
# database once (node.numbers.key_selected) and never changed or shown to anyone.
resident_cell_keys = sa.Table(
    "resident_cell_keys",
    metadata,
    sa.Column("resident_id", sa.String(128), primary_key=True),
    sa.Column("cell_key", sa.Integer, nullable=False),
)

# Migration 0014 (node.log_openings): resident-level statements enter the log only as salted
# commitments (domain.commitment). The city keeps each consent receipt's opening here: the signed
# receipt and its salt, by the commitment's log index, with the resident and record it is about.
# Erasure deletes the row (and leaves a log_erasures row without personal data).
log_openings = sa.Table(
    "log_openings",
    metadata,
    sa.Column("log_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("statement_type", sa.String(64), nullable=False),
    sa.Column("resident_id", sa.String(128), nullable=False, index=True),
    sa.Column("record_id", sa.String(128), nullable=False, index=True),
    sa.Column("statement", sa.LargeBinary, nullable=False),
    sa.Column("salt", sa.LargeBinary, nullable=False),
)

# Which committed log entries were erased (node.erasure): a whole entry (members NULL), or, for a
# batch statement, how many of the events it lists. No resident id: an auditor is told an entry
# is erased, not whose it was.
log_erasures = sa.Table(
    "log_erasures",
    metadata,
    sa.Column("log_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("members", sa.Integer, nullable=True),
    sa.Column("erased_at", sa.DateTime(), nullable=False),
)

# One row per erasure of a resident (node.erasure), with no resident id: its counter tells the
# consent mirror (node.aggregate) to reload, as an erasure leaves no consent event to replay.
resident_erasures = sa.Table(
    "resident_erasures",
    metadata,
    sa.Column(
        "erasure_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("erased_at", sa.DateTime(), nullable=False),
)

# The differencing guard's release history (node.release_history): per partner, agreement id (all
# versions) and dataset, every aggregate cell released under the `exact` regime with its
# contributors, so that a later answer is compared with what the partner already holds. It
# expires with the agreement (`expires_at`: the latest valid_until of a version that released).
release_histories = sa.Table(
    "release_histories",
    metadata,
    sa.Column(
        "history_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("partner", sa.String(128), nullable=False),
    sa.Column("agreement_id", sa.String(128), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False, index=True),
    sa.UniqueConstraint("partner", "agreement_id", "dataset", name="uq_release_histories_key"),
)

# One released cell: its distinct contributors (resident numbers; record ids for observational
# data) as a serialised roaring bitmap, their count (the guard's size pre-filter), and its
# records' count and signature (node.cell_sets), which tell equal record sets apart. A node reads
# the rows added since it last looked (by history and id), and bitmaps only where sizes are close.
release_cells = sa.Table(
    "release_cells",
    metadata,
    sa.Column(
        "cell_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "history_id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.ForeignKey("release_histories.history_id"),
        nullable=False,
    ),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("contributors", sa.Integer, nullable=False),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("signature", sa.BigInteger, nullable=False),
    sa.Column("members", sa.LargeBinary, nullable=False),
    sa.Index("ix_release_cells_history", "history_id", "cell_id"),
    # Ids are never reused (SQLite: AUTOINCREMENT), so a cache of bitmaps by id stays right.
    sqlite_autoincrement=True,
)


# Migration 0016 (node.secrets): the node's long-lived random secret, keying pseudonyms and the cell
# keys of observational data independently of the signing key (which rotates).
node_secrets = sa.Table(
    "node_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("secret", sa.LargeBinary, nullable=False),
)
