"""The stored records a batch touches, read in as few statements as can be, and what their
history holds, read only when the consent rule asks (a replayed file)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from domain.errors import CitybrokerError, StoreError
from node.consent import ConsentRecord, event_payload
from node.consent_import.codec import RECORD_COLUMNS, naive, receipt_json
from node.consent_lifecycle import Event
from node.schema import consent_events, consent_records, consent_scopes

IN_CHUNK = 500  # ids per IN (...) query
_IDS: sa.BindParameter[str] = sa.bindparam("ids", expanding=True)
_SELECT_RECORDS = sa.select(consent_records).where(consent_records.c.record_id.in_(_IDS))
_SELECT_SCOPES = sa.select(
    consent_scopes.c.record_id,
    consent_scopes.c.purpose,
    consent_scopes.c.recipient,
    consent_scopes.c.data_category,
).where(consent_scopes.c.record_id.in_(_IDS))
IN_JSON = "IN (SELECT value FROM json_each(?))"
_LOOKUP_RECORDS_SQLITE = (
    f"SELECT {', '.join(RECORD_COLUMNS)} FROM consent_records WHERE record_id {IN_JSON}"
)
_LOOKUP_SCOPES_SQLITE = (
    "SELECT record_id, purpose, recipient, data_category FROM consent_scopes "
    f"WHERE record_id {IN_JSON}"
)


@dataclass
class Stored:
    """Stored records looked up for one batch: rows by id, their scopes."""

    rows: dict[str, Any]
    scopes: dict[str, list[tuple[str, str, str]]]


class RecordStore:
    """Reads a city's stored consent records for an import (`driver_level`: on SQLite, through
    the driver)."""

    def __init__(self, engine: sa.Engine, city: str, driver_level: bool) -> None:
        self._engine, self._city, self._driver_level = engine, city, driver_level

    def lookup(self, ids: list[str]) -> Stored:
        """The stored records (and their scopes) of these ids; absent ones are new."""
        rows: dict[str, Any] = {}
        scopes: dict[str, list[tuple[str, str, str]]] = {}
        try:
            with self._engine.connect() as conn:
                if self._driver_level:
                    return self._lookup_sqlite(conn, ids)
                for part in chunked(ids, IN_CHUNK):
                    for r in conn.execute(_SELECT_RECORDS, {"ids": part}).mappings():
                        rows[r["record_id"]] = r
                for part in chunked(sorted(rows), IN_CHUNK):
                    for rid, purpose, recipient, category in conn.execute(
                        _SELECT_SCOPES, {"ids": part}
                    ):
                        scopes.setdefault(rid, []).append((purpose, recipient, category))
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot read the consent records: {db_message(e)}") from None
        return Stored(rows, scopes)

    @staticmethod
    def _lookup_sqlite(conn: sa.Connection, ids: list[str]) -> Stored:
        """`lookup` in one statement per table, the ids as one JSON array (most are new: the
        statement is what costs), rows as the driver gives them, times made datetimes."""
        ids_json = json.dumps(ids)
        rows: dict[str, Any] = {}
        for r in conn.exec_driver_sql(_LOOKUP_RECORDS_SQLITE, (ids_json,)):
            row = dict(zip(RECORD_COLUMNS, r, strict=True))
            row["valid_from"] = naive(row["valid_from"])
            row["valid_until"] = naive(row["valid_until"])
            rows[row["record_id"]] = row
        scopes: dict[str, list[tuple[str, str, str]]] = {}
        if rows:
            for rid, purpose, recipient, category in conn.exec_driver_sql(
                _LOOKUP_SCOPES_SQLITE, (json.dumps(sorted(rows)),)
            ):
                scopes.setdefault(rid, []).append((purpose, recipient, category))
        return Stored(rows, scopes)

    def first_digest(self, record_id: str, record: ConsentRecord) -> str:
        """The terms digest the record was created with (in its first event's receipt)."""
        with self._engine.connect() as conn:
            first = conn.execute(
                sa.select(consent_events)
                .where(consent_events.c.record_id == record_id)
                .order_by(consent_events.c.event_id)
                .limit(1)
            ).first()
        if first is None:
            return ""
        return str(self._stored_payload(first, record).get("terms_digest", ""))

    def renewals(self, record_id: str, record: ConsentRecord) -> set[str | None]:
        """The validity end (RFC 3339, or None) of each stored renewal of the record."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(consent_events).where(
                    consent_events.c.record_id == record_id,
                    consent_events.c.event == Event.RENEW.value,
                )
            ).all()
        return {self._stored_payload(r, record).get("valid_until") for r in rows}

    def _stored_payload(self, event: sa.Row[Any], record: ConsentRecord) -> dict[str, Any]:
        """The receipt payload of a stored event (its consent_events row) of a stored record:
        from its receipt, its stored payload, or rebuilt (the node's own; only read, not
        trusted)."""
        try:
            obj = json.loads(event_payload(self._city, event, record, receipt_json))
        except (CitybrokerError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}


def chunked(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """`items` in slices of at most `size`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def db_message(e: sa.exc.SQLAlchemyError) -> str:
    """A database error in one line: the driver's exception and its message."""
    orig = getattr(e, "orig", None)
    detail = str(orig) if orig is not None else str(e).splitlines()[0]
    return f"{type(orig or e).__name__}: {detail}"
