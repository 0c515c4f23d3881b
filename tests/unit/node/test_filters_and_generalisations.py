"""Filters compare generalised values, end to end: QueryCompiler.run on SQLite (and PostgreSQL) against
a Python oracle; the policy refuses raw date and number filters; ISO week labels match Python's."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import CitybrokerError, InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, disclosure, policy, synthetic
from node.catalogue import Catalogue, FieldSpec, FieldType
from node.consent import ConsentRecord, ConsentRegistry

CITY, PARTNER, PURPOSE = "aurora", "northwind", "urban-mobility-planning"
DISTRICTS = ("North", "South", "East")
CATALOGUE = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"), "datasets.")
)
DATASET = CATALOGUE.datasets["mobility"]
NOW = timefmt.now()
# Trips from December into March: weeks and months that cross a year boundary
# (2025-12-29 is the Monday of 2026-W01).
START, DAYS = date(2025, 12, 1), 92
MEASURES = (
    Measure(MeasureKind.COUNT_RECORDS),
    Measure(MeasureKind.COUNT_RESIDENTS),
    Measure(MeasureKind.SUM, "distance_km"),
    Measure(MeasureKind.AVG, "distance_km"),
)


@dataclass
class World:
    engine: sa.Engine
    trips: list[dict[str, Any]]
    consenting: set[str]


def build_world(url: str) -> World:
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    people = synthetic.residents(CITY, DISTRICTS, 60, seed=11)
    trips = list(synthetic.trip_rows(people, 3, START, DAYS, seed=11))
    synthetic.load_trips(engine, iter(trips))
    signer = Signer.generate()
    consenting = set()
    with MerkleLog(engine, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(engine, CITY, signer, log)
        for i, p in enumerate(people):
            if i % 3 == 2:
                continue  # a third never consented
            registry.give(
                ConsentRecord(
                    f"{p.resident_id}-c",
                    p.resident_id,
                    (PURPOSE,),
                    (PARTNER,),
                    ("mobility",),
                    NOW - timedelta(days=1),
                    None,
                ),
                actor="test",
            )
            consenting.add(p.resident_id)
    return World(engine, trips, consenting)


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = build_world(f"sqlite:///{tmp_path_factory.mktemp('filters') / 'node.db'}")
    yield world
    world.engine.dispose()


# ---- the oracle --------------------------------------------------------------------------------


def iso_week(d: date) -> str:
    year, week, _ = d.isocalendar()
    return f"{year}-W{week:02d}"


def generalised(value: Any, how: str) -> str:
    if how == "week":
        return iso_week(value)
    if how in ("day", "month", "year"):
        return str(value.strftime({"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[how]))
    if how in ("band5", "band10"):
        width = int(how.removeprefix("band"))
        low = math.floor(value / width) * width
        return f"{low}-{low + width - 1}"
    return str(value)


GroupKey = tuple[str, ...]


def oracle(
    world: World, q: Query, k: int
) -> tuple[dict[GroupKey, dict[str, float]], set[GroupKey]]:
    """Released cells (with "records") and withheld keys; raises PermissionDenied like run()."""
    rows = [
        t
        for t in world.trips
        if t["resident_id"] in world.consenting
        and all(generalised(t[f.field], f.generalisation) in f.values for f in q.filters)
    ]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    if not q.group_by:
        groups[()] = []
    for t in rows:
        groups[tuple(generalised(t[d.field], d.generalisation) for d in q.group_by)].append(t)
    keys = sorted(groups)
    populations = [len({t["resident_id"] for t in groups[key]}) for key in keys]
    if max(populations, default=0) < k and len({t["resident_id"] for t in rows}) < k:
        raise PermissionDenied("population under k", reason="POPULATION_BELOW_K")
    hidden = disclosure.suppress(keys, populations, k)
    released: dict[GroupKey, dict[str, float]] = {}
    for i, key in enumerate(keys):
        if i in hidden:
            continue
        members = groups[key]
        distances = [t["distance_km"] for t in members]
        released[key] = {
            "count_records": len(members),
            "count_residents": populations[i],
            "sum(distance_km)": sum(distances),
            "avg(distance_km)": sum(distances) / len(distances),
            "records": len(members),
        }
    return released, {keys[i] for i in hidden}


def check(world: World, q: Query, k: int) -> None:
    q = q.validate()
    try:
        expected, expected_withheld = oracle(world, q, k)
    except PermissionDenied:
        with world.engine.connect() as conn, pytest.raises(PermissionDenied) as info:
            aggregate.QueryCompiler().run(conn, aggregate.Scan(q, DATASET, (PARTNER,), NOW), k)
        assert info.value.reason == "POPULATION_BELOW_K"
        return
    with world.engine.connect() as conn:
        result = aggregate.QueryCompiler().run(conn, aggregate.Scan(q, DATASET, (PARTNER,), NOW), k)

    def key_of(cell_key: dict[str, str]) -> tuple[str, ...]:
        assert list(cell_key) == [d.field for d in q.group_by]
        return tuple(cell_key[d.field] for d in q.group_by)

    got = {key_of(c.key): c for c in result.cells}
    assert set(got) == set(expected)
    assert {key_of(w) for w in result.withheld} == expected_withheld
    for key, cell in got.items():
        want = expected[key]
        assert cell.records == want["records"]
        for name, value in cell.values.items():
            assert value == pytest.approx(want[name], rel=1e-9, abs=1e-6), (key, name)


def trip_date(values: tuple[str, ...], how: str, op: FilterOp = FilterOp.IN) -> Filter:
    return Filter("trip_date", op, values, how)


def q(*filters: Filter, group_by: tuple[Dimension, ...] = ()) -> Query:
    return Query("mobility", PURPOSE, MEASURES, group_by, filters)


BY_DISTRICT = (Dimension("district"),)
CASES = {
    "month-equals": (
        q(trip_date(("2026-01",), "month", FilterOp.EQUALS), group_by=BY_DISTRICT),
        1,
    ),
    "months-across-new-year": (
        q(
            trip_date(("2025-12", "2026-02"), "month"),
            group_by=(Dimension("trip_date", "month"), Dimension("mode")),
        ),
        3,
    ),
    "weeks-across-new-year": (
        q(trip_date(("2025-W52", "2026-W01"), "week"), group_by=BY_DISTRICT),
        1,
    ),
    "week-and-district": (
        q(
            trip_date(("2026-W01",), "week", FilterOp.EQUALS),
            Filter("district", FilterOp.EQUALS, ("South",)),
            group_by=(Dimension("mode"),),
        ),
        2,
    ),
    "week-grouped-by-month": (
        # 2026-W05 runs from Monday 26 January to Sunday 1 February.
        q(trip_date(("2026-W05",), "week"), group_by=(Dimension("trip_date", "month"),)),
        1,
    ),
    "weeks-grouped-by-week": (
        q(
            trip_date(("2026-W01", "2026-W02", "2026-W03"), "week"),
            group_by=(Dimension("trip_date", "week"), Dimension("district")),
        ),
        4,
    ),
    "year": (q(trip_date(("2026",), "year"), group_by=(Dimension("trip_date", "month"),)), 5),
    "day": (q(trip_date(("2026-01-05", "2026-01-06"), "day")), 1),
    "distance-band": (
        q(Filter("distance_km", FilterOp.IN, ("0-9", "20-29"), "band10"), group_by=BY_DISTRICT),
        4,
    ),
    "unpadded-week-matches-nothing": (q(trip_date(("2026-W1",), "week")), 1),
    "exact-date-under-month-matches-nothing": (q(trip_date(("2026-01-05",), "month")), 1),
    "month-outside-the-data": (q(trip_date(("2027-01",), "month"), group_by=BY_DISTRICT), 1),
}


@pytest.mark.parametrize(("query", "k"), list(CASES.values()), ids=list(CASES))
def test_generalised_filters_match_the_oracle(sqlite_world: World, query: Query, k: int) -> None:
    check(sqlite_world, query, k)


def test_the_cases_exercise_answers_refusals_and_withholding(sqlite_world: World) -> None:
    """Guards the cases above against a degenerate world."""
    outcomes = []
    for query, k in CASES.values():
        try:
            _, withheld = oracle(sqlite_world, query.validate(), k)
            outcomes.append("withheld" if withheld else "answered")
        except PermissionDenied:
            outcomes.append("refused")
    assert {"answered", "withheld", "refused"} <= set(outcomes)
    assert 0 < len(sqlite_world.consenting) < 60


@pytest.mark.postgres
def test_generalised_filters_match_the_oracle_on_postgresql(postgres_url: str) -> None:
    world = build_world(postgres_url)
    try:
        assert world.engine.dialect.name == "postgresql"
        with world.engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(synthetic.trips))
            assert stored.scalar_one() == len(world.trips)
        for query, k in CASES.values():
            check(world, query, k)
    finally:
        world.engine.dispose()


# ---- ISO weeks ---------------------------------------------------------------------------------


def iso_week_dates() -> list[date]:
    """Every day around each new year from 1999 to 2032 (years with 52 and 53 ISO weeks, leap
    years), plus random days from 1901 to 2099."""
    days = {date(year, 12, 20) + timedelta(days=i) for year in range(1998, 2032) for i in range(23)}
    days |= {date(2020, 2, 28) + timedelta(days=i) for i in range(3)}
    rng = random.Random(2026)
    days |= {date(1901, 1, 1) + timedelta(days=rng.randrange(73_000)) for _ in range(400)}
    return sorted(days)


def week_labels(engine: sa.Engine) -> list[tuple[date, str]]:
    """The node's own SQL expression for the week generalisation, evaluated by the database."""
    metadata = sa.MetaData()
    table = sa.Table("iso_dates", metadata, sa.Column("d", sa.Date, primary_key=True))
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"d": d} for d in iso_week_dates()])
        spec = FieldSpec("d", "d", FieldType.DATE, frozenset({"week"}))
        label = aggregate._generalise(table.c.d, spec, "week", conn.dialect.name)
        rows = conn.execute(sa.select(table.c.d, label).order_by(table.c.d)).all()
    return [(d, str(w)) for d, w in rows]


