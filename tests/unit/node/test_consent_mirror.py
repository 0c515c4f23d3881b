"""The consent mirror (node.aggregate.push_consenting) on a data connection whose data lives in
another database: synced by changes only, and a withdrawal, a renewal or a new consent recorded
before a query starts applies to that query. Data on SQLite, DuckDB and, for real, PostgreSQL;
consents on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.errors import PermissionDenied
from domain.query import Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, synthetic
from node.catalogue import Catalogue
from node.consent import ConsentRecord, ConsentRegistry
from node.schema import resident_numbers
from node.transparency import Exchange, ExchangeRecorder

CITY, PARTNER, PURPOSE = "aurora", "northwind", "urban-mobility-planning"
OTHER = "scientific-research"
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
RESIDENTS = Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RESIDENTS),))
PEOPLE = synthetic.residents(CITY, ("North", "South"), 12, seed=5)


def url(kind: str, tmp_path: Path, name: str, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'{name}.db'}"
    if kind == "duckdb":
        return f"duckdb:///{tmp_path / f'{name}.duckdb'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(
    params=[
        ("sqlite", "sqlite"),
        ("sqlite", "duckdb"),
        pytest.param(("sqlite", "postgresql"), marks=pytest.mark.postgres),
        pytest.param(("postgresql", "sqlite"), marks=pytest.mark.postgres),
    ],
    ids=lambda p: f"consents-{p[0]}-data-{p[1]}",
)
def split(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[sa.Engine, sa.Engine, ConsentRegistry]]:
    consents_kind, data_kind = request.param
    consents = storage.create_engine(url(consents_kind, tmp_path, "node", request))
    storage.upgrade(consents)
    data = storage.create_engine(url(data_kind, tmp_path, "data", request))
    synthetic.create_tables(data)
    synthetic.load_trips(data, synthetic.trip_rows(PEOPLE, 3, date(2026, 8, 1), 30, seed=5))
    signer = Signer.generate()
    with MerkleLog(consents, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(consents, CITY, signer, log)
        for p in PEOPLE[:10]:
            give(registry, p.resident_id)
        yield consents, data, registry
    data.dispose()
    consents.dispose()


def give(
    registry: ConsentRegistry,
    resident: str,
    purpose: str = PURPOSE,
    until: timedelta | None = None,
    suffix: str = "c",
) -> str:
    now = timefmt.now()
    record = f"{resident}-{suffix}"
    registry.give(
        ConsentRecord(
            record,
            resident,
            (purpose,),
            (PARTNER,),
            ("mobility",),
            now - timedelta(days=1),
            now + until if until else None,
        ),
        actor="test",
    )
    return record


def residents(
    conn: sa.Connection,
    consents: sa.Engine,
    query: Query = RESIDENTS,
    later: timedelta | None = None,
) -> tuple[int, int]:
    """(scope rows the sync wrote, distinct consenting residents in the answer)."""
    at = timefmt.now() + (later or timedelta())
    written = aggregate.push_consenting(
        conn, consents, query.purpose, (PARTNER,), DATASET.data_category, at
    )
    result = aggregate.QueryCompiler().run(
        conn, aggregate.Scan(query, DATASET, (PARTNER,), at, pushed=True), k=1
    )
    return written, sum(int(c.values["count_residents"]) for c in result.cells)


def test_syncs_by_changes_and_applies_each_before_the_next_query(
    split: tuple[sa.Engine, sa.Engine, ConsentRegistry],
) -> None:
    consents, data, registry = split
    with data.connect() as conn:
        assert residents(conn, consents) == (10, 10)  # first query: the whole set
        assert residents(conn, consents) == (0, 10)  # nothing changed: nothing written
        registry.withdraw(f"{PEOPLE[0].resident_id}-c", actor="resident")
        assert residents(conn, consents) == (0, 9)  # the withdrawn record leaves
        give(registry, PEOPLE[10].resident_id)
        give(registry, PEOPLE[11].resident_id)
        assert residents(conn, consents) == (2, 11)
        # A consent for another purpose is replayed, but is no scope of this query.
        give(registry, PEOPLE[0].resident_id, purpose=OTHER, suffix="r")
        assert residents(conn, consents) == (0, 11)
        # Another pair is loaded in full once, then kept up to date alongside the first.
        research = Query("mobility", OTHER, (Measure(MeasureKind.COUNT_RESIDENTS),))
        assert residents(conn, consents, research) == (1, 1)
        registry.withdraw(f"{PEOPLE[0].resident_id}-r", actor="resident")
        with pytest.raises(PermissionDenied):  # nobody left
            residents(conn, consents, research)
        assert residents(conn, consents) == (0, 11)
    with data.connect() as a, data.connect() as b:
        # Each data connection keeps its own mirror; a new one starts from the whole set.
        assert residents(a, consents)[1] == residents(b, consents)[1] == 11


def test_validity_is_applied_at_the_query_time_and_renewal_is_replayed(
    split: tuple[sa.Engine, sa.Engine, ConsentRegistry],
) -> None:
    consents, data, registry = split
    record = give(registry, PEOPLE[11].resident_id, until=timedelta(days=2))
    with data.connect() as conn:
        assert residents(conn, consents)[1] == 11
        # Expiry needs no event: the mirror keeps the validity window, the query applies it.
        assert residents(conn, consents, later=timedelta(days=3))[1] == 10
        registry.renew(record, actor="resident", valid_until=timefmt.now() + timedelta(days=9))
        assert residents(conn, consents, later=timedelta(days=3)) == (1, 11)


def test_the_mirror_numbers_contributors_for_the_transparency_record(
    split: tuple[sa.Engine, sa.Engine, ConsentRegistry],
) -> None:
    consents, data, registry = split
    registry.withdraw(f"{PEOPLE[0].resident_id}-c", actor="resident")
    recorder = ExchangeRecorder(consents, data)
    at = timefmt.now()
    with data.connect() as conn:
        residents(conn, consents)
        stmt, params = aggregate.QueryCompiler().contributors_statement(
            aggregate.Scan(RESIDENTS, DATASET, (PARTNER,), at, pushed=True), conn.dialect.name, []
        ) or (None, None)
        assert stmt is not None
        exchange = Exchange("q1", PARTNER, PURPOSE, "mobility", "a", 1, at, 7)
        write = recorder.side_write(exchange, stmt, conn, 0, params)
    with consents.begin() as node:
        write(node, 7)
        numbered = set(node.execute(sa.select(resident_numbers.c.resident_id)).scalars())
    assert numbered == {p.resident_id for p in PEOPLE[1:10]}  # consenting ones, numbered at sync
    found = {p.resident_id: recorder.for_resident(p.resident_id, 10, "")[0] for p in PEOPLE}
    assert {r for r, items in found.items() if items} == numbered
    assert all(items == [exchange] for items in found.values() if items)
