"""Residents' consent: records and their append-only event history, with a signed receipt per event.

The current state is kept on the record (derived from the events, updated in the same transaction) so
the query-time consent filter is a single indexed semi-join.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from federation.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node import purposes
from node.schema import consent_events, consent_records

RECEIPT = "consent-receipt"
VALID = frozenset({"given", "renewed"})
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class ConsentRecord:
    record_id: str
    resident_id: str
    purpose: str
    recipient: str
    data_category: str
    valid_from: datetime
    valid_until: datetime | None
    state: str = "given"

    def validate(self) -> ConsentRecord:
        for name in ("record_id", "resident_id", "recipient", "data_category"):
            v = getattr(self, name)
            if not v or len(v) > MAX_ID_CHARS:
                raise InvalidArgument(
                    f"{name} must be 1 to {MAX_ID_CHARS} characters",
                    reason="CONSENT_FIELD_INVALID",
                    field=name,
                )
        if not purposes.is_known(self.purpose):
            raise InvalidArgument(
                f"unknown purpose {self.purpose!r}", reason="PURPOSE_UNKNOWN", purpose=self.purpose
            )
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise InvalidArgument(
                "valid_until must be after valid_from", reason="CONSENT_DATES_INVALID"
            )
        return self


def _naive_utc(t: datetime | None) -> datetime | None:
    return timefmt.to_db(t) if t else None


class ConsentRegistry:
    def __init__(self, engine: sa.Engine, city: str, signer: Signer) -> None:
        self._engine, self._city, self._signer = engine, city, signer

    def _receipt(self, record: ConsentRecord, event: str, actor: str, at: datetime) -> bytes:
        env = dsse.sign(
            RECEIPT,
            {
                "city": self._city,
                "record_id": record.record_id,
                "resident_id": record.resident_id,
                "purpose": record.purpose,
                "recipient": record.recipient,
                "data_category": record.data_category,
                "valid_from": timefmt.fmt(record.valid_from),
                "valid_until": timefmt.fmt(record.valid_until) if record.valid_until else None,
                "event": event,
                "actor": actor,
                "at": timefmt.fmt(at),
            },
            self._signer,
        )
        return env.to_json()

    def give(self, record: ConsentRecord, actor: str) -> bytes:
        record.validate()
        at = timefmt.now()
        receipt = self._receipt(record, "given", actor, at)
        row = {
            "record_id": record.record_id,
            "resident_id": record.resident_id,
            "purpose": record.purpose,
            "recipient": record.recipient,
            "data_category": record.data_category,
            "valid_from": _naive_utc(record.valid_from),
            "valid_until": _naive_utc(record.valid_until),
            "state": "given",
        }
        with self._engine.begin() as conn:
            existing = (
                conn.execute(
                    sa.select(consent_records).where(
                        consent_records.c.record_id == record.record_id
                    )
                )
                .mappings()
                .first()
            )
            if existing is not None:
                raise AlreadyExists(
                    f"consent record {record.record_id} already exists",
                    reason="CONSENT_RECORD_EXISTS",
                )
            conn.execute(consent_records.insert().values(row))
            conn.execute(
                consent_events.insert().values(
                    record_id=record.record_id,
                    event="given",
                    actor=actor,
                    at=_naive_utc(at),
                    receipt=receipt,
                )
            )
        return receipt

    def withdraw(self, record_id: str, actor: str) -> bytes:
        at = timefmt.now()
        with self._engine.begin() as conn:
            record = self._get(conn, record_id)
            if record.state not in VALID:
                raise FailedPrecondition(
                    f"consent {record_id} is {record.state}, not given",
                    reason="CONSENT_NOT_ACTIVE",
                    state=record.state,
                )
            receipt = self._receipt(record, "withdrawn", actor, at)
            conn.execute(
                consent_records.update()
                .where(consent_records.c.record_id == record_id)
                .values(state="withdrawn")
            )
            conn.execute(
                consent_events.insert().values(
                    record_id=record_id,
                    event="withdrawn",
                    actor=actor,
                    at=_naive_utc(at),
                    receipt=receipt,
                )
            )
        return receipt

    def get(self, record_id: str) -> ConsentRecord:
        with self._engine.connect() as conn:
            return self._get(conn, record_id)

    @staticmethod
    def _get(conn: sa.Connection, record_id: str) -> ConsentRecord:
        row = (
            conn.execute(sa.select(consent_records).where(consent_records.c.record_id == record_id))
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"no consent record {record_id!r}", reason="CONSENT_NOT_FOUND")
        return ConsentRecord(
            record_id=row["record_id"],
            resident_id=row["resident_id"],
            purpose=row["purpose"],
            recipient=row["recipient"],
            data_category=row["data_category"],
            valid_from=timefmt.from_db(row["valid_from"]),
            valid_until=timefmt.from_db(row["valid_until"]) if row["valid_until"] else None,
            state=row["state"],
        )
