"""Migrations and the node's stores on SQLite and, for real, on PostgreSQL."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.query import Dimension, Measure, MeasureKind, Query
from infra import storage
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, synthetic
from node.catalogue import Catalogue
from node.consent import ConsentRecord, ConsentRegistry

TABLES = {
    "consent_records",
    "consent_events",
    "agreements",
    "log_entries",
    "log_nodes",
    "log_checkpoints",
    "alembic_version",
}


def _engine(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> sa.Engine:
    if kind == "sqlite":
        return storage.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    return storage.create_engine(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    e = _engine(request.param, tmp_path, request)
    yield e
    e.dispose()


def test_migrations_upgrade_empty_database_to_head_and_back(engine: sa.Engine) -> None:
    storage.upgrade(engine)
    assert set(sa.inspect(engine).get_table_names()) >= TABLES
    storage.downgrade(engine, "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    storage.upgrade(engine)
    assert set(sa.inspect(engine).get_table_names()) >= TABLES


def test_consent_filter_and_generalisation_give_the_same_answer_on_each_engine(
    engine: sa.Engine,
) -> None:
    storage.upgrade(engine)
    people = synthetic.residents("c", ("North", "South"), 60, seed=1)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 3, date(2026, 8, 1), 60, seed=1))
    signer = Signer.generate()
    with MerkleLog(engine, "citybroker/node/c", signer) as log:
        registry = ConsentRegistry(engine, "c", signer, log)
        consenting = people[::2]
        for r in consenting:
            registry.give(
                ConsentRecord(
                    f"{r.resident_id}-c1",
                    r.resident_id,
                    ("urban-mobility-planning",),
                    ("partner",),
                    ("mobility",),
                    timefmt.now(),
                    None,
                ),
                actor="test",
            )
        registry.withdraw(f"{consenting[0].resident_id}-c1", actor="test")
    catalogue = Catalogue.from_config(_catalogue_section())
    query = Query(
        "mobility",
        "urban-mobility-planning",
        (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
        group_by=(Dimension("trip_date", "month"),),
    )
    with engine.connect() as conn:
        result = aggregate.QueryCompiler().run(
            conn,
            aggregate.Scan(query, catalogue.datasets["mobility"], ("partner",), timefmt.now()),
            k=1,
        )
    allowed = {r.resident_id for r in consenting[1:]}
    rows = list(synthetic.trip_rows(people, 3, date(2026, 8, 1), 60, seed=1))
    expected: dict[str, tuple[int, set[str]]] = {}
    for row in rows:
        if row["resident_id"] in allowed:
            month = row["trip_date"].strftime("%Y-%m")  # type: ignore[attr-defined]
            n, who = expected.get(month, (0, set()))
            expected[month] = (n + 1, who | {str(row["resident_id"])})
    got = {
        c.key["trip_date"]: (c.values["count_records"], c.values["count_residents"])
        for c in result.cells
    }
    assert got == {m: (n, len(who)) for m, (n, who) in expected.items()}


def _catalogue_section():  # type: ignore[no-untyped-def]
    from infra.config import Section

    return Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("test.toml"))
