"""Protobuf conversions at the gRPC edge."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2
from domain.agreement import Agreement, Appearance, DpTerms, FieldTerms
from domain.errors import InvalidArgument
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query
from edge import wire
from keys import dsse, timefmt
from keys.ed25519 import Signer
from node.consent import ConsentEvent, ConsentRecord
from node.consent_lifecycle import Event, State
from node.transparency import Exchange

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


# ---- node ------------------------------------------------------------------------------------

NOW = timefmt.parse(timefmt.fmt(timefmt.now()))  # whole seconds, as the wire carries them

TERMS = Agreement(
    agreement_id="aurora--northwind",
    version=2,
    provider="aurora",
    consumer="northwind",
    purposes=frozenset({"urban-mobility-planning"}),
    datasets={
        "mobility": {
            "district": FieldTerms(Appearance.RAW),
            "trip_date": FieldTerms(Appearance.GENERALISED, frozenset({"month", "year"})),
            "distance_km": FieldTerms(Appearance.AGGREGATE_ONLY),
        }
    },
    min_cell_size=10,
    valid_from=NOW,
    valid_until=NOW + timedelta(days=30),
    retention_days=90,
    legal_instruments=frozenset({"scc-2021"}),
    dp=DpTerms(0.5, 5.0, {"distance_km": (0.0, 100.0)}, 1),
)

RECORD = ConsentRecord(
    record_id="r-1",
    resident_id="res-1",
    purposes=("urban-mobility-planning", "research"),
    recipients=("northwind",),
    data_categories=("mobility",),
    valid_from=NOW,
    valid_until=NOW + timedelta(days=365),
    lawful_basis="consent",
    notice_url="https://aurora.example/notice",
    notice_hash="sha256:00",
    language="fi",
    jurisdiction="EU-FI",
    retention_days=30,
    collection_method="portal",
    withdrawal_method="portal",
)


def test_agreement_terms_round_trip_through_terms_json() -> None:
    assert wire.agreement_terms_from_json(wire.agreement_terms_to_json(TERMS)) == TERMS


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "AGREEMENT_MALFORMED"),
        ("[1, 2]", "AGREEMENT_MALFORMED"),
        (json.dumps({**TERMS.to_payload(), "min_cell_size": 0}), None),
    ],
)
def test_bad_agreement_terms_are_invalid_argument(text: str, reason: str | None) -> None:
    with pytest.raises(InvalidArgument) as e:
        wire.agreement_terms_from_json(text)
    if reason is not None:  # otherwise the agreement's own check names it
        assert e.value.reason == reason


def test_consent_record_round_trip_through_protobuf_bytes() -> None:
    data = wire.consent_record_to_pb(RECORD).SerializeToString()
    assert wire.consent_record_from_pb(node_pb2.ConsentRecord.FromString(data)) == RECORD


def test_a_callers_record_gets_defaults_and_never_its_own_state() -> None:
    pb = node_pb2.ConsentRecord(record_id="r-2", resident_id="res-2", state="withdrawn")
    record = wire.consent_record_from_pb(pb)
    assert (record.state, record.lawful_basis, record.language) == (State.GIVEN, "consent", "en")
    assert record.valid_until is None
    assert abs(record.valid_from - timefmt.now()) < timedelta(minutes=1)


def test_a_bad_timestamp_names_its_field() -> None:
    with pytest.raises(InvalidArgument) as e:
        wire.consent_record_from_pb(node_pb2.ConsentRecord(record_id="r", valid_until="soon"))
    assert (e.value.reason, e.value.metadata.get("field")) == ("TIMESTAMP_INVALID", "valid_until")


def test_consent_event_carries_its_receipt_bytes() -> None:
    receipt = dsse.sign("consent", {"record_id": "r-1"}, Signer.generate())
    pb = wire.consent_event_to_pb(ConsentEvent(Event.WITHDRAW, "resident", NOW, receipt.to_json()))
    assert (pb.event, pb.actor, timefmt.parse(pb.at)) == ("withdrawn", "resident", NOW)
    assert wire.envelope_from_pb(pb.receipt) == receipt


def test_resident_exchange_to_pb() -> None:
    e = Exchange("q-1", "northwind", "research", "mobility", "aurora--northwind", 2, NOW, 7)
    pb = wire.resident_exchange_to_pb(e)
    assert (pb.request_id, pb.agreement_version, pb.log_index) == ("q-1", 2, 7)
    assert timefmt.parse(pb.released_at) == NOW
