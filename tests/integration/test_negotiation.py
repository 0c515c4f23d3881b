"""Cities' agreements differ; the broker negotiates the finest shape they all allow."""

from __future__ import annotations

import dataclasses

from domain import agreement as agreement_doc
from domain.agreement import Appearance, FieldTerms
from domain.query import Dimension, Measure, MeasureKind, Query
from tests.conftest import PURPOSE, RunningFederation

BY_MONTH = Query(
    "mobility",
    PURPOSE,
    (Measure(MeasureKind.COUNT_RECORDS),),
    group_by=(Dimension("trip_date", "month"),),
)


def _aurora_allows_years_only(rf: RunningFederation) -> None:
    fed = rf.fed
    base = fed.agreement("aurora", version=2)
    mobility = {
        **base.datasets["mobility"],
        "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"year"})),
    }
    terms = dataclasses.replace(base, datasets={**base.datasets, "mobility": mobility})
    rf.operators["aurora"].activate_agreement(
        agreement_doc.sign(terms, fed.cities["aurora"].signer, fed.partner_signer)
    )


def test_without_negotiation_the_stricter_city_refuses(fresh_federation: RunningFederation) -> None:
    _aurora_allows_years_only(fresh_federation)
    with fresh_federation.partner() as client:
        answer = client.query(BY_MONTH)
    status = {c.city: (c.status, c.reason) for c in answer.cities}
    assert status["aurora"] == ("refused", "GENERALISATION_NOT_IN_AGREEMENT")
    assert status["borealis"] == ("answered", "")


def test_negotiation_coarsens_to_what_every_city_allows(
    fresh_federation: RunningFederation,
) -> None:
    _aurora_allows_years_only(fresh_federation)
    with fresh_federation.partner() as client:
        answer = client.query(BY_MONTH, negotiate=True)
    assert [c.status for c in answer.cities] == ["answered"] * 3
    assert answer.answered_query is not None
    assert answer.answered_query.group_by == (Dimension("trip_date", "year"),)
    assert any("trip_date: month -> year" in note for note in answer.negotiation)
    assert {c.key["trip_date"] for c in answer.cells} == {"2026"}
    assert answer.cells[0].contributing == ["aurora", "borealis", "cascadia"]


def test_plan_is_a_dry_run_with_each_citys_terms(fresh_federation: RunningFederation) -> None:
    _aurora_allows_years_only(fresh_federation)
    size_before = fresh_federation.nodes["aurora"].log.size()
    with fresh_federation.partner() as client:
        plan = client.plan(BY_MONTH)
    plans = {c.city: c.plan for c in plan.cities}
    assert plans["aurora"].allowed is False
    assert plans["aurora"].reason == "GENERALISATION_NOT_IN_AGREEMENT"
    assert plans["borealis"].allowed is True and plans["borealis"].min_cell_size == 10
    assert [d.generalisation for d in plan.negotiated.group_by] == ["year"]
    assert plan.notes
    assert fresh_federation.nodes["aurora"].log.size() == size_before  # nothing released
