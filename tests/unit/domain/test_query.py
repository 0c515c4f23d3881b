"""Query shape limits and the payload form brokers sign."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from domain import query as q
from domain.errors import CitybrokerError, InvalidArgument, TooLarge
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query

COUNT = Measure(MeasureKind.COUNT_RECORDS)


def base(**changes: Any) -> Query:
    return dataclasses.replace(Query("mobility", "urban-mobility-planning", (COUNT,)), **changes)


def reason(query: Query, error: type[CitybrokerError] = InvalidArgument) -> str:
    with pytest.raises(error) as e:
        query.validate()
    return e.value.reason


def test_a_plain_query_is_valid() -> None:
    query = base(
        measures=(COUNT, Measure(MeasureKind.AVG, "distance_km")),
        group_by=(Dimension("mode"), Dimension("trip_date", "month")),
        filters=(Filter("district", FilterOp.IN, ("Harbour", "Old Town")),),
        cities=("aurora",),
    )
    assert query.validate() is query


def test_too_many_measures() -> None:
    fields = [f"f{i}" for i in range(q.MAX_MEASURES + 1)]
    many = tuple(Measure(MeasureKind.SUM, f) for f in fields)
    assert reason(base(measures=many), TooLarge) == "QUERY_TOO_LARGE"
    assert base(measures=many[: q.MAX_MEASURES]).validate()


@pytest.mark.parametrize(
    "changes",
    [
        {"group_by": tuple(Dimension(f"g{i}") for i in range(q.MAX_GROUP_BY + 1))},
        {
            "filters": tuple(
                Filter(f"f{i}", FilterOp.EQUALS, ("x",)) for i in range(q.MAX_FILTERS + 1)
            )
        },
        {"cities": tuple(f"c{i}" for i in range(q.MAX_CITIES + 1))},
        {"dataset": "d" * (q.MAX_NAME_CHARS + 1)},
        {"measures": (Measure(MeasureKind.MIN, "x" * (q.MAX_NAME_CHARS + 1)),)},
    ],
)
def test_other_size_limits(changes: dict[str, Any]) -> None:
    assert reason(base(**changes), TooLarge) == "QUERY_TOO_LARGE"


def test_too_many_filter_values() -> None:
    values = tuple(str(i) for i in range(q.MAX_FILTER_VALUES + 1))
    assert reason(base(filters=(Filter("mode", FilterOp.IN, values),))) == "FILTER_INVALID"


def test_duplicate_measure() -> None:
    twice = (Measure(MeasureKind.SUM, "distance_km"), Measure(MeasureKind.SUM, "distance_km"))
    assert reason(base(measures=twice)) == "MEASURE_INVALID"
    # The same kind on different fields is fine.
    assert base(measures=(twice[0], Measure(MeasureKind.SUM, "age"))).validate()


@pytest.mark.parametrize(
    "kind", [MeasureKind.SUM, MeasureKind.AVG, MeasureKind.MIN, MeasureKind.MAX]
)
def test_measure_missing_its_field(kind: MeasureKind) -> None:
    assert reason(base(measures=(Measure(kind),))) == "MEASURE_INVALID"


def test_duplicate_dimension() -> None:
    dims = (Dimension("trip_date", "month"), Dimension("trip_date", "year"))
    assert reason(base(group_by=dims)) == "DIMENSION_INVALID"


def test_equals_takes_exactly_one_value() -> None:
    assert reason(base(filters=(Filter("mode", FilterOp.EQUALS, ("bus", "tram")),))) == (
        "FILTER_INVALID"
    )
    assert reason(base(filters=(Filter("mode", FilterOp.IN, ()),))) == "FILTER_INVALID"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"dataset": ""}, "DATASET_MISSING"),
        ({"purpose": ""}, "PURPOSE_MISSING"),
        ({"measures": ()}, "MEASURE_MISSING"),
    ],
)
def test_missing_parts(changes: dict[str, Any], why: str) -> None:
    assert reason(base(**changes)) == why


def test_payload_round_trip() -> None:
    query = base(
        measures=(COUNT, Measure(MeasureKind.MAX, "distance_km")),
        group_by=(Dimension("mode"),),
        filters=(Filter("district", FilterOp.EQUALS, ("Harbour",)),),
        cities=("aurora", "borealis"),
    )
    assert Query.from_payload(query.to_payload()) == query


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {
            "dataset": "d",
            "purpose": "p",
            "measures": [{"kind": "median", "field": "x"}],
            "group_by": [],
            "filters": [],
            "cities": [],
        },
        {
            "dataset": "d",
            "purpose": "p",
            "measures": "count",
            "group_by": [],
            "filters": [],
            "cities": [],
        },
        {
            "dataset": "d",
            "purpose": "p",
            "measures": [{"kind": "count_records", "field": ""}],
            "group_by": [],
            "filters": [{"field": "m", "op": "like", "values": ["x"]}],
            "cities": [],
        },
    ],
)
def test_from_payload_rejects_malformed(payload: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument) as e:
        Query.from_payload(payload)
    assert e.value.reason == "QUERY_MALFORMED"


def test_from_payload_validates() -> None:
    payload = base(filters=(Filter("mode", FilterOp.EQUALS, ("a", "b")),)).to_payload()
    with pytest.raises(InvalidArgument) as e:
        Query.from_payload(payload)
    assert e.value.reason == "FILTER_INVALID"
