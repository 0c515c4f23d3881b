"""Observational data (traffic counts: no residents, k counts records) through a real federation,
and SQL-injection strings in every part of a query: through the broker, and straight at the
node's policy and aggregation. Every injection is a clear refusal, and no table changes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from citybroker.broker.v1 import broker_pb2
from citybroker.common.v1 import common_pb2
from domain import agreement as agreement_doc
from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import CallFailed, CitybrokerError, InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge.partner_client import Answer
from edge.wire import query_to_pb
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, policy, synthetic
from node.catalogue import Catalogue
from node.consent import ConsentRegistry
from node.schema import consent_records, consent_scopes
from tests.conftest import PURPOSE, RunningFederation, give_mobility_consents
from tests.integration.conftest import Wire

CITIES = ["aurora", "borealis", "cascadia"]
TRAFFIC_SUMS = (
    Measure(MeasureKind.SUM, "vehicles"),
    Measure(MeasureKind.SUM, "cyclists"),
    Measure(MeasureKind.COUNT_RECORDS),
)
HOURS_A_DAY = 16  # synthetic cameras count 06:00-21:00


def _ask(rf: RunningFederation, query: Query) -> Answer:
    with rf.partner() as client:
        return client.query(query)


def _outcomes(answer: Answer) -> list[tuple[str, str, str, str]]:
    return [(c.city, c.status, c.code, c.reason) for c in answer.cities]


def traffic(**overrides: Any) -> Query:
    fields: dict[str, Any] = {
        "dataset": "traffic",
        "purpose": PURPOSE,
        "measures": TRAFFIC_SUMS,
        "group_by": (Dimension("district"), Dimension("observed_on", "month")),
    }
    fields.update(overrides)
    return Query(**fields)


def _city_engine(rf: RunningFederation, city: str) -> sa.Engine:
    return storage.create_engine(f"sqlite:///{rf.fed.cities[city].database}")


# ---- observational data through the federation ------------------------------------------------


def test_traffic_sums_per_district_and_month(federation: RunningFederation) -> None:
    answer = _ask(federation, traffic())
    assert _outcomes(answer) == [(c, "answered", "OK", "") for c in CITIES]
    got = {(c.key["district"], c.key["observed_on"]): c for c in answer.cells}
    # What each city holds, asked of its own database.
    t = synthetic.traffic.c
    expected: dict[tuple[str, str], tuple[str, list[int]]] = {}
    for city in CITIES:
        engine = _city_engine(federation, city)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(
                        t.district,
                        sa.func.strftime("%Y-%m", t.observed_on),
                        sa.func.sum(t.vehicles),
                        sa.func.sum(t.cyclists),
                        sa.func.count(),
                    ).group_by(t.district, sa.func.strftime("%Y-%m", t.observed_on))
                ).all()
        finally:
            engine.dispose()
        for district, month, vehicles, cyclists, n in rows:
            expected[(district, month)] = (city, [vehicles, cyclists, n])
    assert set(got) == set(expected)
    assert {month for _, month in got} == {"2026-08"}
    for key, (city, (vehicles, cyclists, n)) in expected.items():
        cell = got[key]
        assert cell.contributing == [city] and not cell.withheld
        assert cell.values == {
            "sum(vehicles)": vehicles,
            "sum(cyclists)": cyclists,
            "count_records": n,
        }
        assert n == 31 * HOURS_A_DAY


def test_traffic_by_iso_week_counts_records_not_cameras(federation: RunningFederation) -> None:
    """One camera per district: a week of one day (2026-W36 is Monday 31 August alone) has 16
    observations, at least k = 10, so it is released; k counts records, not cameras."""
    query = traffic(
        measures=(Measure(MeasureKind.COUNT_RECORDS),),
        group_by=(Dimension("observed_on", "week"),),
        cities=("borealis",),
    )
    answer = _ask(federation, query)
    assert _outcomes(answer) == [("borealis", "answered", "OK", "")]
    districts = len(federation.fed.cities["borealis"].plan.districts)
    weeks = {c.key["observed_on"]: c.values["count_records"] for c in answer.cells}
    # 1-2 August 2026 are a Saturday and a Sunday: W31 has two days, W32-W35 seven, W36 one.
    days = {"2026-W31": 2, "2026-W32": 7, "2026-W33": 7, "2026-W34": 7, "2026-W35": 7}
    days["2026-W36"] = 1
    assert weeks == {w: n * HOURS_A_DAY * districts for w, n in days.items()}
    # A week filter narrows the same way.
    narrowed = dataclasses.replace(
        query,
        group_by=(Dimension("district"),),
        filters=(Filter("observed_on", FilterOp.EQUALS, ("2026-W36",), "week"),),
    )
    answer = _ask(federation, narrowed)
    assert [c.values["count_records"] for c in answer.cells] == [HOURS_A_DAY] * districts


def test_counting_residents_of_traffic_is_invalid(federation: RunningFederation) -> None:
    answer = _ask(federation, traffic(measures=(Measure(MeasureKind.COUNT_RESIDENTS),)))
    assert _outcomes(answer) == [
        (c, "refused", "INVALID_ARGUMENT", "MEASURE_INVALID") for c in CITIES
    ]
    assert answer.cells == []


@pytest.mark.parametrize(
    ("query", "code", "reason"),
    [
        (  # the agreement offers observed_on only generalised
            traffic(filters=(Filter("observed_on", FilterOp.EQUALS, ("2026-08-03",)),)),
            "PERMISSION_DENIED",
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (
            traffic(group_by=(Dimension("observed_on", "day"),)),
            "PERMISSION_DENIED",
            "GENERALISATION_NOT_IN_AGREEMENT",
        ),
        (
            traffic(filters=(Filter("observed_on", FilterOp.EQUALS, ("2026-08-03",), "day"),)),
            "PERMISSION_DENIED",
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (
            traffic(filters=(Filter("hour", FilterOp.IN, ("5-9",), "band5"),)),
            "PERMISSION_DENIED",
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (traffic(group_by=(Dimension("vehicles"),)), "PERMISSION_DENIED", "FIELD_AGGREGATE_ONLY"),
    ],
    ids=["raw-date-filter", "day-group", "day-filter", "hour-filter", "aggregate-only"],
)
def test_traffic_minimisation_refusals(
    federation: RunningFederation, query: Query, code: str, reason: str
) -> None:
    assert _outcomes(_ask(federation, query)) == [(c, "refused", code, reason) for c in CITIES]


def test_traffic_cells_under_k_records_are_withheld_or_refused(
    fresh_federation: RunningFederation,
) -> None:
    """With k = 20, a one-day week (16 observations) is under k: withheld in a table, together
    with the smallest other week, and refused when it is the whole query."""
    rf = fresh_federation
    layout = rf.fed.cities["borealis"]
    strict = rf.fed.agreement("borealis", version=2, k=20)
    rf.operators["borealis"].activate_agreement(
        agreement_doc.sign(strict, layout.signer, rf.fed.partner_signer)
    )
    district = layout.plan.districts[0]
    in_district = (Filter("district", FilterOp.EQUALS, (district,)),)
    weekly = traffic(
        measures=(Measure(MeasureKind.COUNT_RECORDS),),
        group_by=(Dimension("observed_on", "week"),),
        filters=in_district,
        cities=("borealis",),
    )
    answer = _ask(rf, weekly)
    assert _outcomes(answer) == [("borealis", "answered", "OK", "")]
    withheld = {c.key["observed_on"] for c in answer.cells if c.withheld}
    released = {
        c.key["observed_on"]: c.values["count_records"] for c in answer.cells if not c.withheld
    }
    # W36 (16 records) is under k; W31 (32), the smallest other, goes with it.
    assert withheld == {"2026-W36", "2026-W31"}
    assert released == {f"2026-W{w}": 7 * HOURS_A_DAY for w in (32, 33, 34, 35)}
    one_day = dataclasses.replace(
        weekly,
        group_by=(),
        filters=(*in_district, Filter("observed_on", FilterOp.EQUALS, ("2026-W36",), "week")),
    )
    assert _outcomes(_ask(rf, one_day)) == [
        ("borealis", "refused", "PERMISSION_DENIED", "POPULATION_BELOW_K")
    ]
    # Under the first agreement (k = 10) another city answers the same shape of question.
    other = rf.fed.cities["aurora"].plan.districts[0]
    answer = _ask(
        rf,
        dataclasses.replace(
            one_day,
            filters=(
                Filter("district", FilterOp.EQUALS, (other,)),
                Filter("observed_on", FilterOp.EQUALS, ("2026-W36",), "week"),
            ),
            cities=("aurora",),
        ),
    )
    assert _outcomes(answer) == [("aurora", "answered", "OK", "")]
    assert [c.values["count_records"] for c in answer.cells] == [HOURS_A_DAY]


# ---- SQL injection through the broker ----------------------------------------------------------

INJECTIONS = [
    "mobility' OR '1'='1",
    "'; DROP TABLE mobility_trips; --",
    'x"); DELETE FROM consent_records; --',
    "mode) UNION SELECT resident_id FROM consent_scopes --",
    "1; UPDATE consent_scopes SET state='given'",
    "%' --",
    "bus\x00",
]
TABLES = (synthetic.trips, consent_records, consent_scopes, synthetic.traffic)


def _table_counts(rf: RunningFederation) -> dict[tuple[str, str], int]:
    counts = {}
    for city in rf.fed.cities:
        engine = _city_engine(rf, city)
        try:
            with engine.connect() as conn:
                for table in TABLES:
                    n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    counts[(city, table.name)] = int(n)
        finally:
            engine.dispose()
    return counts


def _by_mode(**overrides: Any) -> Query:
    fields: dict[str, Any] = {
        "dataset": "mobility",
        "purpose": PURPOSE,
        "measures": (Measure(MeasureKind.COUNT_RECORDS),),
        "group_by": (Dimension("mode"),),
    }
    fields.update(overrides)
    return Query(**fields)


# Where the string goes, and what every city must answer.
PLACES: dict[str, tuple[Any, str, str]] = {
    # Permission before existence: names outside the agreement are refused as not in it.
    "dataset": (lambda s: _by_mode(dataset=s), "PERMISSION_DENIED", "DATASET_NOT_IN_AGREEMENT"),
    "purpose": (lambda s: _by_mode(purpose=s), "INVALID_ARGUMENT", "PURPOSE_UNKNOWN"),
    "measure-field": (
        lambda s: _by_mode(measures=(Measure(MeasureKind.SUM, s),)),
        "PERMISSION_DENIED",
        "FIELD_NOT_IN_AGREEMENT",
    ),
    "group-field": (
        lambda s: _by_mode(group_by=(Dimension(s),)),
        "PERMISSION_DENIED",
        "FIELD_NOT_IN_AGREEMENT",
    ),
    "group-generalisation": (
        lambda s: _by_mode(group_by=(Dimension("trip_date", s),)),
        "PERMISSION_DENIED",
        "GENERALISATION_NOT_IN_AGREEMENT",
    ),
    "filter-field": (
        lambda s: _by_mode(filters=(Filter(s, FilterOp.EQUALS, ("bus",)),)),
        "PERMISSION_DENIED",
        "FILTER_NOT_IN_AGREEMENT",
    ),
    "filter-generalisation": (
        lambda s: _by_mode(filters=(Filter("trip_date", FilterOp.IN, ("2026-08",), s),)),
        "PERMISSION_DENIED",
        "FILTER_NOT_IN_AGREEMENT",
    ),
    # Values are data: they match no row, so the query's population is empty and refused.
    "filter-value": (
        lambda s: _by_mode(filters=(Filter("mode", FilterOp.IN, (s, "hovercraft")),)),
        "PERMISSION_DENIED",
        "POPULATION_BELOW_K",
    ),
    "generalised-filter-value": (
        lambda s: _by_mode(filters=(Filter("trip_date", FilterOp.EQUALS, (s,), "month"),)),
        "PERMISSION_DENIED",
        "POPULATION_BELOW_K",
    ),
    "traffic-filter-value": (
        lambda s: traffic(filters=(Filter("district", FilterOp.EQUALS, (s,)),)),
        "PERMISSION_DENIED",
        "POPULATION_BELOW_K",
    ),
}


@pytest.mark.parametrize("place", list(PLACES))
def test_injection_through_the_broker_is_refused_by_every_city(
    federation: RunningFederation, place: str
) -> None:
    make, code, reason = PLACES[place]
    before = _table_counts(federation)
    with federation.partner() as client:
        for s in INJECTIONS:
            answer = client.query(make(s))
            assert _outcomes(answer) == [(c, "refused", code, reason) for c in CITIES], s
            assert answer.cells == []
    assert _table_counts(federation) == before
    # The federation still answers.
    assert _outcomes(_ask(federation, _by_mode())) == [(c, "answered", "OK", "") for c in CITIES]


def test_injection_as_a_city_id_fails_the_call(federation: RunningFederation) -> None:
    before = _table_counts(federation)
    with federation.partner() as client:
        for s in INJECTIONS:
            with pytest.raises(CallFailed) as info:
                client.query(_by_mode(cities=(s,)))
            assert (info.value.error.code, info.value.error.reason) == (
                "INVALID_ARGUMENT",
                "CITY_UNKNOWN",
            )
            with pytest.raises(CallFailed) as info:
                client.query(_by_mode(cities=("aurora", s)))
            assert info.value.error.reason == "CITY_UNKNOWN"
    assert _table_counts(federation) == before


def test_injection_on_the_raw_wire(wire: Wire) -> None:
    """The same through a bare gRPC stub: no client-side checks in the way."""
    before = _table_counts(wire.rf)
    for s in INJECTIONS:
        pb = query_to_pb(_by_mode(filters=(Filter("mode", FilterOp.IN, (s,)),)))
        pb.group_by.add(field="district", generalisation=s)  # a second, injected dimension
        response = wire.broker().Query(
            broker_pb2.QueryRequest(query=pb), metadata=wire.bearer_for(pb), timeout=15
        )
        assert [(c.city_id, c.status, c.code, c.reason) for c in response.cities] == [
            (c, broker_pb2.CITY_STATUS_REFUSED, "INVALID_ARGUMENT", "GENERALISATION_UNKNOWN")
            for c in CITIES
        ]
        assert list(response.cells) == []
        raw = common_pb2.Query(
            dataset="mobility",
            purpose=PURPOSE,
            measures=[common_pb2.Measure(kind=common_pb2.MEASURE_KIND_COUNT_RECORDS)],
            filters=[
                common_pb2.Filter(
                    field="district", operator=common_pb2.FILTER_OPERATOR_EQUALS, values=[s]
                )
            ],
        )
        response = wire.broker().Query(
            broker_pb2.QueryRequest(query=raw), metadata=wire.bearer_for(raw), timeout=15
        )
        assert [(c.status, c.code, c.reason) for c in response.cities] == [
            (broker_pb2.CITY_STATUS_REFUSED, "PERMISSION_DENIED", "POPULATION_BELOW_K")
        ] * len(CITIES)
    assert _table_counts(wire.rf) == before


# ---- SQL injection straight at the node's policy and aggregation -------------------------------

CITY, PARTNER = "aurora", "northwind"
CATALOGUE = Catalogue.from_config(
    Section(
        {"mobility": synthetic.MOBILITY_CATALOGUE, "traffic": synthetic.TRAFFIC_CATALOGUE},
        Path("node.toml"),
        "datasets.",
    )
)
PROVIDER = policy.Provider(CITY, CATALOGUE)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    engine = storage.create_engine(f"sqlite:///{tmp_path_factory.mktemp('inj') / 'node.db'}")
    storage.upgrade(engine)
    people = synthetic.residents(CITY, ("North", "South"), 30, seed=5)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 3, date(2026, 8, 1), 30, seed=5))
    synthetic.load_traffic(
        engine, synthetic.traffic_rows(("North", "South"), 1, date(2026, 8, 1), 10, seed=5)
    )
    signer = Signer.generate()
    with MerkleLog(engine, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(engine, CITY, signer, log)
        now = timefmt.now()
        give_mobility_consents(registry, people, PARTNER, now)
    yield engine
    engine.dispose()


def _local_counts(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in TABLES
        ]


def _agreement() -> Agreement:
    """The demo federation's terms (cli.sandbox), between this city and partner."""
    now = timefmt.now()
    generalised = Appearance.GENERALISED
    return Agreement(
        agreement_id="a",
        version=1,
        provider=CITY,
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={
            "traffic": {
                "district": FieldTerms(Appearance.RAW),
                "observed_on": FieldTerms(generalised, frozenset({"week", "month"})),
                "vehicles": FieldTerms(Appearance.AGGREGATE_ONLY),
                "cyclists": FieldTerms(Appearance.AGGREGATE_ONLY),
            },
            "mobility": {
                "district": FieldTerms(Appearance.RAW),
                "mode": FieldTerms(Appearance.RAW),
                "trip_date": FieldTerms(generalised, frozenset({"month", "year"})),
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            },
        },
        min_cell_size=10,
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=1),
        retention_days=90,
    )


