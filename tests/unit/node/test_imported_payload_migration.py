"""Migration 0011: imported events keep what their receipt payload is rebuilt from. Events
imported before it keep their stored payload, which still wins; a downgrade is refused while an
event's payload exists only as a rebuild, and goes through once each has its payload stored."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from infra import storage
from node.consent import ConsentRegistry
from node.schema import consent_events
from tests.unit.node.consent_import.support import (
    CITY_KEY,
    LATER,
    ORIGIN,
    event,
    event_rows,
    export_openings,
    given,
    importer,
    logged_statements,
    receipts,
    run,
    write_csv,
)


def test_stored_payloads_win_and_the_downgrade_waits_for_them(tmp_path: Path) -> None:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    path = write_csv(
        tmp_path / "events.csv",
        [given("r1"), given("r2"), event("renewed", "r1", valid_until=LATER)],
    )
    with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
        report, errors = run(importer(engine, log), path)
        assert (report.applied, errors) == (3, [])
        signed = receipts(engine, log)

        # On a copy (the refusal leaves it at 0011, where this code no longer runs).
        copy = storage.create_engine(f"sqlite:///{tmp_path / 'copy.db'}")
        with engine.connect() as source, copy.connect() as target:
            source.connection.driver_connection.backup(target.connection.driver_connection)
        export_openings(copy)
        with pytest.raises(RuntimeError, match="3 imported consent events"):
            storage.downgrade(copy, "0010")

        # As an import before 0011 left them: the payload stored, no validity end kept.
        registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
        with engine.begin() as conn:
            for e in event_rows(engine):
                payload = registry.event_payload(e, registry.get(e.record_id))
                conn.execute(
                    consent_events.update()
                    .where(consent_events.c.event_id == e.event_id)
                    .values(payload=payload, valid_until=None)
                )
        assert receipts(engine, log) == signed
        logged_statements(engine, log)

        export_openings(engine)
        storage.downgrade(engine, "0010")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("consent_events")}
        assert "valid_until" not in columns
        storage.upgrade(engine)
        assert receipts(engine, log) == signed
    engine.dispose()
