"""Tables of the append-only Merkle log, on `metadata` so Alembic migrations can include them.

One database holds one log. Rows are only ever inserted, never updated or deleted.
Declarations only: this module opens no connection.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index to maintain per insert.
_Index = BigInteger().with_variant(Integer(), "sqlite")

log_entries = Table(
    "log_entries",
    metadata,
    Column("idx", _Index, primary_key=True, autoincrement=False),
    Column("entry", LargeBinary, nullable=False),
    # Level-0 node of the tree; kept here rather than in log_nodes to write one row less per entry.
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("idx >= 0", name="idx_nonnegative"),
)

# Hashes of the complete perfect subtrees above the leaves: (level, idx) covers leaves
# [idx << level, (idx + 1) << level). Any root or proof needs O(log n) of them.
log_nodes = Table(
    "log_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    CheckConstraint("level >= 1 AND idx >= 0", name="key_valid"),
    sqlite_with_rowid=False,
)

log_checkpoints = Table(
    "log_checkpoints",
    metadata,
    Column("tree_size", _Index, primary_key=True, autoincrement=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("tree_size >= 0", name="size_nonnegative"),
)

# Every trust bundle version a node or broker has installed, exactly as signed, so that an export
# can carry the keys in force when each old entry was signed.
trust_bundles = Table(
    "trust_bundles",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("installed_at", DateTime(timezone=True), nullable=False),
)

# A witness's view of each log it witnesses: at a city, per broker log, the largest checkpoint it
# has checked and cosigned (audit.witness); at a broker, per city log, the largest checkpoint it
# has checked and recorded in its own log (broker.city_logs).
witnessed_logs = Table(
    "witnessed_logs",
    metadata,
    Column("origin", String(256), primary_key=True),
    Column("tree_size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Witnesses' cosignatures of this log's checkpoints, kept for export.
log_cosignatures = Table(
    "log_cosignatures",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness", String(128), primary_key=True),
    Column("cosignature", Text, nullable=False),
)

# Migration 0017 (domain.commitment): the openings of this log's commitments to exchanges about
# single residents, kept by the party that logged them (a node: query and result or refusal of an
# attribute check or record release, node.exchange_evidence; a broker: the signed query of an
# attribute check, broker.exchange). `resident_id` is the attribute check's subject (erasure at a
# node deletes their rows, node.erasure); NULL for a record release, which names nobody.
exchange_openings = Table(
    "exchange_openings",
    metadata,
    Column("log_index", BigInteger, primary_key=True, autoincrement=False),
    Column("statement_type", String(64), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("resident_id", String(128), nullable=True, index=True),
    Column("statement", LargeBinary, nullable=False),
    Column("salt", LargeBinary, nullable=False),
)