@pytest.mark.parametrize("place", list(PLACES))
def test_injection_straight_at_the_policy(place: str) -> None:
    make, code, reason = PLACES[place]
    for s in INJECTIONS:
        query = make(s).validate()
        if reason == "POPULATION_BELOW_K":
            # Values are not the policy's business: the query is permitted, and runs as data.
            assert policy.decide(query, PARTNER, [_agreement()], timefmt.now(), PROVIDER)
            continue
        with pytest.raises(CitybrokerError) as info:
            policy.decide(query, PARTNER, [_agreement()], timefmt.now(), PROVIDER)
        assert (info.value.code.value, info.value.reason) == (code, reason), s
    # Injected partner or city ids find no agreement, and learn nothing more.
    for s in INJECTIONS:
        for partner, city in ((s, CITY), (PARTNER, s)):
            with pytest.raises(PermissionDenied) as denied:
                policy.decide(
                    _by_mode(),
                    partner,
                    [_agreement()],
                    timefmt.now(),
                    policy.Provider(city, CATALOGUE),
                )
            assert denied.value.reason == "NO_AGREEMENT"


@pytest.mark.parametrize(
    "make",
    [
        lambda s: _by_mode(filters=(Filter("mode", FilterOp.EQUALS, (s,)),)),
        lambda s: _by_mode(filters=(Filter("district", FilterOp.IN, (s, s + "'")),)),
        lambda s: _by_mode(filters=(Filter("trip_date", FilterOp.IN, (s,), "week"),)),
        lambda s: _by_mode(filters=(Filter("distance_km", FilterOp.IN, (s,), "band10"),)),
        lambda s: _by_mode(purpose=s),
        lambda s: traffic(filters=(Filter("observed_on", FilterOp.IN, (s,), "month"),)),
    ],
    ids=["mode", "district", "week", "band", "purpose", "traffic-month"],
)
def test_injection_straight_at_the_aggregation(node: sa.Engine, make: Any) -> None:
    """QueryCompiler.run binds every value: nothing matches, so each query is refused as empty."""
    before = _local_counts(node)
    for s in INJECTIONS:
        query = make(s)
        ds = CATALOGUE.datasets[query.dataset]
        with node.connect() as conn, pytest.raises(PermissionDenied) as info:
            aggregate.QueryCompiler().run(
                conn, aggregate.Scan(query, ds, (PARTNER,), timefmt.now()), 1
            )
        assert info.value.reason == "POPULATION_BELOW_K", s
    assert _local_counts(node) == before


