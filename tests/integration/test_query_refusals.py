"""Queries the cities refuse, each with a status code and ErrorInfo reason per city, and queries the
broker itself refuses before asking anyone."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from citybroker.broker.v1 import broker_pb2, broker_pb2_grpc
from citybroker.common.v1 import common_pb2
from domain import agreement as agreement_doc
from domain.agreement import Appearance, FieldTerms
from domain.errors import CallFailed
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge.partner_client import Answer
from edge.rpc import MAX_MESSAGE_BYTES
from edge.status import remote_error
from tests.conftest import PURPOSE, RunningFederation
from tests.integration.conftest import Wire, by_mode

CITIES = ["aurora", "borealis", "cascadia"]


def _ask(rf: RunningFederation, query: Query) -> Answer:
    with rf.partner() as client:
        return client.query(query)


def _outcomes(answer: Answer) -> list[tuple[str, str, str, str]]:
    return [(c.city, c.status, c.code, c.reason) for c in answer.cities]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (by_mode(purpose="crystal-ball-gazing"), "PURPOSE_UNKNOWN"),
        (by_mode(group_by=(Dimension("mode", "month"),)), "GENERALISATION_UNKNOWN"),
        (by_mode(measures=(Measure(MeasureKind.SUM, "mode"),)), "MEASURE_INVALID"),
    ],
    ids=["purpose", "generalisation", "non-numeric"],
)
def test_unknown_names_are_invalid_argument_in_every_city(
    federation: RunningFederation, query: Query, reason: str
) -> None:
    answer = _ask(federation, query)
    assert _outcomes(answer) == [(c, "refused", "INVALID_ARGUMENT", reason) for c in CITIES]
    assert answer.cells == []
    # Two signatures: the broker's query and its receipt; refusals carry no result.
    assert answer.signatures_verified == 2
    assert [c["status"] for c in answer.receipt["cities"]] == ["refused"] * 3


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (by_mode(dataset="parking"), "DATASET_NOT_IN_AGREEMENT"),
        (by_mode(group_by=(Dimension("income"),)), "FIELD_NOT_IN_AGREEMENT"),
        (by_mode(measures=(Measure(MeasureKind.SUM, "fare_eur"),)), "FIELD_NOT_IN_AGREEMENT"),
    ],
    ids=["dataset", "group-field", "measure-field"],
)
def test_unknown_names_outside_the_agreement_are_not_in_it(
    federation: RunningFederation, query: Query, reason: str
) -> None:
    """Permission before existence: a name the city does not have is refused as one it has but
    does not share (tests/security/test_existence_oracle.py)."""
    answer = _ask(federation, query)
    assert _outcomes(answer) == [(c, "refused", "PERMISSION_DENIED", reason) for c in CITIES]
    assert answer.cells == []


def test_purpose_not_in_agreement(federation: RunningFederation) -> None:
    answer = _ask(federation, by_mode(purpose="direct-marketing"))
    assert _outcomes(answer) == [
        (c, "refused", "PERMISSION_DENIED", "PURPOSE_NOT_IN_AGREEMENT") for c in CITIES
    ]
    assert all("direct-marketing" in c.message for c in answer.cities)


def test_field_only_aggregated_cannot_be_grouped(federation: RunningFederation) -> None:
    answer = _ask(federation, by_mode(group_by=(Dimension("distance_km", "band5"),)))
    assert _outcomes(answer) == [
        (c, "refused", "PERMISSION_DENIED", "FIELD_AGGREGATE_ONLY") for c in CITIES
    ]


def test_generalisation_not_in_agreement(federation: RunningFederation) -> None:
    answer = _ask(federation, by_mode(group_by=(Dimension("trip_date", "day"),)))
    assert _outcomes(answer) == [
        (c, "refused", "PERMISSION_DENIED", "GENERALISATION_NOT_IN_AGREEMENT") for c in CITIES
    ]


def test_field_not_in_agreement(fresh_federation: RunningFederation) -> None:
    """Aurora replaces its agreement with a version that leaves `district` out."""
    rf = fresh_federation
    layout = rf.fed.cities["aurora"]
    v1 = rf.fed.agreement("aurora")
    v2 = dataclasses.replace(
        rf.fed.agreement("aurora", version=2),
        datasets={
            "mobility": {f: t for f, t in v1.datasets["mobility"].items() if f != "district"}
        },
    )
    rf.operators["aurora"].activate_agreement(
        agreement_doc.sign(v2, layout.signer, rf.fed.partner_signer)
    )
    by_district = by_mode(group_by=(Dimension("district"),))
    answer = _ask(rf, by_district)
    assert _outcomes(answer) == [
        ("aurora", "refused", "PERMISSION_DENIED", "FIELD_NOT_IN_AGREEMENT"),
        ("borealis", "answered", "OK", ""),
        ("cascadia", "answered", "OK", ""),
    ]
    assert answer.signatures_verified == 4
    assert all("aurora" not in c.contributing for c in answer.cells)
    # Filtering on the field is refused as well; the fields still agreed keep working.
    filtered = by_mode(
        filters=(Filter("district", FilterOp.EQUALS, ("Harbour",)),), cities=("aurora",)
    )
    assert _outcomes(_ask(rf, filtered)) == [
        ("aurora", "refused", "PERMISSION_DENIED", "FILTER_NOT_IN_AGREEMENT")
    ]
    assert _outcomes(_ask(rf, by_mode(cities=("aurora",)))) == [("aurora", "answered", "OK", "")]
    v3 = dataclasses.replace(
        rf.fed.agreement("aurora", version=3),
        datasets={"mobility": {"mode": FieldTerms(Appearance.RAW)}},
    )
    rf.operators["aurora"].activate_agreement(
        agreement_doc.sign(v3, layout.signer, rf.fed.partner_signer)
    )
    sums = by_mode(measures=(Measure(MeasureKind.SUM, "distance_km"),), cities=("aurora",))
    assert _outcomes(_ask(rf, sums)) == [
        ("aurora", "refused", "PERMISSION_DENIED", "FIELD_NOT_IN_AGREEMENT")
    ]


def test_unknown_city_fails_the_whole_call(federation: RunningFederation) -> None:
    with pytest.raises(CallFailed) as info:
        _ask(federation, by_mode(cities=("aurora", "atlantis")))
    assert (info.value.error.code, info.value.error.reason) == ("INVALID_ARGUMENT", "CITY_UNKNOWN")
    assert "atlantis" in info.value.error.message


def test_a_partner_is_not_a_city(federation: RunningFederation) -> None:
    with pytest.raises(CallFailed) as info:
        _ask(federation, by_mode(cities=(federation.fed.partner_id,)))
    assert (info.value.error.code, info.value.error.reason) == ("INVALID_ARGUMENT", "CITY_UNKNOWN")


def _raw_query(wire: Wire, query: common_pb2.Query) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        wire.broker().Query(
            broker_pb2.QueryRequest(query=query), metadata=wire.bearer_for(query), timeout=15
        )
    return info.value


def test_a_thousand_measures_is_too_large(wire: Wire) -> None:
    q = common_pb2.Query(
        dataset="mobility",
        purpose=PURPOSE,
        measures=[
            common_pb2.Measure(kind=common_pb2.MEASURE_KIND_SUM, field=f"f{i}") for i in range(1000)
        ],
    )
    e = remote_error(_raw_query(wire, q))
    assert (e.code, e.reason) == ("RESOURCE_EXHAUSTED", "QUERY_TOO_LARGE")


def test_overlong_names_are_too_large(wire: Wire) -> None:
    q = common_pb2.Query(
        dataset="m" * 10_000,
        purpose=PURPOSE,
        measures=[common_pb2.Measure(kind=common_pb2.MEASURE_KIND_COUNT_RECORDS)],
    )
    e = remote_error(_raw_query(wire, q))
    assert (e.code, e.reason) == ("RESOURCE_EXHAUSTED", "QUERY_TOO_LARGE")


def test_a_message_over_4_mib_is_refused(wire: Wire) -> None:
    q = common_pb2.Query(
        dataset="mobility",
        purpose=PURPOSE,
        measures=[common_pb2.Measure(kind=common_pb2.MEASURE_KIND_COUNT_RECORDS)],
        filters=[
            common_pb2.Filter(
                field="mode",
                operator=common_pb2.FILTER_OPERATOR_IN,
                values=["x" * (MAX_MESSAGE_BYTES + 1024)],
            )
        ],
    )
    # The client's own channel would refuse to send it; use one that lets it go out.
    channel = grpc.secure_channel(
        wire.fed.broker_address,
        wire.credentials(None),
        options=[("grpc.max_send_message_length", -1)],
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            broker_pb2_grpc.BrokerServiceStub(channel).Query(
                broker_pb2.QueryRequest(query=q), metadata=wire.bearer_for(q), timeout=30
            )
    finally:
        channel.close()
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The server keeps serving.
    assert [c.status for c in wire.query().cities] == [broker_pb2.CITY_STATUS_ANSWERED] * 3


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            common_pb2.Query(purpose=PURPOSE, measures=[common_pb2.Measure(kind=1)]),
            "DATASET_MISSING",
        ),
        (
            common_pb2.Query(dataset="mobility", measures=[common_pb2.Measure(kind=1)]),
            "PURPOSE_MISSING",
        ),
        (common_pb2.Query(dataset="mobility", purpose=PURPOSE), "MEASURE_MISSING"),
        (
            common_pb2.Query(
                dataset="mobility", purpose=PURPOSE, measures=[common_pb2.Measure(kind=0)]
            ),
            "MEASURE_INVALID",
        ),
        (
            common_pb2.Query(
                dataset="mobility", purpose=PURPOSE, measures=[common_pb2.Measure(kind=99)]
            ),
            "MEASURE_INVALID",
        ),
        (
            common_pb2.Query(
                dataset="mobility",
                purpose=PURPOSE,
                measures=[common_pb2.Measure(kind=common_pb2.MEASURE_KIND_SUM)],
            ),
            "MEASURE_INVALID",
        ),
        (
            common_pb2.Query(
                dataset="mobility",
                purpose=PURPOSE,
                measures=[common_pb2.Measure(kind=1)],
                filters=[common_pb2.Filter(field="mode", operator=0, values=["bus"])],
            ),
            "OPERATOR_UNKNOWN",
        ),
        (
            common_pb2.Query(
                dataset="mobility",
                purpose=PURPOSE,
                measures=[common_pb2.Measure(kind=1)],
                filters=[common_pb2.Filter(field="mode", operator=1, values=[])],
            ),
            "FILTER_INVALID",
        ),
    ],
    ids=[
        "no-dataset",
        "no-purpose",
        "no-measure",
        "measure-unspecified",
        "measure-unknown",
        "sum-without-field",
        "operator-unspecified",
        "filter-without-values",
    ],
)
def test_malformed_queries_are_invalid_argument(
    wire: Wire, query: common_pb2.Query, reason: str
) -> None:
    e = remote_error(_raw_query(wire, query))
    assert (e.code, e.reason) == ("INVALID_ARGUMENT", reason)
