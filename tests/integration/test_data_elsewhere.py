"""A city's datasets in a database of their own: the consent filter is pushed to where the data
lives (a temporary table of consenting residents), on SQLite, DuckDB (the default data source,
opened read-only) and, for real, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.query import Dimension, Measure, MeasureKind, Query
from edge.partner_client import Answer
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation

BY_DISTRICT = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("district"),),
)
# Date generalisations compile to engine-specific SQL (DuckDB borrows PostgreSQL's to_char).
BY_MONTH = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RESIDENTS), Measure(MeasureKind.AVG, "distance_km")),
    group_by=(Dimension("trip_date", "month"),),
)
TRAFFIC_BY_WEEK = Query(
    "traffic",
    PURPOSE,
    (Measure(MeasureKind.SUM, "vehicles"),),
    group_by=(Dimension("district"), Dimension("observed_on", "week")),
)
QUERIES = (BY_DISTRICT, BY_MONTH, TRAFFIC_BY_WEEK)


@pytest.fixture(params=["sqlite", "duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def split(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningFederation]:
    url = {
        "sqlite": lambda: f"sqlite:///{tmp_path / 'warehouse.db'}",
        "duckdb": lambda: f"duckdb:///{tmp_path / 'warehouse.duckdb'}",
        "postgresql": lambda: str(request.getfixturevalue("postgres_url")),
    }[request.param]()
    rf = start_federation(tmp_path / "fed", residents_per_city=80, data_urls={"aurora": url})
    yield rf
    stop_federation(rf)


def test_answers_equal_those_of_data_beside_the_consents(
    split: RunningFederation, tmp_path: Path
) -> None:
    def aurora(answer: Answer) -> dict[tuple[str, ...], dict[str, float]]:
        return {tuple(c.key.values()): c.values for c in answer.cells if "aurora" in c.contributing}

    with split.partner() as client:
        answers = [aurora(client.query(q)) for q in QUERIES]
    assert all(answers), "the city with separate data answered nothing"
    same = start_federation(tmp_path / "same", residents_per_city=80)
    try:
        with same.partner() as client:
            assert answers == [aurora(client.query(q)) for q in QUERIES]
    finally:
        stop_federation(same)


def test_withdrawal_applies_to_data_elsewhere_and_transparency_is_recorded(
    split: RunningFederation,
) -> None:
    rf = split
    leaving = rf.consenting["aurora"][0]
    with rf.partner() as client:
        before = client.query(
            BY_DISTRICT,
        )
        rf.operators["aurora"].withdraw(f"{leaving.resident_id}-c1")
        after = client.query(BY_DISTRICT)

    def aurora(answer: Answer) -> dict[str, dict[str, float]]:
        return {c.key["district"]: c.values for c in answer.cells if c.contributing == ["aurora"]}

    # The leaver's district, one resident fewer, would give them away by subtraction: the
    # differencing guard withholds it (node.release_guard), so the withdrawal shows there; the
    # districts released both times are unchanged.
    assert leaving.district in aurora(before)
    assert leaving.district not in aurora(after)
    assert all(aurora(before)[d] == values for d, values in aurora(after).items())
    assert aurora(after), "districts the leaver is not in are still released"
    from citybroker.node.v1 import node_pb2

    released = {c.key["district"] for c in after.cells if c.contributing == ["aurora"]}
    stayed = next(r for r in rf.consenting["aurora"][1:] if r.district in released)
    listed = rf.operators["aurora"].consent.ListResidentExchanges(
        node_pb2.ListResidentExchangesRequest(resident_id=stayed.resident_id), timeout=10
    )
    assert len(listed.exchanges) == 2
    gone = rf.operators["aurora"].consent.ListResidentExchanges(
        node_pb2.ListResidentExchangesRequest(resident_id=leaving.resident_id), timeout=10
    )
    was_released = {c.key["district"] for c in before.cells if c.contributing == ["aurora"]}
    # The first query only, if their district was released then.
    assert len(gone.exchanges) == (1 if leaving.district in was_released else 0)