def test_injected_recipients_see_nobody(node: sa.Engine) -> None:
    before = _local_counts(node)
    for s in INJECTIONS:
        with node.connect() as conn, pytest.raises(PermissionDenied) as info:
            aggregate.QueryCompiler().run(
                conn,
                aggregate.Scan(_by_mode(), CATALOGUE.datasets["mobility"], (s,), timefmt.now()),
                1,
            )
        assert info.value.reason == "POPULATION_BELOW_K"
    assert _local_counts(node) == before


def test_observational_data_needs_no_consent_and_k_counts_records(tmp_path: Path) -> None:
    """Traffic counts in a database with no consent tables at all: the aggregation never looks
    for them, and k counts observations: one camera's day (16 of them) passes k = 16, not 17."""
    engine = storage.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
    try:
        synthetic.load_traffic(
            engine, synthetic.traffic_rows(("North",), 1, date(2026, 8, 1), 3, seed=1)
        )
        assert not sa.inspect(engine).has_table(consent_scopes.name)
        ds = CATALOGUE.datasets["traffic"]
        one_day = traffic(
            measures=(Measure(MeasureKind.COUNT_RECORDS),),
            group_by=(),
            filters=(Filter("observed_on", FilterOp.EQUALS, ("2026-08-02",), "day"),),
        )
        compiler = aggregate.QueryCompiler()
        with engine.connect() as conn:
            result = compiler.run(conn, aggregate.Scan(one_day, ds, (), timefmt.now()), HOURS_A_DAY)
            assert [c.values for c in result.cells] == [{"count_records": HOURS_A_DAY}]
            with pytest.raises(PermissionDenied) as info:
                compiler.run(conn, aggregate.Scan(one_day, ds, (), timefmt.now()), HOURS_A_DAY + 1)
            assert info.value.reason == "POPULATION_BELOW_K"
            # By day: three cells of 16; with k = 17 all are withheld, the total (48) is not under k.
            daily = dataclasses.replace(
                one_day, group_by=(Dimension("observed_on", "day"),), filters=()
            )
            result = compiler.run(
                conn, aggregate.Scan(daily, ds, (), timefmt.now()), HOURS_A_DAY + 1
            )
            assert result.cells == [] and len(result.withheld) == 3
            assert (
                aggregate.contributors(aggregate.Scan(daily, ds, (), timefmt.now()), "sqlite", [])
                is None
            )
    finally:
        engine.dispose()


def test_policy_refuses_counting_residents_of_observational_data() -> None:
    q = traffic(measures=(Measure(MeasureKind.COUNT_RESIDENTS),))
    with pytest.raises(CitybrokerError) as info:
        policy.decide(q, PARTNER, [_agreement()], timefmt.now(), PROVIDER)
    assert isinstance(info.value, InvalidArgument)
    assert info.value.reason == "MEASURE_INVALID"
