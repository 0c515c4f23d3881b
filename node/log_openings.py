"""The city's side of its committed statements (domain.commitment): the openings it keeps, given
with inclusion proofs to the resident they are about (through the portal, ConsentService) and,
on purpose, to the city's own or an outside auditor (the audit export).

A consent receipt's opening is its log_openings row. An imported event's is its batch's
statement and commitment salt (consent_batches) with the event's own receipt payload (rebuilt,
node.consent.event_payload) and salt (consent_events.salt), the one digest of the statement that
is this resident's.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from audit.bundle import exchange_openings_below
from audit.log import MerkleLog
from audit.note import parse_checkpoint, unverified_body
from domain.commitment import Opening
from node.consent import ConsentRecord, ConsentRegistry, event_payload, record_from_row
from node.schema import (
    consent_batches,
    consent_events,
    consent_records,
    consent_scopes,
    log_erasures,
    log_openings,
)

_PAGE = 1000


@dataclass(frozen=True)
class ProvenOpening:
    """An opening with the proof that its entry is in the tree the checkpoint signs."""

    opening: Opening
    tree_size: int
    proof: list[bytes]
    checkpoint: str


class LogOpenings:
    """Openings of one city's committed consent statements, with inclusion proofs."""

    def __init__(self, engine: sa.Engine, log: MerkleLog, registry: ConsentRegistry) -> None:
        self._engine, self._log, self._registry = engine, log, registry

    def for_record(self, record_id: str) -> list[ProvenOpening]:
        """Every committed statement about a record, in log order, each proven against the
        latest checkpoint; NotFound CONSENT_NOT_FOUND if the record is unknown (or erased)."""
        record = self._registry.get(record_id)
        with self._engine.connect() as conn:
            openings = _receipt_openings(conn, record_id) + self._member_openings(conn, record)
        openings.sort(key=lambda o: o.index)
        checkpoint = self._log.checkpoint()
        _, size, _ = parse_checkpoint(unverified_body(checkpoint))
        return [
            ProvenOpening(o, size, self._log.inclusion_proof(o.index, size), checkpoint)
            for o in openings
            if o.index < size
        ]

    def _member_openings(self, conn: sa.Connection, record: ConsentRecord) -> list[Opening]:
        """The record's imported events whose batch statement is committed, each as its batch's
        opening plus the event's payload and salt."""
        e, b = consent_events.c, consent_batches.c
        rows = conn.execute(
            sa.select(consent_events, b.envelope, b.salt.label("batch_salt"), b.log_index)
            .join(consent_batches, b.batch_id == e.batch_id)
            .where(
                e.record_id == record.record_id,
                e.salt.is_not(None),
                b.salt.is_not(None),
                b.log_index.is_not(None),
            )
            .order_by(e.event_id)
        )
        return [
            Opening(
                int(r.log_index),
                bytes(r.envelope),
                bytes(r.batch_salt),
                self._registry.event_payload(r, record),
                bytes(r.salt),
            )
            for r in rows
        ]


def _receipt_openings(conn: sa.Connection, record_id: str) -> list[Opening]:
    o = log_openings.c
    rows = conn.execute(
        sa.select(o.log_index, o.statement, o.salt)
        .where(o.record_id == record_id)
        .order_by(o.log_index)
    )
    return [Opening(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]


# -- export ------------------------------------------------------------------------------------


def erasures(engine: sa.Engine) -> list[tuple[int, int | None]]:
    """Every erased entry as (log index, members): members None for a whole entry, or how many
    of a batch statement's events were erased. Holds no personal data."""
    c = log_erasures.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.log_index, c.members).order_by(c.log_index))
        return [(int(r[0]), None if r[1] is None else int(r[1])) for r in rows]


def all_openings(engine: sa.Engine, city: str, below: int | None = None) -> Iterator[Opening]:
    """Every opening the city keeps, in log order (a batch's members right after its statement),
    of entries below index `below` (all if None): personal data, for an auditor on purpose.
    With its consent statements, its committed exchanges' (node.exchange_evidence)."""
    return heapq.merge(
        _all_receipts(engine, below),
        _all_batches(engine, city, below),
        exchange_openings_below(engine, 2**63 - 1 if below is None else below),
        key=lambda o: o.index,
    )


def _all_receipts(engine: sa.Engine, below: int | None) -> Iterator[Opening]:
    o = log_openings.c
    after = -1
    while True:
        stmt = sa.select(o.log_index, o.statement, o.salt).where(o.log_index > after)
        if below is not None:
            stmt = stmt.where(o.log_index < below)
        with engine.connect() as conn:
            rows = conn.execute(stmt.order_by(o.log_index).limit(_PAGE)).all()
        if not rows:
            return
        for r in rows:
            yield Opening(int(r[0]), bytes(r[1]), bytes(r[2]))
        after = int(rows[-1][0])


def _all_batches(engine: sa.Engine, city: str, below: int | None) -> Iterator[Opening]:
    b = consent_batches.c
    stmt = sa.select(b.batch_id, b.log_index, b.envelope, b.salt).where(
        b.salt.is_not(None), b.log_index.is_not(None)
    )
    if below is not None:
        stmt = stmt.where(b.log_index < below)
    with engine.connect() as conn:
        batches = conn.execute(stmt.order_by(b.log_index)).all()
    for batch_id, index, envelope, salt in batches:
        yield Opening(int(index), bytes(envelope), bytes(salt))
        yield from _batch_members(engine, city, int(batch_id), int(index))


def _batch_members(engine: sa.Engine, city: str, batch_id: int, index: int) -> Iterator[Opening]:
    """The batch's events still kept, each as a member opening (statement and salt left empty:
    the statement's own opening comes right before)."""
    e = consent_events.c
    records: dict[str, ConsentRecord] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(consent_events)
            .where(e.batch_id == batch_id, e.salt.is_not(None))
            .order_by(e.event_id)
        ).all()
        for r in rows:
            record = records.get(r.record_id)
            if record is None:
                record = records[r.record_id] = _record(conn, r.record_id)
            yield Opening(index, b"", b"", event_payload(city, r, record), bytes(r.salt))


def _record(conn: sa.Connection, record_id: str) -> ConsentRecord:
    row: Any = (
        conn.execute(sa.select(consent_records).where(consent_records.c.record_id == record_id))
        .mappings()
        .one()
    )
    s = consent_scopes.c
    scopes = conn.execute(
        sa.select(s.purpose, s.recipient, s.data_category).where(s.record_id == record_id)
    ).all()
    return record_from_row(row, [(x[0], x[1], x[2]) for x in scopes])
