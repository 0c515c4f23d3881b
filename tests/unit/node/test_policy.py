"""policy.decide: each refusal reason, and permission before existence."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import CitybrokerError, InvalidArgument, PermissionDenied
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from infra.config import Section
from keys import timefmt
from node import policy, synthetic
from node.catalogue import Catalogue

NOW = timefmt.now()
CITY, PARTNER = "aurora", "northwind"
PURPOSE = "urban-mobility-planning"
CATALOGUE = Catalogue.from_config(
    Section({"mobility": synthetic.MOBILITY_CATALOGUE}, Path("node.toml"), "datasets.")
)
COUNT = Measure(MeasureKind.COUNT_RECORDS)


def agreement(**changes: Any) -> Agreement:
    a = Agreement(
        agreement_id="a1",
        version=1,
        provider=CITY,
        consumer=PARTNER,
        purposes=frozenset({PURPOSE}),
        datasets={
            "mobility": {
                "mode": FieldTerms(Appearance.RAW),
                "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"month"})),
                "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
            }
        },
        min_cell_size=5,
        valid_from=NOW - timedelta(days=1),
        valid_until=NOW + timedelta(days=1),
        retention_days=30,
    )
    return dataclasses.replace(a, **changes)


def query(**changes: Any) -> Query:
    return dataclasses.replace(Query("mobility", PURPOSE, (COUNT,)), **changes)


def decide(q: Query, *agreements: Agreement, partner: str = PARTNER) -> policy.Permit:
    return policy.decide(q, partner, agreements, NOW, policy.Provider(CITY, CATALOGUE))


def refusal(q: Query, *agreements: Agreement, partner: str = PARTNER) -> CitybrokerError:
    with pytest.raises(CitybrokerError) as e:
        decide(q, *agreements, partner=partner)
    return e.value


def test_catalogue_from_the_synthetic_config() -> None:
    fields = CATALOGUE.datasets["mobility"].fields
    assert set(fields) == {"trip_date", "mode", "district", "distance_km"}
    assert fields["trip_date"].generalisations == frozenset({"day", "week", "month", "year"})


def test_permitted_query() -> None:
    q = query(
        measures=(COUNT, Measure(MeasureKind.AVG, "distance_km")),
        group_by=(Dimension("mode"), Dimension("trip_date", "month")),
        filters=(Filter("mode", FilterOp.IN, ("bus", "tram")),),
    )
    assert decide(q, agreement()).agreement == agreement()


def test_raw_field_may_also_be_generalised() -> None:
    a = agreement(datasets={"mobility": {"trip_date": FieldTerms(Appearance.RAW)}})
    assert decide(query(group_by=(Dimension("trip_date", "year"),)), a)


def test_no_agreement_comes_before_anything_else() -> None:
    nonsense = query(dataset="nope", purpose="nope", group_by=(Dimension("nope", "x"),))
    for agreements in [
        (),
        (agreement(consumer="someone-else"),),
        (agreement(provider="borealis"),),
    ]:
        e = refusal(nonsense, *agreements)
        assert isinstance(e, PermissionDenied)
        assert e.reason == "NO_AGREEMENT"
        assert "nope" not in e.message


def test_expired_or_future_agreement_is_not_used() -> None:
    expired = agreement(valid_from=NOW - timedelta(days=10), valid_until=NOW)
    future = agreement(valid_from=NOW + timedelta(seconds=1), valid_until=NOW + timedelta(days=9))
    assert refusal(query(), expired, future).reason == "NO_AGREEMENT"
    assert decide(query(), expired, agreement(agreement_id="a2")).agreement.agreement_id == "a2"


@pytest.mark.parametrize(
    ("q", "why"),
    [
        (query(purpose="world-domination"), "PURPOSE_UNKNOWN"),
        (query(measures=(Measure(MeasureKind.SUM, "mode"),)), "MEASURE_INVALID"),
        (query(group_by=(Dimension("mode", "month"),)), "GENERALISATION_UNKNOWN"),
        (
            query(filters=(Filter("mode", FilterOp.EQUALS, ("2026-08",), "month"),)),
            "GENERALISATION_UNKNOWN",
        ),
    ],
)
def test_catalogue_refusals(q: Query, why: str) -> None:
    e = refusal(q, agreement())
    assert isinstance(e, InvalidArgument)
    assert e.reason == why


@pytest.mark.parametrize(
    ("q", "why"),
    [
        (query(purpose="direct-marketing"), "PURPOSE_NOT_IN_AGREEMENT"),
        (query(group_by=(Dimension("district"),)), "FIELD_NOT_IN_AGREEMENT"),
        (
            query(filters=(Filter("district", FilterOp.EQUALS, ("Harbour",)),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (query(group_by=(Dimension("distance_km", "band5"),)), "FIELD_AGGREGATE_ONLY"),
        (query(group_by=(Dimension("trip_date", "day"),)), "GENERALISATION_NOT_IN_AGREEMENT"),
        # Permission before existence: what lies outside the agreement is refused the same way
        # whether the catalogue has it (district, day) or not (health, income, fortnight).
        (query(dataset="health"), "DATASET_NOT_IN_AGREEMENT"),
        (query(measures=(Measure(MeasureKind.SUM, "income"),)), "FIELD_NOT_IN_AGREEMENT"),
        (query(group_by=(Dimension("income"),)), "FIELD_NOT_IN_AGREEMENT"),
        (
            query(filters=(Filter("income", FilterOp.EQUALS, ("1",)),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (query(group_by=(Dimension("trip_date"),)), "GENERALISATION_NOT_IN_AGREEMENT"),
        (
            query(group_by=(Dimension("trip_date", "fortnight"),)),
            "GENERALISATION_NOT_IN_AGREEMENT",
        ),
        (
            query(filters=(Filter("trip_date", FilterOp.EQUALS, ("2026-08-01",)),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (
            query(filters=(Filter("distance_km", FilterOp.EQUALS, ("3.0",)),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (
            query(filters=(Filter("trip_date", FilterOp.EQUALS, ("2026-08-01",), "day"),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
        (
            query(filters=(Filter("distance_km", FilterOp.EQUALS, ("0-4",), "band5"),)),
            "FILTER_NOT_IN_AGREEMENT",
        ),
    ],
)
def test_agreement_refusals(q: Query, why: str) -> None:
    e = refusal(q, agreement())
    assert isinstance(e, PermissionDenied)
    assert e.reason == why


def test_refusals_name_only_what_the_agreement_offers() -> None:
    raw_date = query(filters=(Filter("trip_date", FilterOp.EQUALS, ("2026-08-01",)),))
    for q in (raw_date, query(group_by=(Dimension("trip_date", "day"),))):
        message = refusal(q, agreement()).message
        assert "month" in message
        assert not any(g in message for g in ("week", "year", "band"))
    raw_number = query(filters=(Filter("distance_km", FilterOp.EQUALS, ("3.0",)),))
    assert "band" not in refusal(raw_number, agreement()).message


def test_aggregate_only_field_may_be_measured() -> None:
    for kind in (MeasureKind.SUM, MeasureKind.AVG):
        assert decide(query(measures=(Measure(kind, "distance_km"),)), agreement())


@pytest.mark.parametrize("kind", [MeasureKind.MIN, MeasureKind.MAX])
def test_extremes_only_where_the_agreement_allows_them(kind: MeasureKind) -> None:
    extreme = query(measures=(Measure(kind, "distance_km"),))
    # aggregate_only never releases one resident's value, whatever else the terms say.
    for terms in (
        FieldTerms(Appearance.AGGREGATE_ONLY),
        FieldTerms(Appearance.AGGREGATE_ONLY, extremes=True),
        FieldTerms(Appearance.GENERALISED, frozenset({"band5"})),
        FieldTerms(Appearance.RAW),
    ):
        a = agreement(datasets={"mobility": {"distance_km": terms}})
        e = refusal(extreme, a)
        assert (e.reason, e.metadata["field"]) == ("EXTREMES_NOT_ALLOWED", "distance_km")
    allowed = FieldTerms(Appearance.GENERALISED, frozenset({"band5"}), extremes=True)
    assert decide(extreme, agreement(datasets={"mobility": {"distance_km": allowed}}))


def test_measure_on_field_outside_the_agreement() -> None:
    a = agreement(datasets={"mobility": {"mode": FieldTerms(Appearance.RAW)}})
    e = refusal(query(measures=(Measure(MeasureKind.SUM, "distance_km"),)), a)
    assert e.reason == "FIELD_NOT_IN_AGREEMENT"


def test_dataset_not_in_agreement() -> None:
    a = agreement(datasets={"other": {"mode": FieldTerms(Appearance.RAW)}})
    assert refusal(query(), a).reason == "DATASET_NOT_IN_AGREEMENT"


def test_any_covering_agreement_permits() -> None:
    narrow = agreement(agreement_id="a1")
    wide = agreement(
        agreement_id="a2", datasets={"mobility": {"district": FieldTerms(Appearance.RAW)}}
    )
    q = query(group_by=(Dimension("district"),))
    assert decide(q, narrow, wide).agreement.agreement_id == "a2"


def test_a_superseded_version_never_authorises() -> None:
    wide = agreement(version=1, datasets={"mobility": {"district": FieldTerms(Appearance.RAW)}})
    narrowed = agreement(version=2, datasets={"mobility": {"mode": FieldTerms(Appearance.RAW)}})
    by_district = query(group_by=(Dimension("district"),))
    assert decide(by_district, wide)
    assert refusal(by_district, wide, narrowed).reason == "FIELD_NOT_IN_AGREEMENT"
    assert decide(query(group_by=(Dimension("mode"),)), narrowed, wide).agreement.version == 2


def test_a_newer_version_not_yet_in_force_still_supersedes() -> None:
    """As in the register, activating version 2 retires version 1 at once."""
    current = agreement(version=1)
    upcoming = agreement(
        version=2, valid_from=NOW + timedelta(days=1), valid_until=NOW + timedelta(days=9)
    )
    assert refusal(query(), current, upcoming).reason == "NO_AGREEMENT"