def test_iso_week_labels_on_sqlite_equal_pythons(tmp_path: Path) -> None:
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'weeks.db'}")
    try:
        labels = week_labels(engine)
    finally:
        engine.dispose()
    assert len(labels) == len(iso_week_dates())
    assert [w for _, w in labels] == [iso_week(d) for d, _ in labels]
    # Spot checks of the boundaries.
    by_day = dict(labels)
    assert by_day[date(2025, 12, 29)] == "2026-W01"
    assert by_day[date(2021, 1, 3)] == "2020-W53"
    assert by_day[date(2027, 1, 1)] == "2026-W53"
    assert by_day[date(2019, 12, 30)] == "2020-W01"


@pytest.mark.postgres
def test_iso_week_labels_on_postgresql_equal_pythons(postgres_url: str) -> None:
    engine = storage.create_engine(postgres_url)
    try:
        labels = week_labels(engine)
    finally:
        engine.dispose()
    assert len(labels) == len(iso_week_dates())
    assert [w for _, w in labels] == [iso_week(d) for d, _ in labels]


# ---- the policy on filters ---------------------------------------------------------------------


def agreement(trip_date_terms: FieldTerms) -> Agreement:
    return Agreement(
        agreement_id="a1",
        version=1,
        provider=CITY,
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={
            "mobility": {
                "mode": FieldTerms(Appearance.RAW),
                "district": FieldTerms(Appearance.RAW),
                "trip_date": trip_date_terms,
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            }
        },
        min_cell_size=5,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=1),
        retention_days=30,
    )


