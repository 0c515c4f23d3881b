"""Protobuf conversions at the gRPC edge."""

from __future__ import annotations

import pytest

from citybroker.common.v1 import common_pb2
from domain.errors import InvalidArgument
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge import wire
from keys import dsse
from keys.ed25519 import Signer

QUERY = Query(
    dataset="mobility",
    purpose="urban-mobility-planning",
    measures=(
        Measure(MeasureKind.COUNT_RECORDS),
        Measure(MeasureKind.COUNT_RESIDENTS),
        Measure(MeasureKind.SUM, "distance_km"),
        Measure(MeasureKind.AVG, "distance_km"),
        Measure(MeasureKind.MIN, "distance_km"),
        Measure(MeasureKind.MAX, "distance_km"),
    ),
    group_by=(Dimension("mode"), Dimension("trip_date", "month")),
    filters=(
        Filter("district", FilterOp.IN, ("Harbour", "Old Town")),
        Filter("mode", FilterOp.EQUALS, ("bus",)),
    ),
    cities=("aurora", "borealis"),
)


def test_query_round_trip_through_protobuf_bytes() -> None:
    data = wire.query_to_pb(QUERY).SerializeToString()
    assert wire.query_from_pb(common_pb2.Query.FromString(data)) == QUERY


def test_unspecified_measure_kind_is_refused() -> None:
    pb = wire.query_to_pb(QUERY)
    pb.measures[0].kind = common_pb2.MEASURE_KIND_UNSPECIFIED
    with pytest.raises(InvalidArgument) as e:
        wire.query_from_pb(pb)
    assert e.value.reason == "MEASURE_INVALID"


def test_unspecified_filter_operator_is_refused() -> None:
    pb = wire.query_to_pb(QUERY)
    pb.filters[0].operator = common_pb2.FILTER_OPERATOR_UNSPECIFIED
    with pytest.raises(InvalidArgument) as e:
        wire.query_from_pb(pb)
    assert e.value.reason == "OPERATOR_UNKNOWN"


def test_query_from_pb_validates() -> None:
    pb = wire.query_to_pb(QUERY)
    pb.ClearField("measures")
    with pytest.raises(InvalidArgument) as e:
        wire.query_from_pb(pb)
    assert e.value.reason == "MEASURE_MISSING"


def test_envelope_round_trip_keeps_the_exact_bytes() -> None:
    env = dsse.sign("result", {"a": 1}, Signer.generate(), Signer.generate())
    pb = common_pb2.Envelope.FromString(wire.envelope_to_pb(env).SerializeToString())
    assert wire.envelope_from_pb(pb) == env
