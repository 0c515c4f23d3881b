"""A city's datasets in a database of their own: the consent filter is pushed to where the data
lives (a temporary table of consenting residents), on SQLite and, for real, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.query import Dimension, Measure, MeasureKind, Query
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation

BY_DISTRICT = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS), Measure(MeasureKind.COUNT_RESIDENTS)),
    group_by=(Dimension("district"),),
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def split(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningFederation]:
    url = (
        f"sqlite:///{tmp_path / 'warehouse.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    rf = start_federation(tmp_path / "fed", residents_per_city=80, data_urls={"aurora": url})
    yield rf
    stop_federation(rf)


def test_answers_equal_those_of_data_beside_the_consents(
    split: RunningFederation, tmp_path: Path
) -> None:
    with split.partner() as client:
        answer = client.query(BY_DISTRICT)
    aurora = {c.key["district"]: c.values for c in answer.cells if "aurora" in c.contributing}
    assert aurora, "the city with separate data answered nothing"
    same = start_federation(tmp_path / "same", residents_per_city=80)
    try:
        with same.partner() as client:
            expected = client.query(BY_DISTRICT)
    finally:
        stop_federation(same)
    assert aurora == {
        c.key["district"]: c.values for c in expected.cells if "aurora" in c.contributing
    }


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

    def residents(answer: object) -> int:
        return int(
            sum(
                c.values.get("count_residents", 0)
                for c in answer.cells  # type: ignore[attr-defined]
                if "aurora" in c.contributing
            )
        )

    assert residents(after) == residents(before) - 1
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
