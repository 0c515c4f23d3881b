"""The node's consent event counts (node.consent_counts, migration 0018): added to in the
transaction of every event the registry and bulk imports record, never for an event that was not
stored, exact under concurrent writers, and backfilled by the migration from consent_events."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from infra import storage
from node import consent_counts
from node.consent import ConsentRecord, ConsentRegistry
from node.schema import consent_events
from tests.unit.node.consent_import.support import (
    CITY_KEY,
    LATER,
    NOW,
    ORIGIN,
    event,
    given,
    importer,
    run,
    write_csv,
)

Counts = dict[tuple[str, str], int]


@pytest.fixture
def engine(node_database_url: str) -> Iterator[sa.Engine]:
    e = storage.create_engine(node_database_url)
    storage.upgrade(e)
    yield e
    e.dispose()


def record(rid: str, **changes: Any) -> ConsentRecord:
    r = ConsentRecord(
        record_id=rid,
        resident_id=f"res-{rid}",
        purposes=("urban-mobility-planning",),
        recipients=("northwind",),
        data_categories=("mobility",),
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=30),
    )
    return dataclasses.replace(r, **changes)


def counted(engine: sa.Engine) -> Counts:
    return {(e, s): n for e, s, n in consent_counts.read(engine)}


def stored(engine: sa.Engine) -> Counts:
    """The same counts, the slow way: over consent_events (an import's events have a batch)."""
    source = sa.case((consent_events.c.batch_id.is_(None), "registry"), else_="import")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(consent_events.c.event, source, sa.func.count()).group_by(
                consent_events.c.event, source
            )
        )
        return {(e, s): int(n) for e, s, n in rows}


def scenario(engine: sa.Engine, log: MerkleLog, tmp_path: Path) -> None:
    """Every kind of registry event, a repeated give (no event), and an import with a bad row."""
    registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
    for i in range(3):
        registry.give(record(f"a{i}"), actor="portal")
    registry.give(record("a0"), actor="portal")  # the same record again: no new event
    registry.refuse(record("a9"), actor="portal")
    registry.withdraw("a1", actor="resident")
    registry.renew("a2", NOW + timedelta(days=90), actor="resident")
    registry.expire_due(NOW + timedelta(days=60))  # a0 ran out; a2 was renewed past it
    rows = [given(f"i{i}", f"res-i{i}") for i in range(5)]
    rows += [event("withdrawn", "i1"), event("renewed", "i2", valid_until=LATER)]
    rows += [event("withdrawn", "nobody")]  # refused: CONSENT_NOT_FOUND, not counted
    report, errors = run(importer(engine, log, batch_size=3), write_csv(tmp_path / "e.csv", rows))
    assert report.applied == 7 and len(errors) == 1


EXPECTED = {
    ("given", "registry"): 3,
    ("refused", "registry"): 1,
    ("withdrawn", "registry"): 1,
    ("renewed", "registry"): 1,
    ("expired", "registry"): 1,
    ("given", "import"): 5,
    ("withdrawn", "import"): 1,
    ("renewed", "import"): 1,
}


def test_every_recorded_event_is_counted_once_by_kind_and_source(
    engine: sa.Engine, tmp_path: Path
) -> None:
    with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
        scenario(engine, log, tmp_path)
    assert counted(engine) == EXPECTED == stored(engine)


def test_the_migration_counts_the_events_already_stored(engine: sa.Engine, tmp_path: Path) -> None:
    with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
        scenario(engine, log, tmp_path)
    storage.downgrade(engine, "-1")
    assert "consent_event_counts" not in sa.inspect(engine).get_table_names()
    storage.upgrade(engine)
    assert counted(engine) == EXPECTED


def test_concurrent_writers_lose_no_count(engine: sa.Engine, tmp_path: Path) -> None:
    """Registry calls in threads, and an import meanwhile (on an engine of its own, as when the
    CLI runs it): on PostgreSQL each adds to the same rows in transactions of its own."""
    importing = storage.create_engine(engine.url.render_as_string(hide_password=False))
    with (
        MerkleLog(engine, ORIGIN, CITY_KEY) as log,
        MerkleLog(importing, ORIGIN, CITY_KEY) as other,
    ):
        registry = ConsentRegistry(engine, "aurora", CITY_KEY, log)
        failures: list[BaseException] = []

        def give(worker: int) -> None:
            try:
                for i in range(8):
                    registry.give(record(f"t{worker}-{i}"), actor="portal")
                    registry.withdraw(f"t{worker}-{i}", actor="resident")
            except BaseException as e:  # reported below
                failures.append(e)

        threads = [threading.Thread(target=give, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        rows = [given(f"i{i}", f"res-i{i}") for i in range(40)]
        report, _ = run(
            importer(importing, other, batch_size=7), write_csv(tmp_path / "e.csv", rows)
        )
        for t in threads:
            t.join()
    importing.dispose()
    assert not failures and report.applied == 40
    assert counted(engine) == {
        ("given", "registry"): 32,
        ("withdrawn", "registry"): 32,
        ("given", "import"): 40,
    }


def test_a_batch_rolled_back_is_not_counted(tmp_path: Path) -> None:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    storage.upgrade(engine)
    inserts = {"n": 0}

    def fail_second_batch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO consent_events"):
            inserts["n"] += 1
            if inserts["n"] == 2:
                raise sqlite3.OperationalError("disk I/O error")

    rows = [given(f"r{i}", f"res-{i}") for i in range(9)]
    sa.event.listen(engine, "before_cursor_execute", fail_second_batch)
    try:
        with MerkleLog(engine, ORIGIN, CITY_KEY) as log:
            report, _ = run(
                importer(engine, log, batch_size=3), write_csv(tmp_path / "e.csv", rows)
            )
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_second_batch)
    assert (report.failed_batches, report.applied) == (1, 6)
    assert counted(engine) == {("given", "import"): 6} == stored(engine)
    engine.dispose()
