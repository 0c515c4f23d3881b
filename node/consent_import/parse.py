"""One row: parse its values, validate them as the API does, and build what the resolver and the
writer need (its record's rows and its receipt payload's digest). Runs in a worker process, or in
the importing process for a small input; never sees the city's key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.consent_batch import receipt_digest
from domain.errors import CitybrokerError
from keys import timefmt
from node.consent import MAX_ID_CHARS, ConsentRecord, receipt_payload, record_row
from node.consent_import.chunks import Chunk
from node.consent_import.codec import Codec, receipt_json
from node.consent_import.model import (
    IMPORTABLE,
    LIST_SEPARATOR,
    BadRow,
    ErrorRow,
    MoveRow,
    Prepared,
    StartRow,
    Values,
)
from node.consent_import.reader import parse_chunk
from node.consent_lifecycle import STARTING, Event, State

_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,9}$")
_STATE_OF = {e: State(e.value) for e in STARTING}


class RowFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _text(value: Any, name: str, default: str = "") -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise RowFailure("CONSENT_FIELD_INVALID", f"{name} must be a string")
    return value


def _codes(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # CSV: "a;b;c"
        return tuple(s for s in (p.strip() for p in value.split(LIST_SEPARATOR)) if s)
    if isinstance(value, list):
        return tuple(value)
    raise RowFailure("CONSENT_FIELD_INVALID", f"{name} must be an array of codes")


def _time(value: Any, name: str, required: bool) -> datetime | None:
    if value is None or value == "":
        if required:
            raise RowFailure("TIMESTAMP_INVALID", f"{name} is required (RFC 3339)")
        return None
    if not isinstance(value, str):
        raise RowFailure("TIMESTAMP_INVALID", f"{name} must be an RFC 3339 string")
    try:
        return timefmt.parse(value)
    except ValueError as e:
        raise RowFailure("TIMESTAMP_INVALID", f"{name}: {e}") from None


def _whole(value: Any, name: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RowFailure("CONSENT_FIELD_INVALID", f"{name} must be a whole number")
    if isinstance(value, int):
        return value
    if not _WHOLE_NUMBER.match(value.strip()):
        raise RowFailure("CONSENT_FIELD_INVALID", f"{name} must be a whole number")
    return int(value)


def parse_record(values: Values) -> ConsentRecord:
    """The record a `given`/`refused` row describes (unvalidated), with the API's defaults."""
    valid_from = _time(values.valid_from, "valid_from", required=True)
    assert valid_from is not None
    return ConsentRecord(
        record_id=_text(values.record_id, "record_id"),
        resident_id=_text(values.resident_id, "resident_id"),
        purposes=_codes(values.purposes, "purposes"),
        recipients=_codes(values.recipients, "recipients"),
        data_categories=_codes(values.data_categories, "data_categories"),
        valid_from=valid_from,
        valid_until=_time(values.valid_until, "valid_until", required=False),
        lawful_basis=_text(values.lawful_basis, "lawful_basis", "consent"),
        notice_url=_text(values.notice_url, "notice_url"),
        notice_hash=_text(values.notice_hash, "notice_hash"),
        language=_text(values.language, "language", "en"),
        jurisdiction=_text(values.jurisdiction, "jurisdiction"),
        retention_days=_whole(values.retention_days, "retention_days"),
        collection_method=_text(values.collection_method, "collection_method"),
        withdrawal_method=_text(values.withdrawal_method, "withdrawal_method"),
    )


@dataclass(frozen=True)
class Setup:
    """What a worker needs; sent once to each worker process."""

    city: str
    known_parties: frozenset[str] | None
    default_actor: str
    driver_level: bool
    header: tuple[str, ...] | None  # the CSV file's columns; None: JSONL


class Preparer:
    """Parses, validates, builds rows and receipt payloads, one row at a time."""

    def __init__(self, setup: Setup) -> None:
        self.city = setup.city
        self.known_party = (
            setup.known_parties.__contains__ if setup.known_parties is not None else None
        )
        self.default_actor = setup.default_actor
        self.header = setup.header
        self.codec = Codec(setup.driver_level)

    def payload(
        self, record: ConsentRecord, event: Event, actor: str, at: datetime, state: State
    ) -> dict[str, Any]:
        """The receipt payload the API would sign for this event."""
        return receipt_payload(self.city, record, event, actor, at, state, receipt_json)

    def prepare_chunk(self, chunk: Chunk, at: datetime) -> list[Prepared]:
        """Every row of a chunk, prepared (`prepare`)."""
        prepare = self.prepare
        return [prepare(line, values, at) for line, values in parse_chunk(chunk, self.header)]

    def prepare(self, line: int, values: Values | BadRow, at: datetime) -> Prepared:
        """One row as the resolver takes it; an ErrorRow if no stored state could make it
        apply."""
        if isinstance(values, BadRow):
            return ErrorRow(line, values.record_id, values.reason, values.message)
        rid = values.record_id
        rid_text = rid if isinstance(rid, str) else ""
        try:
            event = _event(values.event)
            actor = self.codec.common(_text(values.actor, "actor", self.default_actor))
            if len(actor) > MAX_ID_CHARS:
                raise RowFailure(
                    "CONSENT_FIELD_INVALID", f"actor must be at most {MAX_ID_CHARS} characters"
                )
            if event in STARTING:
                return self._start(line, event, values, actor, at)
            if not rid_text or len(rid_text) > MAX_ID_CHARS:
                raise RowFailure(
                    "CONSENT_FIELD_INVALID", f"record_id must be 1 to {MAX_ID_CHARS} characters"
                )
            until = (
                _time(values.valid_until, "valid_until", required=False)
                if event is Event.RENEW
                else None
            )
            return MoveRow(line, event.value, rid, until, actor)
        except (RowFailure, CitybrokerError) as e:
            return ErrorRow(line, rid_text, e.reason, e.message)

    def _start(self, line: int, event: Event, values: Values, actor: str, at: datetime) -> StartRow:
        record = parse_record(values).validate(self.known_party)
        state = _STATE_OF[event]
        payload = self.payload(record, event, actor, at, state)
        digest = payload["terms_digest"]
        row = self.codec.record(record_row(record, state, digest))
        return StartRow(
            line,
            event.value,
            values.record_id,
            digest,
            actor,
            row,
            self.codec.scopes(record, state.value, row),
            receipt_digest(receipt_json(payload)),
        )


def _event(name: Any) -> Event:
    event = IMPORTABLE.get(name) if isinstance(name, str) else None
    if event is not None:
        return event
    if name == Event.EXPIRE.value:
        raise RowFailure("CONSENT_EVENT_NOT_ALLOWED", "expired is recorded by the node itself")
    raise RowFailure(
        "CONSENT_EVENT_UNKNOWN", f"event must be one of {', '.join(IMPORTABLE)}, not {name!r}"
    )
