"""Place -> district through a mapping table in the data's database (catalogue `maps`): grouped
and filtered where the data lives, checked at start-up, refused when not declared."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.errors import ConfigError, StoreError
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, synthetic
from node.catalogue import UNMAPPED, Catalogue, data_tables
from node.consent import ConsentRegistry
from tests.conftest import PURPOSE, give_mobility_consents

PARTNER = "northwind"
STOPS = {"s1": "North", "s2": "North", "s3": "South"}  # s4 is in no district
FIELDS = {
    "stop": {
        "type": "string",
        "generalisations": ["district"],
        "maps": {"district": {"table": "stop_districts", "key": "stop_id", "value": "district"}},
    },
}
CATALOGUE = {
    "boardings": {
        "table": "boardings",
        "resident_column": "resident_id",
        "data_category": "mobility",
        "fields": FIELDS,
    }
}


def catalogue(datasets: dict[str, object]) -> Catalogue:
    return Catalogue.from_config(Section(datasets, Path("node.toml")))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def city(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[sa.Engine, list[tuple[str, str]]]:
    url = (
        f"sqlite:///{tmp_path / 'node.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    people = synthetic.residents("aurora", ("North", "South"), 30, seed=5)
    signer = Signer.generate()
    with MerkleLog(engine, "citybroker/node/aurora", signer) as log:
        registry = ConsentRegistry(engine, "aurora", signer, log)
        give_mobility_consents(registry, people[:20], PARTNER, timefmt.now())
    stops = sorted(STOPS) + ["s4"]
    rows = [(p.resident_id, stops[(i * 7 + j) % 4]) for i, p in enumerate(people) for j in range(3)]
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE boardings (resident_id TEXT, stop TEXT)")
        conn.exec_driver_sql("CREATE TABLE stop_districts (stop_id TEXT, district TEXT)")
        conn.execute(
            sa.text("INSERT INTO boardings VALUES (:r, :s)"), [{"r": r, "s": s} for r, s in rows]
        )
        conn.execute(
            sa.text("INSERT INTO stop_districts VALUES (:s, :d)"),
            [{"s": s, "d": d} for s, d in STOPS.items()],
        )
    consenting = {p.resident_id for p in people[:20]}
    return engine, [r for r in rows if r[0] in consenting]


def test_groups_and_filters_by_district_through_the_mapping_table(
    city: tuple[sa.Engine, list[tuple[str, str]]],
) -> None:
    engine, consenting_rows = city
    ds = catalogue(CATALOGUE).datasets["boardings"]
    by_district = Query(
        "boardings",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
        group_by=(Dimension("stop", "district"),),
    )
    with engine.connect() as conn:
        answer = aggregate.QueryCompiler().run(
            conn, aggregate.Scan(by_district, ds, (PARTNER,), timefmt.now()), 1
        )
        expected = Counter(STOPS.get(stop, UNMAPPED) for _, stop in consenting_rows)
        assert {c.key["stop"]: c.values["count_records"] for c in answer.cells} == expected
        residents = {
            d: len({r for r, s in consenting_rows if STOPS.get(s, UNMAPPED) == d}) for d in expected
        }
        assert {c.key["stop"]: c.values["count_residents"] for c in answer.cells} == residents
        north = Query(
            "boardings",
            PURPOSE,
            (Measure(MeasureKind.COUNT_RECORDS),),
            filters=(Filter("stop", FilterOp.EQUALS, ("North",), "district"),),
        )
        only = aggregate.QueryCompiler().run(
            conn, aggregate.Scan(north, ds, (PARTNER,), timefmt.now()), 1
        )
        assert [c.values["count_records"] for c in only.cells] == [expected["North"]]


def test_the_mapping_table_is_checked_at_start_up(
    city: tuple[sa.Engine, list[tuple[str, str]]],
) -> None:
    engine, _ = city
    tables = data_tables(catalogue(CATALOGUE))
    assert tables["boardings (stop -> district)"] == (
        "stop_districts",
        frozenset({"stop_id", "district"}),
    )
    storage.check_tables(engine, tables)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE stop_districts")
    with pytest.raises(StoreError) as e:
        storage.check_tables(engine, tables)
    assert e.value.reason == "DATA_SCHEMA_MISMATCH"
    assert "stop -> district" in e.value.message and "stop_districts" in e.value.message


@pytest.mark.parametrize(
    ("field", "why"),
    [
        ({"type": "string", "generalisations": ["district"]}, "mapping table"),
        (
            {
                "type": "number",
                "maps": {"district": {"table": "t", "key": "k", "value": "v"}},
            },
            "only string fields",
        ),
        (
            {
                "type": "string",
                "maps": {"district": {"table": "t", "key": "k"}},
            },
            "value",
        ),
    ],
)
def test_a_mapping_the_catalogue_does_not_declare_well_is_a_start_up_error(
    field: dict[str, object], why: str
) -> None:
    bad = {"boardings": {**CATALOGUE["boardings"], "fields": {"stop": field}}}
    with pytest.raises(ConfigError, match=why):
        catalogue(bad)
