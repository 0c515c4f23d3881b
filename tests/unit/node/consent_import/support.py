"""Shared by the consent import tests: a node key and log, input rows, and checks of what an
import stored and logged."""

from __future__ import annotations

import csv
import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from audit.log import MerkleLog
from domain import commitment
from keys import dsse, timefmt
from keys.ed25519 import PublicKey, Signer
from node.consent import RECEIPT, ConsentRegistry
from node.consent_import import (
    BATCH_STATEMENT,
    ConsentImporter,
    ImportFormat,
    ImportLimits,
    ImportReport,
    RowError,
    open_rows,
)
from node.schema import consent_batches, consent_events

CITY_KEY = Signer.generate()
ORIGIN = "citybroker/node/aurora"
PARTIES = frozenset({"northwind", "borealis"})
NOW = timefmt.now()
FROM = timefmt.fmt(NOW - timedelta(days=1))
UNTIL = timefmt.fmt(NOW + timedelta(days=30))
LATER = timefmt.fmt(NOW + timedelta(days=90))
HEADER = (
    "event,record_id,resident_id,purposes,recipients,data_categories,valid_from,valid_until,actor"
)


def given(rid: str, resident: str = "res-1", **changes: str) -> dict[str, str]:
    row = {
        "event": "given",
        "record_id": rid,
        "resident_id": resident,
        "purposes": "urban-mobility-planning",
        "recipients": "northwind",
        "data_categories": "mobility;location",
        "valid_from": FROM,
        "valid_until": UNTIL,
        "actor": "",
    }
    row.update(changes)
    return row


def event(name: str, rid: str, **changes: str) -> dict[str, str]:
    return {"event": name, "record_id": rid, **changes}


def write_csv(path: Path, rows: list[dict[str, str]], header: str = HEADER) -> Path:
    names = header.split(",")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in rows:
            w.writerow([row.get(n, "") for n in names])
    return path


def importer(
    engine: sa.Engine, log: MerkleLog, batch_size: int = 3, workers: int = 0
) -> ConsentImporter:
    return ConsentImporter(
        engine,
        "aurora",
        CITY_KEY,
        log,
        PARTIES,
        ImportLimits(batch_size=batch_size, workers=workers),
    )


def run(
    imp: ConsentImporter, path: Path, fmt: ImportFormat | None = None
) -> tuple[ImportReport, list[RowError]]:
    errors: list[RowError] = []
    report = imp.run(path, fmt, on_error=errors.append)
    return report, errors


def rows_of(engine: sa.Engine, table: sa.Table, *order: sa.ColumnElement[Any]) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table).order_by(*order)).mappings())


def history(engine: sa.Engine, rid: str) -> list[str]:
    with engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                sa.select(consent_events.c.event)
                .where(consent_events.c.record_id == rid)
                .order_by(consent_events.c.event_id)
            )
        ]


def city_lookup(kid: str) -> PublicKey | None:
    return CITY_KEY.public if kid == CITY_KEY.keyid else None


def verified(receipt: bytes) -> dict[str, Any]:
    payload, _ = dsse.verify(dsse.Envelope.from_json(receipt), RECEIPT, city_lookup)
    return payload


def event_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(consent_events).order_by(consent_events.c.event_id)))


def receipts(engine: sa.Engine, log: MerkleLog) -> list[bytes]:
    """Every event's signed receipt, as the registry gives it (history, export), in order."""
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    return [registry.stored_receipt(e, registry.get(e.record_id)) for e in event_rows(engine)]


def logged_statements(engine: sa.Engine, log: MerkleLog) -> list[dict[str, Any]]:
    """Check that every imported event is covered: its receipt payload's salted digest is listed
    in its batch's statement, signed by the city, whose salted commitment (and only that) is in
    the node's log. Returns the statements in log order."""
    statements: dict[int, dict[str, Any]] = {}
    order: dict[int, int] = {}
    for b in rows_of(engine, consent_batches):
        index = b["log_index"]
        assert index is not None
        record = log.records(index, index + 1)[0]
        assert record.kind == "consent"
        claims, _ = dsse.verify(
            dsse.Envelope.from_json(record.entry), commitment.STATEMENT, city_lookup
        )
        opening = commitment.Opening(index, bytes(b["envelope"]), bytes(b["salt"]))
        assert commitment.opening_problem(claims, opening) is None
        envelope = dsse.Envelope.from_json(bytes(b["envelope"]))
        statements[b["batch_id"]], _ = dsse.verify(envelope, BATCH_STATEMENT, city_lookup)
        assert statements[b["batch_id"]]["salted"] is True
        order[b["batch_id"]] = index
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    for e in event_rows(engine):
        if e.receipt is None:
            payload = registry.event_payload(e, registry.get(e.record_id))
            digest = "sha256:" + hashlib.sha256(payload).hexdigest()
            # Unsalted, the digest of a guessable payload is not what the statement lists.
            assert digest not in statements[e.batch_id]["receipts"], e
            salted = commitment.member_digest(bytes(e.salt), digest)
            assert salted in statements[e.batch_id]["receipts"], e
    return [statements[b] for b in sorted(order, key=order.__getitem__)]


def read(path: Path, fmt: ImportFormat | None = None) -> list[tuple[int, Any]]:
    with open_rows(path, fmt) as reader:
        return list(reader)


def export_openings(engine: sa.Engine) -> None:
    """What an operator does before downgrading below migration 0014, which refuses to drop the
    only copies of commitments' openings: export them (here: drop them, for the test)."""
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM log_openings"))
        conn.execute(sa.text("UPDATE consent_batches SET salt = NULL"))