MONTHS = agreement(FieldTerms(Appearance.GENERALISED, frozenset({"month"})))


def decide(query: Query, a: Agreement = MONTHS) -> policy.Permit:
    return policy.decide(query.validate(), PARTNER, [a], NOW, policy.Provider(CITY, CATALOGUE))


def refusal(query: Query, a: Agreement = MONTHS) -> CitybrokerError:
    with pytest.raises(CitybrokerError) as info:
        decide(query, a)
    return info.value


RAW_DATES = agreement(FieldTerms(Appearance.RAW))


@pytest.mark.parametrize(
    "raw",
    [
        Filter("trip_date", FilterOp.EQUALS, ("2026-01-05",)),
        Filter("trip_date", FilterOp.IN, ("2026-01-05", "2026-01-06")),
    ],
    ids=["date-equals", "date-in"],
)
def test_a_raw_date_filter_is_refused(raw: Filter) -> None:
    # Even where the agreement lets the field appear raw.
    e = refusal(q(raw), RAW_DATES)
    assert isinstance(e, InvalidArgument)
    assert e.reason == "FILTER_ON_RAW_VALUE"
    assert raw.field in e.message
    # Where it offers only generalisations, the agreement refuses first, naming what it offers.
    e = refusal(q(raw))
    assert isinstance(e, PermissionDenied)
    assert e.reason == "FILTER_NOT_IN_AGREEMENT"
    assert "only generalised as month" in e.message


