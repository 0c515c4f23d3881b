"""Over random small cities and random sequences of allowed queries (group-bys and filters), no two
cells released under the `exact` regime let a partner derive a group of 1..k-1 residents by
subtracting one from the other. The answers run as a node runs them on SQLite (node.aggregate,
then the differencing guard, node.release_guard, recording each release as the log's transaction
would); an oracle computes every released cell's true records from the raw rows.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from node import aggregate, synthetic
from node.catalogue import Catalogue
from node.release_guard import Asked, ReleaseGuard
from node.schema import (
    consent_records,
    consent_scopes,
    release_cells,
    release_histories,
    resident_numbers,
)

K = 5
PARTNER, PURPOSE = "northwind", "urban-mobility-planning"
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
RESIDENTS = [f"r{i:02d}" for i in range(40)]
DISTRICTS, MODES, MONTHS = ("A", "B", "C"), ("bus", "car", "walk"), ("2026-08", "2026-09")
DIMENSIONS = {
    "district": Dimension("district"),
    "mode": Dimension("mode"),
    "month": Dimension("trip_date", "month"),
}


def _agreement() -> Agreement:
    now = timefmt.now()
    return Agreement(
        agreement_id="aurora--northwind",
        version=1,
        provider="aurora",
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={"mobility": {"district": FieldTerms(Appearance.RAW)}},
        min_cell_size=K,
        valid_from=now - timedelta(days=1),
        valid_until=now + timedelta(days=1),
        retention_days=30,
    )


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """A node database with the trips table and every resident of the pool consenting."""
    engine = storage.create_engine(f"sqlite:///{tmp_path_factory.mktemp('city') / 'node.db'}")
    storage.upgrade(engine)
    synthetic.create_tables(engine)
    since = timefmt.to_db(timefmt.now() - timedelta(days=2))
    with engine.begin() as conn:
        conn.execute(
            consent_records.insert(),
            [
                {"record_id": f"{r}-c", "resident_id": r, "valid_from": since, "state": "given"}
                for r in RESIDENTS
            ],
        )
        conn.execute(
            consent_scopes.insert(),
            [
                {
                    "record_id": f"{r}-c",
                    "purpose": PURPOSE,
                    "recipient": PARTNER,
                    "data_category": "mobility",
                    "resident_id": r,
                    "state": "given",
                    "valid_from": since,
                }
                for r in RESIDENTS
            ],
        )
    yield engine
    engine.dispose()


@dataclass(frozen=True)
class Trip:
    trip_id: int
    resident: str
    district: str
    mode: str
    month: str
    km: float

    def value(self, dimension: str) -> str:
        return {"district": self.district, "mode": self.mode, "month": self.month}[dimension]


@st.composite
def cities(draw: st.DrawFn) -> list[Trip]:
    """8 to 40 residents with 1 to 4 trips each; districts and modes skewed, so small groups
    are common."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    people = RESIDENTS[: draw(st.integers(8, len(RESIDENTS)))]
    trips: list[Trip] = []
    for r in people:
        home = rng.choices(DISTRICTS, weights=(6, 3, 1))[0]
        for _ in range(rng.randint(1, 4)):
            district = home if rng.random() < 0.8 else rng.choice(DISTRICTS)
            mode = rng.choices(MODES, weights=(5, 2, 3))[0]
            km = rng.choice((0.5, 1.0, 2.5, 7.0))
            trips.append(Trip(len(trips) + 1, r, district, mode, rng.choice(MONTHS), km))
    return trips


@st.composite
def queries(draw: st.DrawFn) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """A group-by (0 to 2 dimensions) and filters (district, mode, month: subsets)."""
    group_by = tuple(draw(st.lists(st.sampled_from(list(DIMENSIONS)), max_size=2, unique=True)))
    filters: dict[str, tuple[str, ...]] = {}
    for name, values in (("district", DISTRICTS), ("mode", MODES), ("month", MONTHS)):
        if draw(st.booleans()):
            filters[name] = tuple(
                draw(st.lists(st.sampled_from(values), min_size=1, unique=True).map(sorted))
            )
    return group_by, filters


def _query(group_by: tuple[str, ...], filters: dict[str, tuple[str, ...]]) -> Query:
    made = []
    for name, values in filters.items():
        dim = DIMENSIONS[name]
        made.append(Filter(dim.field, FilterOp.IN, values, dim.generalisation))
    return Query(
        "mobility",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.SUM, "distance_km")),
        tuple(DIMENSIONS[d] for d in group_by),
        tuple(made),
    )


def _load(engine: sa.Engine, trips: list[Trip]) -> None:
    with engine.begin() as conn:
        conn.execute(release_cells.delete())
        conn.execute(release_histories.delete())
        conn.execute(resident_numbers.delete())
        conn.execute(synthetic.trips.delete())
        conn.execute(
            synthetic.trips.insert(),
            [
                {
                    "trip_id": t.trip_id,
                    "resident_id": t.resident,
                    "trip_date": date.fromisoformat(f"{t.month}-{1 + t.trip_id % 28:02d}"),
                    "mode": t.mode,
                    "district": t.district,
                    "distance_km": t.km,
                }
                for t in trips
            ],
        )


def _released_cells(
    engine: sa.Engine, guard: ReleaseGuard, query: Query, n: int
) -> list[dict[str, str]]:
    """Ask as the node answers; the released cells' keys (none if refused)."""
    scan = aggregate.Scan(query, DATASET, (PARTNER,), timefmt.now())
    with engine.connect() as conn:
        try:
            answer = aggregate.QueryCompiler().run(conn, scan, K)
            asked = Asked(PARTNER, _agreement(), f"q{n}", scan, K)
            answer, guarded = guard.apply(asked, conn, answer, resident_numbers)
        except (PermissionDenied, InvalidArgument):
            return []
    with engine.begin() as conn:
        guarded.side_write()(conn, 0)
    return [c.key for c in answer.cells]


def _records(
    trips: list[Trip],
    group_by: tuple[str, ...],
    filters: dict[str, tuple[str, ...]],
    key: dict[str, str],
) -> frozenset[Trip]:
    """The oracle: a released cell's true records."""
    fields = {DIMENSIONS[d].field: d for d in group_by}
    return frozenset(
        t
        for t in trips
        if all(t.value(name) in values for name, values in filters.items())
        and all(t.value(fields[f]) == v for f, v in key.items())
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(trips=cities(), asked=st.lists(queries(), min_size=2, max_size=6))
def test_no_two_released_cells_differ_by_a_small_group(
    engine: sa.Engine,
    trips: list[Trip],
    asked: list[tuple[tuple[str, ...], dict[str, tuple[str, ...]]]],
) -> None:
    _load(engine, trips)
    guard = ReleaseGuard(engine)
    released: list[tuple[int, frozenset[Trip]]] = []
    for n, (group_by, filters) in enumerate(asked):
        for key in _released_cells(engine, guard, _query(group_by, filters), n):
            released.append((n, _records(trips, group_by, filters, key)))
    for (i, a), (j, b) in itertools.combinations(released, 2):
        if i == j or a == b:
            continue
        people = {t.resident for t in a ^ b}
        assert len(people) >= K, (
            f"answers {i} and {j} differ by the records of {len(people)} residents"
        )
