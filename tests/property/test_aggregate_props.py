"""QueryCompiler.run on SQLite against a naive Python oracle over the consenting residents only."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.log import MerkleLog
from domain.errors import PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, disclosure, synthetic
from node.catalogue import Catalogue, DatasetSpec
from node.consent import ConsentRecord, ConsentRegistry

CITY, PARTNER, PURPOSE = "aurora", "northwind", "urban-mobility-planning"
DISTRICTS = ("North", "South", "East")
DATASET: DatasetSpec = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
NOW = timefmt.now()
DAY = timedelta(days=1)

# How each resident stands; only the first two let their trips into an answer.
CONSENT_KINDS = (
    "valid",
    "open-ended",
    "none",
    "withdrawn",
    "other-purpose",
    "other-recipient",
    "other-category",
    "expired",
    "not-yet-valid",
    "valid",
    "valid",
    "open-ended",
)
CONSENTING_KINDS = {"valid", "open-ended"}


@dataclass
class World:
    engine: sa.Engine
    trips: list[dict[str, Any]]
    consenting: set[str]


def consent_for(resident: str, kind: str) -> ConsentRecord:
    purpose, recipient, category = PURPOSE, PARTNER, "mobility"
    starts, ends = NOW - 10 * DAY, NOW + 10 * DAY
    if kind == "other-purpose":
        purpose = "scientific-research"
    elif kind == "other-recipient":
        recipient = "someone-else"
    elif kind == "other-category":
        category = "health"
    elif kind == "expired":
        ends = NOW - DAY
    elif kind == "not-yet-valid":
        starts = NOW + DAY
    return ConsentRecord(
        f"{resident}-c",
        resident,
        (purpose,),
        (recipient,),
        (category,),
        starts,
        None if kind == "open-ended" else ends,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    engine = storage.create_engine(f"sqlite:///{tmp_path_factory.mktemp('agg') / 'node.db'}")
    storage.upgrade(engine)
    people = synthetic.residents(CITY, DISTRICTS, 48, seed=7)
    trips = list(synthetic.trip_rows(people, 3, date(2026, 8, 1), 92, seed=7))
    synthetic.load_trips(engine, iter(trips))
    signer = Signer.generate()
    consenting = set()
    with MerkleLog(engine, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(engine, CITY, signer, log)
        for i, person in enumerate(people):
            kind = CONSENT_KINDS[i % len(CONSENT_KINDS)]
            if kind == "none":
                continue
            record = consent_for(person.resident_id, kind)
            registry.give(record, actor="test")
            if kind == "withdrawn":
                registry.withdraw(record.record_id, actor="test")
            if kind in CONSENTING_KINDS:
                consenting.add(person.resident_id)
    yield World(engine, trips, consenting)
    engine.dispose()


# ---- the oracle --------------------------------------------------------------------------------


def dimension_value(trip: dict[str, Any], d: Dimension) -> str:
    v = trip[d.field]
    if d.generalisation == "month":
        return f"{v:%Y-%m}"
    if d.generalisation == "band10":
        low = math.floor(v / 10) * 10
        return f"{low}-{low + 9}"
    return str(v)


def matches(trip: dict[str, Any], f: Filter) -> bool:
    return str(trip[f.field]) in f.values


def measure(m: Measure, trips: list[dict[str, Any]]) -> float:
    if m.kind is MeasureKind.COUNT_RECORDS:
        return len(trips)
    if m.kind is MeasureKind.COUNT_RESIDENTS:
        return len({t["resident_id"] for t in trips})
    xs: list[float] = [t[m.field] for t in trips]
    if m.kind is MeasureKind.SUM:
        return sum(xs)
    if m.kind is MeasureKind.AVG:
        return sum(xs) / len(xs)
    return min(xs) if m.kind is MeasureKind.MIN else max(xs)


GroupKey = tuple[str, ...]


def oracle(
    world: World, q: Query, k: int
) -> tuple[dict[GroupKey, dict[str, float]], set[GroupKey]] | None:
    """The released cells (measure values plus "records") and the withheld keys, by brute force;
    None when the query must be refused (its whole population is under k)."""
    rows = [
        t
        for t in world.trips
        if t["resident_id"] in world.consenting and all(matches(t, f) for f in q.filters)
    ]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    if not q.group_by:
        groups[()] = []  # an ungrouped aggregate always has its one (maybe empty) cell
    for t in rows:
        groups[tuple(dimension_value(t, d) for d in q.group_by)].append(t)
    keys = sorted(groups)  # the order the SQL statement returns the cells in
    populations = [len({t["resident_id"] for t in groups[key]}) for key in keys]
    if max(populations, default=0) < k and len({t["resident_id"] for t in rows}) < k:
        return None
    hidden = disclosure.suppress(keys, populations, k)
    released, withheld = {}, set()
    for i, key in enumerate(keys):
        members = groups[key]
        if i in hidden:
            withheld.add(key)
        else:
            values = {m.name: measure(m, members) for m in q.measures}
            values["records"] = len(members)
            released[key] = values
    return released, withheld


# ---- generated queries -------------------------------------------------------------------------

MEASURES = [
    Measure(MeasureKind.COUNT_RECORDS),
    Measure(MeasureKind.COUNT_RESIDENTS),
    *(
        Measure(k, "distance_km")
        for k in (MeasureKind.SUM, MeasureKind.AVG, MeasureKind.MIN, MeasureKind.MAX)
    ),
]
DIMENSIONS = [
    Dimension("mode"),
    Dimension("district"),
    Dimension("trip_date", "month"),
    Dimension("distance_km", "band10"),
]


@st.composite
def queries(draw: st.DrawFn) -> Query:
    filters = []
    if draw(st.booleans()):
        modes = draw(st.sets(st.sampled_from([*synthetic.MODES, "hovercraft"]), min_size=1))
        filters.append(Filter("mode", FilterOp.IN, tuple(sorted(modes))))
    if draw(st.booleans()):
        filters.append(Filter("district", FilterOp.EQUALS, (draw(st.sampled_from(DISTRICTS)),)))
    return Query(
        dataset="mobility",
        purpose=PURPOSE,
        measures=tuple(
            draw(st.lists(st.sampled_from(MEASURES), min_size=1, max_size=4, unique=True))
        ),
        group_by=tuple(
            draw(st.lists(st.sampled_from(DIMENSIONS), max_size=2, unique_by=lambda d: d.field))
        ),
        filters=tuple(filters),
    ).validate()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=queries(), k=st.integers(1, 6))
def test_run_matches_the_oracle(world: World, q: Query, k: int) -> None:
    outcome = oracle(world, q, k)
    if outcome is None:
        with world.engine.connect() as conn, pytest.raises(PermissionDenied) as info:
            aggregate.QueryCompiler().run(conn, aggregate.Scan(q, DATASET, (PARTNER,), NOW), k)
        assert info.value.reason == "POPULATION_BELOW_K"
        return
    with world.engine.connect() as conn:
        result = aggregate.QueryCompiler().run(conn, aggregate.Scan(q, DATASET, (PARTNER,), NOW), k)
    expected, expected_withheld = outcome

    def key_of(cell_key: dict[str, str]) -> tuple[str, ...]:
        assert list(cell_key) == [d.field for d in q.group_by]
        return tuple(cell_key[d.field] for d in q.group_by)

    got = {key_of(c.key): c for c in result.cells}
    assert set(got) == set(expected)
    assert {key_of(w) for w in result.withheld} == expected_withheld
    for key, cell in got.items():
        want = expected[key]
        assert cell.records == want["records"]
        assert set(cell.values) == {m.name for m in q.measures}
        for name, value in cell.values.items():
            assert value == pytest.approx(want[name], rel=1e-9, abs=1e-6), (key, name)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(q=queries(), k=st.integers(1, 6))
def test_every_released_cell_has_k_consenting_residents(world: World, q: Query, k: int) -> None:
    counted = Query(
        q.dataset, q.purpose, (Measure(MeasureKind.COUNT_RESIDENTS),), q.group_by, q.filters
    )
    with world.engine.connect() as conn:
        try:
            result = aggregate.QueryCompiler().run(
                conn, aggregate.Scan(counted, DATASET, (PARTNER,), NOW), k
            )
        except PermissionDenied as e:
            assert e.reason == "POPULATION_BELOW_K"
            return
    assert all(c.values["count_residents"] >= k for c in result.cells)


def test_the_world_is_interesting(world: World) -> None:
    """Guards the oracle test against a degenerate fixture (nobody or everybody consenting)."""
    everyone = {t["resident_id"] for t in world.trips}
    assert 0 < len(world.consenting) < len(everyone)
    assert world.consenting <= everyone
    at_time = datetime.now().astimezone()
    assert abs((at_time - NOW).total_seconds()) < 600
