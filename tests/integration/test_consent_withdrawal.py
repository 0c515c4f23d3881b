"""Withdrawing consent through the node's ConsentService changes the very next answer."""

from __future__ import annotations

import grpc
import pytest
import sqlalchemy as sa

from citybroker.node.v1 import node_pb2
from domain.query import Dimension, Measure, MeasureKind, Query
from edge.partner_client import Answer
from edge.status import remote_error
from infra import storage
from node import disclosure
from node.synthetic import trips
from tests.conftest import PURPOSE, RunningFederation

CITY = "borealis"
TOTALS = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RESIDENTS), Measure(MeasureKind.COUNT_RECORDS)),
    cities=(CITY,),
)


def _ask(rf: RunningFederation, query: Query) -> Answer:
    with rf.partner() as client:
        answer = client.query(query)
    assert [c.status for c in answer.cities] == ["answered"] * len(answer.cities)
    return answer


def _totals(rf: RunningFederation) -> tuple[float, float]:
    (cell,) = _ask(rf, TOTALS).cells
    return cell.values["count_residents"], cell.values["count_records"]


def _trips_of(rf: RunningFederation, resident_ids: set[str]) -> int:
    """Ask the city's own data (not through the federation) how many trips these residents made."""
    engine = storage.create_engine(f"sqlite:///{rf.fed.cities[CITY].database}")
    try:
        with engine.connect() as conn:
            stmt = sa.select(sa.func.count()).where(trips.c.resident_id.in_(resident_ids))
            return int(conn.execute(stmt).scalar_one())
    finally:
        engine.dispose()


def test_withdrawal_changes_the_next_answer(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    consenting = rf.consenting[CITY]
    residents_before, records_before = _totals(rf)
    assert residents_before == len(consenting)

    leaving = consenting[:15]
    for r in leaving:
        receipt = rf.operators[CITY].withdraw(f"{r.resident_id}-c1")
        assert receipt.payload
    residents_after, records_after = _totals(rf)
    assert residents_after == residents_before - len(leaving)
    assert records_after == records_before - _trips_of(rf, {r.resident_id for r in leaving})

    # The other cities are untouched.
    (everyone,) = _ask(rf, Query("mobility", PURPOSE, TOTALS.measures)).cells
    assert everyone.values["count_residents"] == sum(len(v) for v in rf.consenting.values()) - 15


def test_withdrawal_pushes_a_small_cell_under_k(fresh_federation: RunningFederation) -> None:
    rf = fresh_federation
    by_district = Query(
        "mobility",
        PURPOSE,
        (Measure(MeasureKind.COUNT_RESIDENTS),),
        group_by=(Dimension("district"),),
        cities=(CITY,),
    )
    before = {c.key["district"]: c for c in _ask(rf, by_district).cells}
    district = rf.fed.cities[CITY].plan.districts[0]
    assert not before[district].withheld
    stay = 3  # fewer than k = 10
    in_district = [r for r in rf.consenting[CITY] if r.district == district]
    for r in in_district[stay:]:
        rf.operators[CITY].withdraw(f"{r.resident_id}-c1")
    after = {c.key["district"]: c for c in _ask(rf, by_district).cells}
    assert after[district].withheld
    assert after[district].values == {}
    assert after[district].withholding == [CITY]
    # Secondary suppression: with one district alone withheld, the city total (a coarser query)
    # minus the others would give it away, so the smallest other district is withheld as well.
    keys = sorted(before)
    populations = [
        stay if d == district else int(before[d].values["count_residents"]) for d in keys
    ]
    k = 10  # the agreement's minimum cell size
    expected = {keys[i] for i in disclosure.suppress([(d,) for d in keys], populations, k)}
    smallest_other = min(
        (d for d in keys if d != district), key=lambda d: populations[keys.index(d)]
    )
    assert expected == {district, smallest_other}
    assert {d for d, c in after.items() if c.withheld} == expected
    for other, cell in before.items():
        if other not in expected:
            assert after[other].values == cell.values
        else:
            assert after[other].values == {} and after[other].withholding == [CITY]


def test_withdrawal_is_recorded_and_unknown_records_are_not_found(
    fresh_federation: RunningFederation,
) -> None:
    rf = fresh_federation
    r = rf.consenting[CITY][0]
    rf.operators[CITY].withdraw(f"{r.resident_id}-c1")
    record = (
        rf.operators[CITY]
        .consent.GetConsent(node_pb2.GetConsentRequest(record_id=f"{r.resident_id}-c1"), timeout=10)
        .record
    )
    assert record.state == "withdrawn"
    with pytest.raises(grpc.RpcError) as info:
        rf.operators[CITY].withdraw("nobody-c1")
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("NOT_FOUND", "CONSENT_NOT_FOUND")
    # Withdrawing twice is refused: the record is no longer active.
    with pytest.raises(grpc.RpcError) as info:
        rf.operators[CITY].withdraw(f"{r.resident_id}-c1")
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("FAILED_PRECONDITION", "CONSENT_NOT_ACTIVE")
