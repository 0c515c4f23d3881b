"""aggregate.QueryCompiler.run: withdrawal takes effect at once, and filter values are data, never SQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.log import MerkleLog
from domain.errors import InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra import storage
from infra.config import Section
from keys import timefmt
from keys.ed25519 import Signer
from node import aggregate, disclosure, synthetic
from node.catalogue import Catalogue
from node.consent import ConsentRegistry
from node.schema import consent_records
from tests.conftest import give_mobility_consents

CITY, PARTNER, PURPOSE = "aurora", "northwind", "urban-mobility-planning"
DATASET = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"))
).datasets["mobility"]
COUNTS = (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[sa.Engine, ConsentRegistry, list[str]]]:
    yield from _node(f"sqlite:///{tmp_path / 'node.db'}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_node(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[sa.Engine, ConsentRegistry, list[str]]]:
    if request.param == "sqlite":
        yield from _node(f"sqlite:///{tmp_path / 'node.db'}")
    else:
        yield from _node(str(request.getfixturevalue("postgres_url")))


def _node(url: str) -> Iterator[tuple[sa.Engine, ConsentRegistry, list[str]]]:
    engine = storage.create_engine(url)
    storage.upgrade(engine)
    people = synthetic.residents(CITY, ("North", "South"), 12, seed=3)
    synthetic.load_trips(engine, synthetic.trip_rows(people, 3, date(2026, 8, 1), 30, seed=3))
    signer = Signer.generate()
    with MerkleLog(engine, f"citybroker/node/{CITY}", signer) as log:
        registry = ConsentRegistry(engine, CITY, signer, log)
        now = timefmt.now()
        give_mobility_consents(registry, people, PARTNER, now)
        yield engine, registry, [p.resident_id for p in people]


def run(engine: sa.Engine, q: Query, k: int = 1) -> aggregate.AggregateResult:
    with engine.connect() as conn:
        return aggregate.QueryCompiler().run(
            conn, aggregate.Scan(q, DATASET, (PARTNER,), timefmt.now()), k
        )


def trips_of(engine: sa.Engine, resident: str) -> int:
    with engine.connect() as conn:
        stmt = (
            sa.select(sa.func.count())
            .select_from(synthetic.trips)
            .where(synthetic.trips.c.resident_id == resident)
        )
        return int(conn.execute(stmt).scalar_one())


def table_sizes(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            int(conn.execute(sa.select(sa.func.count()).select_from(synthetic.trips)).scalar_one()),
            int(conn.execute(sa.select(sa.func.count()).select_from(consent_records)).scalar_one()),
        )


def test_withdrawn_consent_leaves_the_next_answer(
    node: tuple[sa.Engine, ConsentRegistry, list[str]],
) -> None:
    engine, registry, people = node
    q = Query("mobility", PURPOSE, COUNTS)
    before = run(engine, q).cells[0].values
    assert before["count_residents"] == len(people)

    leaver = people[4]
    registry.withdraw(f"{leaver}-c", actor="resident")
    after = run(engine, q).cells[0].values

    assert after["count_residents"] == len(people) - 1
    assert after["count_records"] == before["count_records"] - trips_of(engine, leaver)


def test_withdrawal_is_per_resident_and_grouped_answers_follow(
    node: tuple[sa.Engine, ConsentRegistry, list[str]],
) -> None:
    engine, registry, people = node
    q = Query("mobility", PURPOSE, COUNTS, group_by=(Dimension("district"),))
    before = {c.key["district"]: c.values["count_residents"] for c in run(engine, q).cells}
    for p in people[:3]:
        registry.withdraw(f"{p}-c", actor="resident")
    after = {c.key["district"]: c.values["count_residents"] for c in run(engine, q).cells}
    assert sum(before.values()) - sum(after.values()) == 3


def test_small_cells_are_withheld_not_released(
    node: tuple[sa.Engine, ConsentRegistry, list[str]],
) -> None:
    engine, _, people = node
    q = Query("mobility", PURPOSE, COUNTS)
    assert run(engine, q, k=len(people)).cells
    # A whole population under k is not even answered with a withheld cell: it is refused.
    with pytest.raises(PermissionDenied) as info:
        run(engine, q, k=len(people) + 1)
    assert info.value.reason == "POPULATION_BELOW_K"
    # Grouped, the small district is withheld, and so is the other one: it could otherwise be
    # subtracted from the total (the ungrouped answer above).
    by_district = Query("mobility", PURPOSE, COUNTS, group_by=(Dimension("district"),))
    sizes = {c.key["district"]: c.values["count_residents"] for c in run(engine, by_district).cells}
    assert min(sizes.values()) < max(sizes.values())
    result = run(engine, by_district, k=int(min(sizes.values())) + 1)
    assert result.cells == []
    assert sorted(w["district"] for w in result.withheld) == sorted(sizes)


INJECTIONS = [
    "bus' OR '1'='1",
    'bus" OR "1"="1',
    "'; DROP TABLE mobility_trips; --",
    "x'); DELETE FROM consent_records; --",
    "bus' UNION SELECT resident_id FROM mobility_trips --",
    "%",
    "*",
    "bus\x00",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_sql_in_filter_values_is_just_a_string(
    node: tuple[sa.Engine, ConsentRegistry, list[str]], value: str
) -> None:
    engine, _, _ = node
    sizes = table_sizes(engine)
    for op, values in ((FilterOp.EQUALS, (value,)), (FilterOp.IN, (value, value + "'"))):
        q = Query(
            "mobility",
            PURPOSE,
            COUNTS,
            group_by=(Dimension("mode"),),
            filters=(Filter("mode", op, values),),
        )
        # The string matched no row (had it been SQL, it would have matched every row), so the
        # query's population is empty: refused, not answered.
        with pytest.raises(PermissionDenied) as info:
            run(engine, q)
        assert info.value.reason == "POPULATION_BELOW_K"
    assert table_sizes(engine) == sizes


def test_a_real_filter_value_still_matches(
    node: tuple[sa.Engine, ConsentRegistry, list[str]],
) -> None:
    engine, _, _ = node
    q = Query(
        "mobility",
        PURPOSE,
        COUNTS,
        group_by=(Dimension("mode"),),
        filters=(Filter("mode", FilterOp.EQUALS, ("bus",)),),
    )
    assert [c.key for c in run(engine, q).cells] == [{"mode": "bus"}]


def test_other_recipient_sees_nobody(node: tuple[sa.Engine, ConsentRegistry, list[str]]) -> None:
    engine, _, _ = node
    with engine.connect() as conn, pytest.raises(PermissionDenied) as info:
        aggregate.QueryCompiler().run(
            conn,
            aggregate.Scan(
                Query("mobility", PURPOSE, COUNTS), DATASET, ("other-partner",), timefmt.now()
            ),
            1,
        )
    assert info.value.reason == "POPULATION_BELOW_K"


def _bounded(engine: sa.Engine, q: Query, per_resident: int) -> aggregate.AggregateResult:
    bounds = (("distance_km", 0.0, 5.0),)
    with engine.connect() as conn:
        scan = aggregate.Scan(
            q, DATASET, (PARTNER,), timefmt.now(), bounds=bounds, per_resident=per_resident
        )
        return aggregate.QueryCompiler().run(conn, scan, 1)


def test_differential_privacy_counts_at_most_l_records_of_each_resident(
    any_node: tuple[sa.Engine, ConsentRegistry, list[str]],
) -> None:
    engine, _, people = any_node
    q = Query(
        "mobility",
        PURPOSE,
        (*COUNTS, Measure(MeasureKind.SUM, "distance_km")),
        group_by=(Dimension("mode"),),
    )
    trips = {p: trips_of(engine, p) for p in people}
    assert max(trips.values()) > 2  # so that a bound of 2 drops records
    for limit in (1, 2):
        answer = _bounded(engine, q, limit)
        assert not answer.withheld
        total = sum(int(c.values["count_records"]) for c in answer.cells)
        assert total == sum(min(n, limit) for n in trips.values())
        for c in answer.cells:
            assert c.values["sum(distance_km)"] <= 5.0 * c.values["count_records"]
            if limit == 1:  # one record per resident: one resident per record
                assert c.values["count_records"] == c.values["count_residents"]
    # A bound no resident reaches changes nothing but the clamp.
    unbounded = _bounded(engine, q, 0)
    assert _bounded(engine, q, max(trips.values())).cells == unbounded.cells


def test_an_answer_too_fine_to_protect_is_refused_with_a_reason(
    node: tuple[sa.Engine, ConsentRegistry, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _, _ = node
    monkeypatch.setattr(disclosure, "_LARGEST", 1)  # every table is past the audit's bound
    q = Query("mobility", PURPOSE, COUNTS, group_by=(Dimension("district"), Dimension("mode")))
    with pytest.raises(InvalidArgument) as e:
        run(engine, q, k=3)
    assert e.value.reason == "GROUP_BY_TOO_FINE"
    assert "group by fewer or coarser dimensions" in e.value.message
