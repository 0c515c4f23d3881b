"""Residents' consent: records (ISO/IEC TS 27560 as mapped by W3C DPV), their append-only event
history, and a signed receipt for every event.

The record's state is derived from its events (node.consent_lifecycle) and updated in the same
transaction as each event; the scopes it covers are copied with the state into consent_scopes so the
query-time consent filter is one indexed semi-join.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from audit.log import MerkleLog
from domain.errors import InvalidArgument, NotFound, StoreError
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node import consent_counts, taxonomy
from node.consent_evidence import RECEIPT as RECEIPT
from node.consent_evidence import ConsentEvidence
from node.consent_lifecycle import VALID, Actor, Event, State
from node.consent_rules import Decision, Outcome, Proposed, decide
from node.schema import consent_events, consent_records, consent_scopes

MAX_ID_CHARS = 128
MAX_SCOPE_ITEMS = 32
MAX_PAGE = 100
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_NOTICE_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
# The widths of the consent_records columns (node.schema): longer values are refused, not cut.
MAX_LANGUAGE_CHARS = 35
_TEXT_LIMITS = {"jurisdiction": 32, "collection_method": 64, "withdrawal_method": 64}


@dataclass(frozen=True)
class ConsentRecord:
    """What a resident consented to. `state` is the registry's, not the caller's, to set."""

    record_id: str
    resident_id: str
    purposes: tuple[str, ...]
    recipients: tuple[str, ...]
    data_categories: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime | None = None
    lawful_basis: str = "consent"
    notice_url: str = ""
    notice_hash: str = ""
    language: str = "en"
    jurisdiction: str = ""
    retention_days: int = 0
    collection_method: str = ""
    withdrawal_method: str = ""
    state: State = State.GIVEN

    def terms(self) -> dict[str, Any]:
        """The record's terms as canonical-JSON-ready data (everything but the state)."""
        return {
            "record_id": self.record_id,
            "resident_id": self.resident_id,
            "purposes": sorted(self.purposes),
            "recipients": sorted(self.recipients),
            "data_categories": sorted(self.data_categories),
            "valid_from": timefmt.fmt(self.valid_from),
            "valid_until": timefmt.fmt(self.valid_until) if self.valid_until else None,
            "lawful_basis": self.lawful_basis,
            "notice_url": self.notice_url,
            "notice_hash": self.notice_hash,
            "language": self.language,
            "jurisdiction": self.jurisdiction,
            "retention_days": self.retention_days,
            "collection_method": self.collection_method,
            "withdrawal_method": self.withdrawal_method,
        }

    def digest(self) -> str:
        """The content digest of its terms (`terms_digest`)."""
        return terms_digest(self.terms())

    def scopes(self) -> list[tuple[str, str, str]]:
        """Every (purpose, recipient, data category) it covers, sorted."""
        return [
            (p, r, c)
            for p in sorted(set(self.purposes))
            for r in sorted(set(self.recipients))
            for c in sorted(set(self.data_categories))
        ]

    def validate(self, known_party: Callable[[str], bool] | None = None) -> ConsentRecord:
        """The record itself if its terms are valid (recipients that are parties must be
        `known_party`s); InvalidArgument naming the first problem otherwise."""
        self._check_fields()
        self._check_codes(known_party)
        self._check_terms()
        return self

    def _check_fields(self) -> None:
        """Ids of 1 to MAX_ID_CHARS characters; scope lists of 1 to MAX_SCOPE_ITEMS distinct codes."""
        for name in ("record_id", "resident_id"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or len(v) > MAX_ID_CHARS:
                raise _bad(
                    f"{name} must be 1 to {MAX_ID_CHARS} characters",
                    "CONSENT_FIELD_INVALID",
                    field=name,
                )
        for name in ("purposes", "recipients", "data_categories"):
            v = getattr(self, name)
            if (
                isinstance(v, str)
                or not v
                or len(v) > MAX_SCOPE_ITEMS
                or not all(isinstance(x, str) and 0 < len(x) <= MAX_ID_CHARS for x in v)
            ):
                raise _bad(
                    f"{name} must list 1 to {MAX_SCOPE_ITEMS} codes",
                    "CONSENT_FIELD_INVALID",
                    field=name,
                )
            if len(set(v)) != len(v):
                # The stored record keeps each code once; its terms (and digest) must agree.
                raise _bad(
                    f"{name} lists a code more than once", "CONSENT_FIELD_INVALID", field=name
                )

    def _check_codes(self, known_party: Callable[[str], bool] | None) -> None:
        """Every purpose, data category, recipient and the lawful basis is a known code."""
        for p in self.purposes:
            if not taxonomy.is_purpose(p):
                raise _bad(f"unknown purpose {p!r}", "PURPOSE_UNKNOWN", purpose=p)
        for c in self.data_categories:
            if not taxonomy.is_data_category(c):
                raise _bad(f"unknown data category {c!r}", "DATA_CATEGORY_UNKNOWN", category=c)
        for r in self.recipients:
            if r.startswith(taxonomy.CATEGORY_PREFIX):
                if r.removeprefix(taxonomy.CATEGORY_PREFIX) not in taxonomy.RECIPIENT_CATEGORIES:
                    raise _bad(
                        f"unknown recipient category {r!r}", "RECIPIENT_UNKNOWN", recipient=r
                    )
            elif known_party is not None and not known_party(r):
                raise _bad(
                    f"recipient {r!r} is not a party of the federation",
                    "RECIPIENT_UNKNOWN",
                    recipient=r,
                )
        if self.lawful_basis not in taxonomy.LAWFUL_BASES:
            raise _bad(f"unknown lawful basis {self.lawful_basis!r}", "LAWFUL_BASIS_UNKNOWN")

    def _check_terms(self) -> None:
        """Validity dates in order; notice, language, retention and free texts well formed."""
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise _bad("valid_until must be after valid_from", "CONSENT_DATES_INVALID")
        if self.notice_url and not re.fullmatch(r"https?://\S{1,500}", self.notice_url):
            raise _bad(
                "notice_url must be an http(s) URL", "CONSENT_FIELD_INVALID", field="notice_url"
            )
        if self.notice_hash and not _NOTICE_HASH.fullmatch(self.notice_hash):
            raise _bad(
                "notice_hash must be sha256:<64 hex digits>",
                "CONSENT_FIELD_INVALID",
                field="notice_hash",
            )
        if len(self.language) > MAX_LANGUAGE_CHARS or not _LANGUAGE.fullmatch(self.language):
            raise _bad(
                "language must be a BCP 47 tag such as en or fi-FI",
                "CONSENT_FIELD_INVALID",
                field="language",
            )
        if not 0 <= self.retention_days <= 36_500:
            raise _bad(
                "retention_days must be 0 to 36500", "CONSENT_FIELD_INVALID", field="retention_days"
            )
        for name, limit in _TEXT_LIMITS.items():
            if len(getattr(self, name)) > limit:
                raise _bad(
                    f"{name} is at most {limit} characters", "CONSENT_FIELD_INVALID", field=name
                )


def _bad(message: str, reason: str, **meta: str) -> InvalidArgument:
    return InvalidArgument(message, reason=reason, **meta)


@dataclass(frozen=True)
class ConsentEvent:
    event: Event
    actor: str
    at: datetime
    receipt: bytes


@dataclass(frozen=True)
class Page:
    records: list[ConsentRecord]
    next_page_token: str = ""


def page_token(*parts: str) -> str:
    """An opaque page token carrying `parts` (`read_page_token` reads it)."""
    return base64.urlsafe_b64encode("\x00".join(parts).encode()).decode()


def read_page_token(token: str, parts: int) -> list[str]:
    """The `parts` values of a page token; InvalidArgument if it is not one."""
    try:
        values = base64.urlsafe_b64decode(token.encode()).decode().split("\x00")
    except (ValueError, UnicodeDecodeError):
        values = []
    if len(values) != parts:
        raise InvalidArgument("page_token is not valid", reason="PAGE_TOKEN_INVALID")
    return values


def page_size(requested: int) -> int:
    """The page size to serve: the requested one, at most MAX_PAGE (0 or less: MAX_PAGE)."""
    return MAX_PAGE if requested <= 0 else min(requested, MAX_PAGE)


Canonical = Callable[[Any], bytes]


def terms_digest(terms: dict[str, Any], canonical: Canonical = dsse.canonical) -> str:
    """The content digest of a record's terms (`ConsentRecord.terms()`). `canonical` must write
    RFC 8785 canonical JSON (a caller may pass a faster equivalent for the data it has)."""
    return "sha256:" + hashlib.sha256(canonical(terms)).hexdigest()


def receipt_payload(
    city: str,
    record: ConsentRecord,
    event: Event,
    actor: str,
    at: datetime,
    state: State,
    canonical: Canonical = dsse.canonical,
) -> dict[str, Any]:
    """What a consent receipt signs: the city, the record's terms and the event."""
    terms = record.terms()
    return {
        "city": city,
        **terms,
        "event": event.value,
        "actor": actor,
        "at": timefmt.fmt(at),
        "state": state.value,
        "terms_digest": terms_digest(terms, canonical),
    }


def imported_payload(
    city: str,
    record: ConsentRecord,
    event: str,
    actor: str,
    at: datetime,
    valid_until: datetime | None,
    canonical: Canonical = dsse.canonical,
) -> bytes:
    """The canonical receipt payload of an imported event, rebuilt from its record (whose terms
    never change but for the validity end) and its consent_events row: the event, its actor and
    time, and the record's validity end as of the event (naive UTC as stored, or None). The
    state after an event is the event's own (node.consent_lifecycle.next_state)."""
    kind = Event(event)
    until = timefmt.from_db(valid_until) if valid_until is not None else None
    return canonical(
        receipt_payload(
            city,
            replace(record, valid_until=until),
            kind,
            actor,
            timefmt.from_db(at),
            State(kind.value),
            canonical,
        )
    )


def event_payload(
    city: str, event: sa.Row[Any], record: ConsentRecord, canonical: Canonical = dsse.canonical
) -> bytes:
    """The receipt payload of any stored event (its consent_events row) of `record`: from its
    signed receipt (the API's), its stored payload (imports before migration 0011), or rebuilt
    (`imported_payload`)."""
    if event.receipt is not None:
        return dsse.Envelope.from_json(event.receipt).payload
    if event.payload is not None:
        return bytes(event.payload)
    return imported_payload(
        city, record, event.event, event.actor, event.at, event.valid_until, canonical
    )


def record_row(record: ConsentRecord, state: State, digest: str | None = None) -> dict[str, Any]:
    """The consent_records row of a record (`digest`: its precomputed `record.digest()`)."""
    return {
        "record_id": record.record_id,
        "resident_id": record.resident_id,
        "lawful_basis": record.lawful_basis,
        "notice_url": record.notice_url,
        "notice_hash": record.notice_hash,
        "language": record.language,
        "jurisdiction": record.jurisdiction,
        "retention_days": record.retention_days,
        "collection_method": record.collection_method,
        "withdrawal_method": record.withdrawal_method,
        "valid_from": timefmt.to_db(record.valid_from),
        "valid_until": timefmt.to_db(record.valid_until) if record.valid_until else None,
        "state": state.value,
        "content_digest": digest if digest is not None else record.digest(),
    }


def scope_rows(record: ConsentRecord, state: State) -> list[dict[str, Any]]:
    """The consent_scopes rows of a record in `state`."""
    valid_from = timefmt.to_db(record.valid_from)
    valid_until = timefmt.to_db(record.valid_until) if record.valid_until else None
    return [
        {
            "record_id": record.record_id,
            "purpose": p,
            "recipient": r,
            "data_category": c,
            "resident_id": record.resident_id,
            "state": state.value,
            "valid_from": valid_from,
            "valid_until": valid_until,
        }
        for p, r, c in record.scopes()
    ]


class _Stored(NamedTuple):
    """A stored record and its stored terms digest, as `node.consent_rules.decide` reads it."""

    record: ConsentRecord
    digest: str

    @property
    def state(self) -> State:
        return self.record.state

    @property
    def valid_from(self) -> datetime:
        return self.record.valid_from


class ConsentRegistry:
    """Consent records and their events. Each event's signed receipt is committed to `log` once
    the event is stored (`node.consent_evidence`): the log is required, so no event goes unlogged."""

    def __init__(
        self,
        engine: sa.Engine,
        city: str,
        signer: Signer,
        log: MerkleLog,
        known_party: Callable[[str], bool] | None = None,
    ) -> None:
        self._engine, self._city = engine, city
        self._known_party = known_party
        self._evidence = ConsentEvidence(city, signer, log)

    def receipt(
        self, record: ConsentRecord, event: Event, actor: str, at: datetime, state: State
    ) -> bytes:
        """The signed consent receipt of one event (DSSE over canonical JSON)."""
        return self._evidence.sign_receipt(
            receipt_payload(self._city, record, event, actor, at, state)
        )

    def stored_receipt(self, event: sa.Row[Any], record: ConsentRecord) -> bytes:
        """An event's signed receipt from its consent_events row (`event`) and its record: the
        stored one, or for an imported event (covered by its batch's signed statement) one
        signed now over its payload, stored or rebuilt (`imported_payload`): the same bytes as
        signing at import would have given (Ed25519 is deterministic) as long as the city's key
        is the same."""
        if event.receipt is not None:
            return bytes(event.receipt)
        if event.batch_id is None:
            raise StoreError("a consent event has neither a receipt nor a batch")
        return self._evidence.sign_receipt_payload(self.event_payload(event, record))

    def event_payload(self, event: sa.Row[Any], record: ConsentRecord) -> bytes:
        """The receipt payload of a stored event (its consent_events row `event`)."""
        return event_payload(self._city, event, record)

    # -- events ------------------------------------------------------------------------------

    def give(self, record: ConsentRecord, actor: str) -> bytes:
        """Record a new record's consent; its signed receipt."""
        return self._start(record, Event.GIVE, actor)

    def refuse(self, record: ConsentRecord, actor: str) -> bytes:
        """Record a new record's refusal; its signed receipt."""
        return self._start(record, Event.REFUSE, actor)

    def _start(self, record: ConsentRecord, event: Event, actor: str) -> bytes:
        """A new record. Giving the same record (same terms) again is a no-op that returns the
        first receipt, so imports can be retried; other terms under the same id are refused."""
        record.validate(self._known_party)
        at = timefmt.now()
        with self._engine.begin() as conn:
            stored = self._find(conn, record.record_id)
            decision = _decided(stored, Proposed(record.record_id, event, record.digest()))
            if decision.outcome is Outcome.ALREADY:
                assert stored is not None
                first = conn.execute(
                    sa.select(consent_events)
                    .where(consent_events.c.record_id == record.record_id)
                    .order_by(consent_events.c.event_id)
                    .limit(1)
                ).one()
                receipt = self.stored_receipt(first, stored.record)
            else:
                assert decision.state is not None
                receipt = self.receipt(record, event, actor, at, decision.state)
                conn.execute(consent_records.insert().values(record_row(record, decision.state)))
                conn.execute(consent_scopes.insert(), scope_rows(record, decision.state))
                conn.execute(
                    consent_events.insert().values(
                        record_id=record.record_id,
                        event=event.value,
                        actor=actor,
                        at=timefmt.to_db(at),
                        receipt=receipt,
                    )
                )
                consent_counts.add(conn, consent_counts.REGISTRY, {event.value: 1})
        # A retry logs its receipt again, as every call does: the log says what was answered.
        return self._evidence.log_receipt(receipt)

    def renew(self, record_id: str, valid_until: datetime | None, actor: str) -> bytes:
        """Record a renewal to `valid_until` (None: until withdrawn); its signed receipt."""
        return self._transition(record_id, Event.RENEW, actor, valid_until=valid_until)

    def withdraw(self, record_id: str, actor: str) -> bytes:
        """Record the resident's withdrawal; its signed receipt."""
        return self._transition(record_id, Event.WITHDRAW, actor)

    def revoke(self, record_id: str, actor: str) -> bytes:
        """Record the city's revocation; its signed receipt."""
        return self._transition(record_id, Event.REVOKE, actor)

    def invalidate(self, record_id: str, actor: str) -> bytes:
        """Record the city's invalidation; its signed receipt."""
        return self._transition(record_id, Event.INVALIDATE, actor)

    def _transition(
        self, record_id: str, event: Event, actor: str, valid_until: datetime | None = None
    ) -> bytes:
        at = timefmt.now()
        with self._engine.begin() as conn:
            stored = self._find(conn, record_id)
            decision = _decided(stored, Proposed(record_id, event, valid_until=valid_until))
            assert stored is not None and decision.state is not None
            state, record = decision.state, stored.record
            if event is Event.RENEW:
                record = replace(record, valid_until=valid_until)
            receipt = self.receipt(record, event, actor, at, state)
            values: dict[str, Any] = {"state": state.value}
            if event is Event.RENEW:
                values["valid_until"] = timefmt.to_db(valid_until) if valid_until else None
                conn.execute(
                    consent_records.update()
                    .where(consent_records.c.record_id == record_id)
                    .values(content_digest=record.digest(), **values)
                )
            else:
                conn.execute(
                    consent_records.update()
                    .where(consent_records.c.record_id == record_id)
                    .values(values)
                )
            conn.execute(
                consent_scopes.update()
                .where(consent_scopes.c.record_id == record_id)
                .values(values)
            )
            conn.execute(
                consent_events.insert().values(
                    record_id=record_id,
                    event=event.value,
                    actor=actor,
                    at=timefmt.to_db(at),
                    receipt=receipt,
                )
            )
            consent_counts.add(conn, consent_counts.REGISTRY, {event.value: 1})
        return self._evidence.log_receipt(receipt)

    def expire_due(self, at: datetime | None = None, batch: int = 1000) -> list[bytes]:
        """Record `expired` for valid consents whose validity has run out; returns receipts."""
        at = at or timefmt.now()
        receipts: list[bytes] = []
        while True:
            with self._engine.connect() as conn:
                due = [
                    r[0]
                    for r in conn.execute(
                        sa.select(consent_records.c.record_id)
                        .where(
                            consent_records.c.state.in_([s.value for s in VALID]),
                            consent_records.c.valid_until.is_not(None),
                            consent_records.c.valid_until <= timefmt.to_db(at),
                        )
                        .limit(batch)
                    )
                ]
            if not due:
                return receipts
            receipts += [self._transition(r, Event.EXPIRE, Actor.SYSTEM.value) for r in due]

    # -- reading -------------------------------------------------------------------------------

    def get(self, record_id: str) -> ConsentRecord:
        """The stored record; NotFound if there is none."""
        with self._engine.connect() as conn:
            return self._get(conn, record_id)

    def history(self, record_id: str) -> list[ConsentEvent]:
        """The record's events in order, each with its signed receipt."""
        with self._engine.connect() as conn:
            record = self._get(conn, record_id)
            rows = conn.execute(
                sa.select(consent_events)
                .where(consent_events.c.record_id == record_id)
                .order_by(consent_events.c.event_id)
            )
            return [
                ConsentEvent(
                    Event(r.event),
                    r.actor,
                    timefmt.from_db(r.at),
                    self.stored_receipt(r, record),
                )
                for r in rows
            ]

    def list_by_resident(self, resident_id: str, size: int, token: str) -> Page:
        """One page of a resident's records, by record id."""
        stmt = sa.select(consent_records.c.record_id).where(
            consent_records.c.resident_id == resident_id
        )
        if token:
            (after,) = read_page_token(token, 1)
            stmt = stmt.where(consent_records.c.record_id > after)
        n = page_size(size)
        with self._engine.connect() as conn:
            ids = [
                r[0] for r in conn.execute(stmt.order_by(consent_records.c.record_id).limit(n + 1))
            ]
            records = [self._get(conn, i) for i in ids[:n]]
        return Page(records, page_token(ids[n - 1]) if len(ids) > n else "")

    @classmethod
    def _get(cls, conn: sa.Connection, record_id: str) -> ConsentRecord:
        stored = cls._find(conn, record_id)
        if stored is None:
            raise NotFound(f"no consent record {record_id!r}", reason="CONSENT_NOT_FOUND")
        return stored.record

    @staticmethod
    def _find(conn: sa.Connection, record_id: str) -> _Stored | None:
        row = (
            conn.execute(sa.select(consent_records).where(consent_records.c.record_id == record_id))
            .mappings()
            .first()
        )
        if row is None:
            return None
        scopes = conn.execute(
            sa.select(
                consent_scopes.c.purpose, consent_scopes.c.recipient, consent_scopes.c.data_category
            ).where(consent_scopes.c.record_id == record_id)
        ).all()
        return _Stored(
            record_from_row(row, [(s[0], s[1], s[2]) for s in scopes]), row["content_digest"]
        )


def _decided(stored: _Stored | None, proposed: Proposed) -> Decision:
    """The consent rule's decision on an API call; raises its refusal."""
    decision = decide(stored, proposed)
    if decision.refusal is not None:
        raise decision.refusal
    return decision


def record_from_row(
    row: Mapping[Any, Any], scopes: Iterable[tuple[str, str, str]]
) -> ConsentRecord:
    """A stored record: its consent_records row and its (purpose, recipient, category) scopes."""
    covered = list(scopes)
    return ConsentRecord(
        record_id=row["record_id"],
        resident_id=row["resident_id"],
        purposes=tuple(sorted({s[0] for s in covered})),
        recipients=tuple(sorted({s[1] for s in covered})),
        data_categories=tuple(sorted({s[2] for s in covered})),
        valid_from=timefmt.from_db(row["valid_from"]),
        valid_until=timefmt.from_db(row["valid_until"]) if row["valid_until"] else None,
        lawful_basis=row["lawful_basis"],
        notice_url=row["notice_url"],
        notice_hash=row["notice_hash"],
        language=row["language"],
        jurisdiction=row["jurisdiction"],
        retention_days=row["retention_days"],
        collection_method=row["collection_method"],
        withdrawal_method=row["withdrawal_method"],
        state=State(row["state"]),
    )
