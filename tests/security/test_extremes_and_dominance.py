"""Extremes, dominance and the cell_key regime, through the broker's partner API over real gRPC
(issue 12, "What broke" 2 and "What to build" 2-3).

- min/max of `distance_km`, which the demo agreement marks aggregate_only, released single trips'
  exact distances in cells of ten or more residents: now refused (EXTREMES_NOT_ALLOWED);
- a sum one resident dominates tells everybody roughly that resident's value: withheld;
- under `cell_key`, the same cell gets the same answer, and differencing two answers gives noise;
- bad disclosure terms proposed through the AgreementService: a clear error, nothing stored.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from citybroker.node.v1 import node_pb2
from domain import agreement as doc
from domain.agreement import CellKeyTerms, DisclosureTerms, Regime
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge.status import remote_error
from node import synthetic
from tests.conftest import PURPOSE, RunningFederation, start_federation, stop_federation
from tests.integration.conftest import Wire

CITIES = ["aurora", "borealis", "cascadia"]
TRIPS = Measure(MeasureKind.COUNT_RECORDS)
KM = Measure(MeasureKind.SUM, "distance_km")
MAX_PERTURBATION = 5


@pytest.fixture(scope="module")
def rf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFederation]:
    """This module's federation: the dominance test changes Aurora's data, the cell_key test
    Borealis's agreement; the extremes test only reads."""
    running = start_federation(tmp_path_factory.mktemp("extremes"), residents_per_city=120)
    yield running
    stop_federation(running)


@pytest.fixture
def wire(rf: RunningFederation) -> Iterator[Wire]:
    w = Wire(rf)
    yield w
    w.close()


def results(response: Any) -> dict[str, dict[str, Any]]:
    """Each answering city's signed result payload, by city."""
    return {
        c.city_id: json.loads(c.signed_result.payload)
        for c in response.cities
        if c.HasField("signed_result")
    }


def truth(rf: RunningFederation, city: str, where: str = "1 = 1") -> int:
    """Trips of `city`'s consenting residents matching `where`."""
    ids = [r.resident_id for r in rf.consenting[city]]
    sql = (
        f"SELECT count(*) FROM mobility_trips WHERE {where} "
        f"AND resident_id IN ({','.join('?' * len(ids))})"
    )
    with sqlite3.connect(str(rf.fed.cities[city].database)) as db:
        return int(db.execute(sql, ids).fetchone()[0])


@pytest.mark.parametrize("kind", [MeasureKind.MIN, MeasureKind.MAX])
def test_extremes_of_an_aggregate_only_field_are_refused(wire: Wire, kind: MeasureKind) -> None:
    extreme = Measure(kind, "distance_km")
    response = wire.query(Query("mobility", PURPOSE, (TRIPS, extreme), (Dimension("mode"),)))
    refusals = {(c.city_id, c.reason) for c in response.cities}
    assert refusals == {(city, "EXTREMES_NOT_ALLOWED") for city in CITIES}
    # No city released a trip's distance.
    assert results(response) == {}
    assert all(extreme.name not in c.values for c in response.cells)


def test_a_dominated_sum_is_withheld(rf: RunningFederation, wire: Wire) -> None:
    """One of Aurora's consenting residents makes a very long car trip: the car cell's kilometres
    would be mostly that resident's, so the cell is withheld (and another, so that the total
    cannot give it back), though it holds far more than k residents."""
    city = "aurora"
    resident = rf.consenting[city][0].resident_id
    with sqlite3.connect(str(rf.fed.cities[city].database)) as db:
        db.execute(
            "INSERT INTO mobility_trips (trip_id, resident_id, trip_date, mode, district, "
            "distance_km) VALUES (?, ?, '2026-08-03', 'car', 'Harbour', 40000.0)",
            (10_000_000, resident),
        )
    assert truth(rf, city, "mode = 'car'") > 10 * 4  # many residents' trips in the cell
    response = wire.query(
        Query("mobility", PURPOSE, (TRIPS, KM), (Dimension("mode"),), (), (city,))
    )
    (result,) = results(response).values()
    assert {"mode": "car"} in result["withheld"]
    released = {c["key"]["mode"]: c["values"] for c in result["cells"]}
    assert "car" not in released
    assert all(v[KM.name] < 40000 for v in released.values())
    assert len(result["withheld"]) >= 2  # secondary suppression protects it
    assert result["disclosure"]["dominance"] == {"n": 2, "percent": 85.0}