def test_a_raw_number_filter_outside_the_agreement_is_refused_as_such() -> None:
    e = refusal(q(Filter("distance_km", FilterOp.EQUALS, ("12.5",))))
    assert e.reason == "FILTER_NOT_IN_AGREEMENT"
    assert "band" not in e.message


def test_the_raw_value_refusal_names_the_generalisations_to_use() -> None:
    e = refusal(q(Filter("trip_date", FilterOp.EQUALS, ("2026-01-05",))), RAW_DATES)
    assert "day, month, week, year" in e.message


@pytest.mark.parametrize(
    "bad",
    [
        trip_date(("2026-01",), "fortnight"),
        trip_date(("2026-01",), "band10"),
        Filter("mode", FilterOp.EQUALS, ("2026-01",), "month"),
    ],
    ids=["unknown", "wrong-type", "string-field"],
)
def test_an_unknown_generalisation_is_refused(bad: Filter) -> None:
    # On a field the agreement allows raw; elsewhere the agreement refuses first.
    e = refusal(q(bad), RAW_DATES)
    assert isinstance(e, InvalidArgument)
    assert e.reason == "GENERALISATION_UNKNOWN"


def test_the_agreement_must_allow_the_filters_generalisation() -> None:
    week = q(trip_date(("2026-W01",), "week"))
    e = refusal(week)
    assert isinstance(e, PermissionDenied)
    assert e.reason == "FILTER_NOT_IN_AGREEMENT"
    assert decide(week, agreement(FieldTerms(Appearance.GENERALISED, frozenset({"week"}))))
    assert decide(q(trip_date(("2026-01",), "month")))
    # A field the agreement allows raw may be filtered on any generalisation.
    assert decide(week, agreement(FieldTerms(Appearance.RAW)))
    # An aggregate-only field may not be filtered on at all, generalised or not.
    e = refusal(q(Filter("distance_km", FilterOp.IN, ("0-9",), "band10")))
    assert isinstance(e, PermissionDenied)
    assert e.reason == "FILTER_NOT_IN_AGREEMENT"
    # String fields are compared as stored.
    assert decide(q(Filter("mode", FilterOp.IN, ("bus", "tram"))))


def test_a_number_with_no_generalisation_cannot_be_filtered_on() -> None:
    catalogue = Catalogue.from_config(
        Section({"traffic": synthetic.TRAFFIC_CATALOGUE}, Path("node.toml"), "datasets.")
    )
    a = dataclasses.replace(MONTHS, datasets={"traffic": {"vehicles": FieldTerms(Appearance.RAW)}})
    raw = Query(
        "traffic",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RECORDS),),
        filters=(Filter("vehicles", FilterOp.EQUALS, ("100",)),),
    )
    with pytest.raises(InvalidArgument) as info:
        policy.decide(raw, PARTNER, [a], NOW, policy.Provider(CITY, catalogue))
    assert info.value.reason == "FILTER_ON_RAW_VALUE"
    assert "vehicles has no generalisation" in info.value.message
