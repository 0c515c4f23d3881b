"""Erasing a resident (GDPR Art. 17): everything the node keeps that names or opens them, in one
transaction, while its log stays verifiable.

Deleted:
- the resident's consent records, their scopes and their event history (each API event's signed
  receipt, each imported event's salt): no consent of theirs is left, so none of their records
  enters any result from now on;
- the openings of their committed receipts (statement and salt, log_openings): the commitments
  stay in the log, but nothing links them to anyone any more;
- the openings of the attribute checks about them (query and result or refusal, whose subject
  they are: exchange_openings), likewise. A record release's openings are kept: they name no
  one (pseudonyms keyed per agreement) and are the city's evidence of what it released
  (node.exchange_evidence says why);
- their cell key (disclosure regime cell_key), which would otherwise follow them;
- their node-local number's link to them (resident_numbers): the number stays reserved under a
  random tombstone, so an earlier exchange's contributor bitmap keeps its other bits and the
  number is never given to anyone else, but nothing says whose it was.
Kept, with no personal data: a log_erasures row per erased entry (or per batch statement, how
many of its events), so a verifier reports those entries as erased rather than missing; one
resident_erasures row (no id), which also tells the consent mirror to reload; the exchanges
(partner, purpose, agreement, time: nothing about a resident). Entries logged before migration
0014 (whole receipts, unsalted batch digests) stay in the log: they cannot be removed from it.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa

from audit.log import lock_log
from audit.schema import exchange_openings
from domain.errors import NotFound
from keys import timefmt
from node import schema
from node.schema import (
    consent_batches,
    consent_events,
    consent_records,
    consent_scopes,
    log_erasures,
    log_openings,
    resident_erasures,
    resident_numbers,
)

TOMBSTONE = "erased:"


@dataclass(frozen=True)
class Erasure:
    """What erasing one resident removed."""

    records: int
    events: int
    statements: int  # committed receipts and attribute-check statements whose openings went
    batch_members: int  # imported events unlinked from their batch statements


def erase_resident(engine: sa.Engine, resident_id: str) -> Erasure:
    """Erase everything the node keeps about `resident_id`, all or nothing; NotFound
    RESIDENT_UNKNOWN (nothing changed) if the node holds nothing about them."""
    with engine.begin() as conn:
        # Serialised with log appends: a receipt logged meanwhile either stored its opening
        # before (found here) or finds its record gone (node.consent_evidence).
        lock_log(conn)
        records = list(
            conn.execute(
                sa.select(consent_records.c.record_id).where(
                    consent_records.c.resident_id == resident_id
                )
            ).scalars()
        )
        openings = list(
            conn.execute(
                sa.select(log_openings.c.log_index).where(log_openings.c.resident_id == resident_id)
            ).scalars()
        )
        exchanges = list(
            conn.execute(
                sa.select(exchange_openings.c.log_index).where(
                    exchange_openings.c.resident_id == resident_id
                )
            ).scalars()
        )
        number = conn.execute(
            sa.select(resident_numbers.c.number).where(
                resident_numbers.c.resident_id == resident_id
            )
        ).scalar_one_or_none()
        if not records and not openings and not exchanges and number is None:
            raise NotFound("the node holds nothing about this resident", reason="RESIDENT_UNKNOWN")
        now = timefmt.to_db(timefmt.now())
        members = _member_erasures(conn, records)
        events = _delete_consents(conn, records)
        conn.execute(log_openings.delete().where(log_openings.c.resident_id == resident_id))
        conn.execute(
            exchange_openings.delete().where(exchange_openings.c.resident_id == resident_id)
        )
        _mark_erased(conn, {i: None for i in [*openings, *exchanges]}, members, now)
        if number is not None:
            conn.execute(
                resident_numbers.update()
                .where(resident_numbers.c.number == number)
                .values(resident_id=TOMBSTONE + secrets.token_hex(16))
            )
        cell_keys = schema.metadata.tables.get("resident_cell_keys")
        if cell_keys is not None:
            conn.execute(cell_keys.delete().where(cell_keys.c.resident_id == resident_id))
        conn.execute(resident_erasures.insert().values(erased_at=now))
    statements = len(openings) + len(exchanges)
    return Erasure(len(records), events, statements, sum(members.values()))


def _member_erasures(conn: sa.Connection, records: list[str]) -> Counter[int]:
    """How many of each committed batch statement's events (by the statement's log index) are
    these records'."""
    if not records:
        return Counter()
    e, b = consent_events.c, consent_batches.c
    rows = conn.execute(
        sa.select(b.log_index)
        .join(consent_events, e.batch_id == b.batch_id)
        .where(
            e.record_id.in_(records),
            e.salt.is_not(None),
            b.salt.is_not(None),
            b.log_index.is_not(None),
        )
    ).scalars()
    return Counter(int(i) for i in rows)


def _delete_consents(conn: sa.Connection, records: list[str]) -> int:
    """Delete the records with their scopes and events; how many events."""
    if not records:
        return 0
    events = conn.execute(
        consent_events.delete().where(consent_events.c.record_id.in_(records))
    ).rowcount
    conn.execute(consent_scopes.delete().where(consent_scopes.c.record_id.in_(records)))
    conn.execute(consent_records.delete().where(consent_records.c.record_id.in_(records)))
    return int(events)


def _mark_erased(
    conn: sa.Connection, whole: dict[int, None], members: Counter[int], at: object
) -> None:
    """Record the erased entries: whole ones, and events added to a batch statement's count."""
    rows = [{"log_index": i, "members": None, "erased_at": at} for i in whole]
    if rows:
        conn.execute(log_erasures.insert(), rows)
    for index, n in sorted(members.items()):
        known = conn.execute(
            sa.select(log_erasures.c.members).where(log_erasures.c.log_index == index)
        ).first()
        if known is None:
            conn.execute(log_erasures.insert().values(log_index=index, members=n, erased_at=at))
        else:
            conn.execute(
                log_erasures.update()
                .where(log_erasures.c.log_index == index)
                .values(members=int(known[0] or 0) + n, erased_at=at)
            )
