"""Every statement the query compiler emits compiles for Trino (README, Datasets on a warehouse):
aggregates with each measure, filters, every generalisation (dates through Trino's date_format),
clamped sums under differential privacy, cell keys, contributors, record releases and attribute
checks, with consent read beside the data or from the pushed mirror. No Trino server: statements
go to a connection that records them, compiled with the `trino` package's SQLAlchemy dialect."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from domain.errors import CitybrokerError
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query, QueryKind
from infra.config import Section
from node import aggregate, synthetic
from node.catalogue import Catalogue
from tests.conftest import PURPOSE

trino_dialect = pytest.importorskip("trino.sqlalchemy.dialect", reason="`trino` not installed")

STOPS = {
    "table": "boardings",
    "resident_column": "resident_id",
    "data_category": "mobility",
    "fields": {
        "stop": {
            "type": "string",
            "generalisations": ["district"],
            "maps": {
                "district": {"table": "stop_districts", "key": "stop_id", "value": "district"}
            },
        },
    },
}
CATALOGUE = Catalogue.from_config(
    Section(
        {
            "mobility": synthetic.MOBILITY_CATALOGUE,
            "traffic": synthetic.TRAFFIC_CATALOGUE,
            "residents": synthetic.RESIDENTS_CATALOGUE,
            "boardings": STOPS,
        },
        Path("node.toml"),
    )
)
AT = datetime(2026, 9, 1, tzinfo=UTC)
ALL_MEASURES = tuple(
    Measure(kind, "" if not kind.needs_field else "distance_km") for kind in MeasureKind
)


class _Result:
    """An empty result: the statements are what the test is after, not rows."""

    def mappings(self) -> _Result:
        return self

    def all(self) -> list[Any]:
        return []

    def first(self) -> None:
        return None

    def scalar_one(self) -> int:
        return 0


class RecordingConnection:
    """Stands in for a connection to Trino: compiles each statement with the Trino dialect."""

    def __init__(self) -> None:
        self.dialect = trino_dialect.TrinoDialect()
        self.sql: list[str] = []

    def execute(self, stmt: sa.Executable, params: Any = None) -> _Result:
        self.sql.append(compile_trino(stmt))
        return _Result()


def compile_trino(stmt: sa.Executable) -> str:
    """The statement as Trino SQL, compiled with the `trino` package's dialect; its values
    must render as Trino literals too (every bound value has a type the dialect knows)."""
    dialect = trino_dialect.TrinoDialect()
    sql = str(stmt.compile(dialect=dialect))
    if not any(p.value is None for p in stmt.compile().binds.values()):  # late-bound: no value
        str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    return sql


def _queries() -> list[tuple[str, Query]]:
    month = Dimension("trip_date", "month")
    return [
        ("every measure", Query("mobility", PURPOSE, ALL_MEASURES, group_by=(month,))),
        *(
            (
                f"trip_date by {g}",
                Query(
                    "mobility",
                    PURPOSE,
                    (Measure(MeasureKind.COUNT_RESIDENTS),),
                    group_by=(Dimension("trip_date", g),),
                ),
            )
            for g in ("day", "week", "month", "year")
        ),
        *(
            (
                f"distance by {g or 'value'}",
                Query(
                    "mobility",
                    PURPOSE,
                    (Measure(MeasureKind.COUNT_RECORDS),),
                    group_by=(Dimension("distance_km", g),),
                ),
            )
            for g in ("", "band5", "band10")
        ),
        (
            "filters",
            Query(
                "mobility",
                PURPOSE,
                (Measure(MeasureKind.SUM, "distance_km"),),
                group_by=(Dimension("mode"),),
                filters=(
                    Filter("district", FilterOp.IN, ("North", "South")),
                    Filter("trip_date", FilterOp.EQUALS, ("2026-08",), "month"),
                    Filter("distance_km", FilterOp.EQUALS, ("0-4",), "band5"),
                ),
            ),
        ),
        (
            "place to district (mapping table)",
            Query(
                "boardings",
                PURPOSE,
                (Measure(MeasureKind.COUNT_RESIDENTS),),
                group_by=(Dimension("stop", "district"),),
            ),
        ),
        (
            "observational, by week",
            Query(
                "traffic",
                PURPOSE,
                (Measure(MeasureKind.SUM, "vehicles"), Measure(MeasureKind.AVG, "cyclists")),
                group_by=(Dimension("district"), Dimension("observed_on", "week")),
            ),
        ),
        ("no groups", Query("mobility", PURPOSE, (Measure(MeasureKind.COUNT_RECORDS),))),
    ]


def _scans(query: Query) -> list[aggregate.Scan]:
    """The query as each way a node may scan it: consent beside the data or pushed, clamped
    sums under differential privacy, cell keys."""
    ds = CATALOGUE.datasets[query.dataset]
    base = aggregate.Scan(query, ds, ("northwind", "category:research"), AT)
    numeric = tuple((f, 0.0, 50.0) for f, spec in ds.fields.items() if spec.type == "number")
    return [
        base,
        aggregate.Scan(query, ds, base.recipients, AT, pushed=True),
        aggregate.Scan(query, ds, base.recipients, AT, bounds=numeric, per_resident=3),
        aggregate.Scan(query, ds, base.recipients, AT, pushed=True, cell_keys=True),
    ]


CASES = [(name, scan) for name, q in _queries() for scan in _scans(q)]


@pytest.mark.parametrize(
    ("name", "scan"), CASES, ids=[f"{n}-{i % 4}" for i, (n, _) in enumerate(CASES)]
)
def test_aggregate_and_contributors_compile_for_trino(name: str, scan: aggregate.Scan) -> None:
    conn = RecordingConnection()
    # No rows: the population is under k and the query refused; its statements ran all the same.
    with contextlib.suppress(CitybrokerError):
        aggregate.QueryCompiler().run(conn, scan, k=5)  # type: ignore[arg-type]
    assert conn.sql, name
    contributors = aggregate.contributors(scan, "trino", [])
    if scan.ds.resident_linked:
        assert contributors is not None
        compile_trino(contributors)
        statement = aggregate.QueryCompiler().contributors_statement(scan, "trino", [])
        assert statement is not None
        compile_trino(statement[0])
    else:
        assert contributors is None


def test_date_generalisations_use_trinos_date_format() -> None:
    q = Query(
        "mobility",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RECORDS),),
        group_by=(Dimension("trip_date", "week"), Dimension("trip_date", "month")),
    )
    sql = compile_trino(aggregate.compile_query(_scans(q)[0], "trino"))
    assert "date_format(" in sql and "to_char" not in sql


def test_withheld_cells_compile_for_trino() -> None:
    q = _queries()[0][1]
    scan = _scans(q)[1]
    compile_trino(aggregate.contributors(scan, "trino", [{"trip_date": "2026-08"}]))  # type: ignore[arg-type]


def test_record_release_and_attribute_check_compile_for_trino() -> None:
    ds = CATALOGUE.datasets["residents"]
    release = Query(
        "residents",
        PURPOSE,
        (),
        group_by=(Dimension("age", "band10"), Dimension("district")),
        kind=QueryKind.RECORD_RELEASE,
    )
    check = Query(
        "residents",
        PURPOSE,
        (),
        filters=(Filter("age", FilterOp.AT_LEAST, ("65",)),),
        kind=QueryKind.ATTRIBUTE_CHECK,
        subject="aurora-r1",
    )
    conn = RecordingConnection()
    for pushed in (False, True):
        scan = aggregate.Scan(release, ds, ("northwind",), AT, pushed=pushed)
        assert aggregate.release_records(conn, scan, b"k" * 32) == []  # type: ignore[arg-type]
    assert aggregate.attribute_check(conn, check, ds, AT) is False  # type: ignore[arg-type]
    assert len(conn.sql) == 3