def _cell_key_agreement(rf: RunningFederation, city: str) -> None:
    """Version 2 of `city`'s agreement with the partner, under cell_key."""
    terms = dataclasses.replace(
        rf.fed.agreement(city, version=2),
        disclosure=DisclosureTerms(Regime.CELL_KEY, CellKeyTerms(MAX_PERTURBATION, 3)),
    )
    layout = rf.fed.cities[city]
    rf.operators[city].activate_agreement(doc.sign(terms, layout.signer, rf.fed.partner_signer))


def test_cell_key_same_cell_same_answer_and_differencing_returns_noise(
    rf: RunningFederation, wire: Wire
) -> None:
    city = "borealis"
    _cell_key_agreement(rf, city)
    districts = rf.fed.cities[city].plan.districts
    modes = synthetic.MODES

    def trips(*filters: Filter) -> tuple[int, dict[str, Any]]:
        response = wire.query(Query("mobility", PURPOSE, (TRIPS,), (), filters, (city,)))
        (result,) = results(response).values()
        (cell,) = result["cells"]
        return int(cell["values"][TRIPS.name]), result

    total, result = trips()
    assert result["disclosure"] == {
        "regime": "cell_key",
        "cell_key": {"max_perturbation": MAX_PERTURBATION, "small_cell_threshold": 3},
        "dominance": {"n": 2, "percent": 85.0},
    }
    assert abs(total - truth(rf, city)) <= MAX_PERTURBATION
    assert trips()[0] == total  # the same cell, the same answer
    # Differencing: the total minus everything but one district (or mode) should be that
    # district's trips; with independent perturbations it misses them, within the bound.
    misses = 0
    for field, values in (("district", districts), ("mode", modes)):
        for left_out in values:
            rest = tuple(v for v in values if v != left_out)
            derived = total - trips(Filter(field, FilterOp.IN, rest))[0]
            exact = truth(rf, city, f"{field} = '{left_out}'")
            assert abs(derived - exact) <= 2 * MAX_PERTURBATION
            misses += derived != exact
    assert misses > 0


@pytest.mark.parametrize(
    ("disclosure", "reason"),
    [
        ({"regime": "laplace"}, "DISCLOSURE_REGIME_UNKNOWN"),
        ({"regime": "cell_key", "cell_key": {"max_perturbation": 0}}, "CELL_KEY_TERMS_INVALID"),
        ({"regime": "cell_key", "cell_key": {"max_perturbation": 21}}, "CELL_KEY_TERMS_INVALID"),
        (
            {"regime": "cell_key", "cell_key": {"small_cell_threshold": "3"}},
            "CELL_KEY_TERMS_INVALID",
        ),
        ({"regime": "exact", "cell_key": {"max_perturbation": 2}}, "CELL_KEY_TERMS_INVALID"),
        ({"regime": "exact", "dominance": {"n": 0}}, "DOMINANCE_TERMS_INVALID"),
        ({"regime": "exact", "dominance": {"percent": 150}}, "DOMINANCE_TERMS_INVALID"),
        ({"regime": "dp"}, "DISCLOSURE_REGIME_MISMATCH"),
    ],
)
def test_bad_disclosure_terms_are_refused_and_nothing_is_stored(
    rf: RunningFederation, disclosure: dict[str, Any], reason: str
) -> None:
    city = "cascadia"
    stub = rf.operators[city].agreements
    before = stub.ListAgreements(node_pb2.ListAgreementsRequest(page_size=100), timeout=10)
    payload = dataclasses.replace(
        rf.fed.agreement(city), agreement_id=f"{city}--bad-terms"
    ).to_payload()
    payload["disclosure"] = disclosure
    with pytest.raises(grpc.RpcError) as info:
        stub.ProposeAgreement(
            node_pb2.ProposeAgreementRequest(terms_json=json.dumps(payload)), timeout=10
        )
    e = remote_error(info.value)
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", reason)
    after = stub.ListAgreements(node_pb2.ListAgreementsRequest(page_size=100), timeout=10)
    assert after == before
