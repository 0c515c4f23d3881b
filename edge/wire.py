"""Conversions between generated protobuf types and domain types, used only at the gRPC edge."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from broker.outcomes import CityOffer, CityOutcome, CityPlan, Exchange, FederationPlan
from citybroker.broker.v1 import broker_pb2
from citybroker.common.v1 import common_pb2
from citybroker.node.v1 import node_pb2
from domain.agreement import Agreement, Appearance, FieldTerms
from domain.errors import InvalidArgument, VerificationError
from domain.plan import QueryPlan
from domain.query import Dimension, Filter, FilterOp, Measure, MeasureKind, Query, QueryKind
from keys import bounded_json, dsse, timefmt

if TYPE_CHECKING:  # node's modules load SQLAlchemy; the operator CLI imports this module
    from node.agreements import StoredAgreement
    from node.consent import ConsentEvent, ConsentRecord
    from node.transparency import Exchange as ResidentExchange

_MEASURES = {
    common_pb2.MEASURE_KIND_COUNT_RECORDS: MeasureKind.COUNT_RECORDS,
    common_pb2.MEASURE_KIND_COUNT_RESIDENTS: MeasureKind.COUNT_RESIDENTS,
    common_pb2.MEASURE_KIND_SUM: MeasureKind.SUM,
    common_pb2.MEASURE_KIND_AVG: MeasureKind.AVG,
    common_pb2.MEASURE_KIND_MIN: MeasureKind.MIN,
    common_pb2.MEASURE_KIND_MAX: MeasureKind.MAX,
}
_MEASURES_PB = {v: k for k, v in _MEASURES.items()}
_OPS = {
    common_pb2.FILTER_OPERATOR_EQUALS: FilterOp.EQUALS,
    common_pb2.FILTER_OPERATOR_IN: FilterOp.IN,
    common_pb2.FILTER_OPERATOR_AT_LEAST: FilterOp.AT_LEAST,
    common_pb2.FILTER_OPERATOR_AT_MOST: FilterOp.AT_MOST,
}
_KINDS: dict[int, QueryKind] = {
    common_pb2.QUERY_KIND_UNSPECIFIED: QueryKind.AGGREGATE,
    common_pb2.QUERY_KIND_AGGREGATE: QueryKind.AGGREGATE,
    common_pb2.QUERY_KIND_ATTRIBUTE_CHECK: QueryKind.ATTRIBUTE_CHECK,
    common_pb2.QUERY_KIND_RECORD_RELEASE: QueryKind.RECORD_RELEASE,
}
_OPS_PB = {v: k for k, v in _OPS.items()}
_KINDS_PB: dict[QueryKind, Any] = {
    v: k for k, v in _KINDS.items() if k != common_pb2.QUERY_KIND_UNSPECIFIED
}


def envelope_to_pb(env: dsse.Envelope) -> common_pb2.Envelope:
    """The Envelope message holding `env` byte for byte, signatures in order."""
    return common_pb2.Envelope(
        payload_type=env.payload_type,
        payload=env.payload,
        signatures=[common_pb2.Signature(keyid=s.keyid, sig=s.sig) for s in env.signatures],
    )


def envelope_from_pb(pb: common_pb2.Envelope) -> dsse.Envelope:
    """The DSSE envelope the message holds, byte for byte; its signatures are not checked."""
    return dsse.Envelope(
        pb.payload_type, pb.payload, tuple(dsse.Signature(s.keyid, s.sig) for s in pb.signatures)
    )


def query_from_pb(pb: common_pb2.Query) -> Query:
    """The query, validated; InvalidArgument for an unknown measure, operator or query kind, and
    Query.validate's errors for a bad shape."""
    measures = []
    for m in pb.measures:
        kind = _MEASURES.get(m.kind)
        if kind is None:
            raise InvalidArgument(f"unknown measure kind {m.kind}", reason="MEASURE_INVALID")
        measures.append(Measure(kind, m.field))
    filters = []
    for f in pb.filters:
        op = _OPS.get(f.operator)
        if op is None:
            raise InvalidArgument(
                f"unknown filter operator {f.operator} on {f.field}", reason="OPERATOR_UNKNOWN"
            )
        filters.append(Filter(f.field, op, tuple(f.values), f.generalisation))
    return Query(
        dataset=pb.dataset,
        purpose=pb.purpose,
        measures=tuple(measures),
        group_by=tuple(Dimension(d.field, d.generalisation) for d in pb.group_by),
        filters=tuple(filters),
        cities=tuple(pb.cities),
        kind=_query_kind(pb.kind),
        subject=pb.subject,
    ).validate()


def _query_kind(value: int) -> QueryKind:
    kind = _KINDS.get(value)
    if kind is None:
        raise InvalidArgument(f"unknown query kind {value}", reason="QUERY_SHAPE_INVALID")
    return kind


def query_to_pb(q: Query) -> common_pb2.Query:
    """The Query message for `q`; query_from_pb gives back an equal query when `q` is valid."""
    return common_pb2.Query(
        dataset=q.dataset,
        purpose=q.purpose,
        measures=[common_pb2.Measure(kind=_MEASURES_PB[m.kind], field=m.field) for m in q.measures],
        group_by=[
            common_pb2.Dimension(field=d.field, generalisation=d.generalisation) for d in q.group_by
        ],
        filters=[
            common_pb2.Filter(
                field=f.field,
                operator=_OPS_PB[f.op],
                values=list(f.values),
                generalisation=f.generalisation,
            )
            for f in q.filters
        ],
        cities=list(q.cities),
        kind=_KINDS_PB[q.kind],
        subject=q.subject,
    )


def plan_to_pb(p: QueryPlan) -> common_pb2.QueryPlan:
    """The QueryPlan message for `p`, its fields and their generalisations in sorted order."""
    return common_pb2.QueryPlan(
        allowed=p.allowed,
        code=p.code,
        reason=p.reason,
        message=p.message,
        agreement_id=p.agreement_id,
        agreement_version=p.agreement_version,
        fields=[
            common_pb2.FieldPlan(
                field=f, appearance=t.appearance.value, generalisations=sorted(t.generalisations)
            )
            for f, t in sorted(p.fields.items())
        ],
        min_cell_size=p.min_cell_size,
        epsilon_per_query=p.epsilon_per_query,
    )


def plan_from_pb(pb: common_pb2.QueryPlan) -> QueryPlan:
    """The plan as the message states it, less fields whose appearance this code does not know."""
    fields = {}
    for f in pb.fields:
        try:
            appearance = Appearance(f.appearance)
        except ValueError:
            continue  # a shape this broker does not know cannot be negotiated to
        fields[f.field] = FieldTerms(appearance, frozenset(f.generalisations))
    return QueryPlan(
        pb.allowed,
        pb.code,
        pb.reason,
        pb.message,
        pb.agreement_id,
        pb.agreement_version,
        fields,
        pb.min_cell_size,
        pb.epsilon_per_query,
    )


# ---- broker ----------------------------------------------------------------------------------
# BrokerService messages <-> the broker's exchange, plan and offer types.

# Every CityStatus value by its lower-case name ("answered", ...), including "unspecified".
CITY_STATUS_NAMES = {
    v: k.removeprefix("CITY_STATUS_").lower() for k, v in broker_pb2.CityStatus.items()
}


def city_outcome_to_pb(o: CityOutcome) -> broker_pb2.CityOutcome:
    """The CityOutcome message for `o`; ValueError if `o.status` names no CityStatus value."""
    return broker_pb2.CityOutcome(
        city_id=o.city,
        status=f"CITY_STATUS_{o.status.upper()}",  # protobuf takes an enum value by its name
        code=o.code,
        reason=o.reason,
        message=o.message,
        signed_result=envelope_to_pb(o.signed_result) if o.signed_result else None,
        log_index=o.log_index,
        result_salt=o.result_salt,
    )


def city_outcome_from_pb(pb: broker_pb2.CityOutcome) -> CityOutcome:
    """A city outcome as the broker reported it (its signed result, if any, not yet verified)."""
    return CityOutcome(
        pb.city_id,
        CITY_STATUS_NAMES.get(pb.status, "unspecified"),
        pb.code,
        pb.reason,
        pb.message,
        envelope_from_pb(pb.signed_result) if pb.HasField("signed_result") else None,
        pb.log_index,
        result_salt=pb.result_salt,
    )


def _agreement_summary_pb(a: Agreement, env: dsse.Envelope) -> broker_pb2.AgreementSummary:
    return broker_pb2.AgreementSummary(
        agreement_id=a.agreement_id,
        version=a.version,
        purposes=sorted(a.purposes),
        datasets=[
            broker_pb2.DatasetTerms(
                dataset=ds,
                fields=[
                    broker_pb2.FieldTerms(
                        field=f,
                        appearance=t.appearance.value,
                        generalisations=sorted(t.generalisations),
                    )
                    for f, t in sorted(fields.items())
                ],
            )
            for ds, fields in sorted(a.datasets.items())
        ],
        min_cell_size=a.min_cell_size,
        valid_from=timefmt.fmt(a.valid_from),
        valid_until=timefmt.fmt(a.valid_until),
        signed_agreement=envelope_to_pb(env),
    )


def city_offer_to_pb(offer: CityOffer) -> broker_pb2.CityOffer:
    """The CityOffer message: the city, its outcome, and each agreement summarised beside its
    signed envelope."""
    return broker_pb2.CityOffer(
        city_id=offer.city,
        name=offer.name,
        jurisdiction=offer.jurisdiction,
        outcome=city_outcome_to_pb(offer.outcome),
        agreements=[_agreement_summary_pb(a, env) for a, env in offer.agreements],
    )


def describe_response_to_pb(offers: list[CityOffer]) -> broker_pb2.DescribeFederationResponse:
    """The DescribeFederationResponse listing `offers` in order."""
    return broker_pb2.DescribeFederationResponse(cities=[city_offer_to_pb(o) for o in offers])


def query_response_to_pb(exchange: Exchange) -> broker_pb2.QueryResponse:
    """The QueryResponse for an exchange: merged cells, city outcomes, signed query, receipt,
    negotiation notes and the records of the verified city results."""
    return broker_pb2.QueryResponse(
        query_id=exchange.request_id,
        cells=[
            common_pb2.Cell(
                key=c.key,
                values=c.values,
                withheld=c.withheld,
                contributing_cities=c.contributing,
                withholding_cities=c.withholding,
            )
            for c in exchange.cells
        ],
        cities=[city_outcome_to_pb(o) for o in exchange.outcomes],
        signed_query=envelope_to_pb(exchange.signed_query),
        receipt=envelope_to_pb(exchange.receipt),
        negotiation_notes=exchange.negotiation,
        query_salt=exchange.query_salt,
        records=[
            common_pb2.ReleasedRecord(city_id=o.city, pseudonym=r["pseudonym"], fields=r["fields"])
            for o in exchange.outcomes
            if o.verified_result
            for r in o.verified_result.get("records", [])
        ],
    )


def federation_plan_to_pb(plan: FederationPlan) -> broker_pb2.PlanQueryResponse:
    """The PlanQueryResponse for a dry run; a city with no plan gets its outcome and no plan."""
    return broker_pb2.PlanQueryResponse(
        negotiated=query_to_pb(plan.negotiated),
        notes=plan.notes,
        cities=[
            broker_pb2.CityPlan(
                city_id=c.city,
                outcome=city_outcome_to_pb(c.outcome),
                plan=plan_to_pb(c.plan) if c.plan else None,
            )
            for c in plan.cities
        ],
    )


def federation_plan_from_pb(pb: broker_pb2.PlanQueryResponse) -> FederationPlan:
    """The dry run as the broker reported it, its negotiated query validated by query_from_pb."""
    return FederationPlan(
        query_from_pb(pb.negotiated),
        list(pb.notes),
        [
            CityPlan(
                c.city_id,
                city_outcome_from_pb(c.outcome),
                plan_from_pb(c.plan) if c.HasField("plan") else None,
            )
            for c in pb.cities
        ],
    )


# ---- node ------------------------------------------------------------------------------------
# AgreementService and ConsentService messages <-> agreements, consent records and exchanges.


def agreement_terms_to_json(terms: Agreement) -> str:
    """The terms as ProposeAgreementRequest.terms_json carries them: the agreement's JSON payload."""
    return json.dumps(terms.to_payload())


def agreement_terms_from_json(text: str) -> Agreement:
    """Proposed terms, checked as a received agreement's are; bad input is InvalidArgument."""
    try:
        terms = bounded_json.loads(text, "terms_json")
    except bounded_json.JsonRefused:
        raise
    except ValueError:
        raise InvalidArgument("terms_json is not JSON", reason="AGREEMENT_MALFORMED") from None
    if not isinstance(terms, dict):
        raise InvalidArgument("terms_json must be an object", reason="AGREEMENT_MALFORMED")
    try:
        return Agreement.from_payload(terms)
    except VerificationError as e:  # the document's own checks, here about caller input
        raise InvalidArgument(e.message, reason=e.reason) from None


def stored_agreement_to_pb(a: StoredAgreement, at: datetime) -> node_pb2.GetAgreementResponse:
    """An agreement as the node holds it, with its status at `at`."""
    return node_pb2.GetAgreementResponse(
        agreement=envelope_to_pb(a.envelope), status=a.status_at(at)
    )


def time_from_pb(text: str, field: str, default: datetime | None = None) -> datetime | None:
    """An RFC 3339 timestamp field; empty means `default`, anything else unparsable is refused."""
    if not text:
        return default
    try:
        return timefmt.parse(text)
    except ValueError as e:
        raise InvalidArgument(f"{field}: {e}", reason="TIMESTAMP_INVALID", field=field) from None


def consent_record_to_pb(r: ConsentRecord) -> node_pb2.ConsentRecord:
    """A stored record, with its state."""
    return node_pb2.ConsentRecord(
        record_id=r.record_id,
        resident_id=r.resident_id,
        purposes=r.purposes,
        recipients=r.recipients,
        data_categories=r.data_categories,
        valid_from=timefmt.fmt(r.valid_from),
        valid_until=timefmt.fmt(r.valid_until) if r.valid_until else "",
        state=r.state.value,
        lawful_basis=r.lawful_basis,
        notice_url=r.notice_url,
        notice_hash=r.notice_hash,
        language=r.language,
        jurisdiction=r.jurisdiction,
        retention_days=r.retention_days,
        collection_method=r.collection_method,
        withdrawal_method=r.withdrawal_method,
    )


def consent_record_from_pb(r: node_pb2.ConsentRecord) -> ConsentRecord:
    """A caller's record: its state is ignored (the registry sets it), empty fields get defaults."""
    from node.consent import ConsentRecord  # not at module level: see TYPE_CHECKING above

    valid_from = time_from_pb(r.valid_from, "valid_from", timefmt.now())
    assert valid_from is not None
    return ConsentRecord(
        record_id=r.record_id,
        resident_id=r.resident_id,
        purposes=tuple(r.purposes),
        recipients=tuple(r.recipients),
        data_categories=tuple(r.data_categories),
        valid_from=valid_from,
        valid_until=time_from_pb(r.valid_until, "valid_until"),
        lawful_basis=r.lawful_basis or "consent",
        notice_url=r.notice_url,
        notice_hash=r.notice_hash,
        language=r.language or "en",
        jurisdiction=r.jurisdiction,
        retention_days=r.retention_days,
        collection_method=r.collection_method,
        withdrawal_method=r.withdrawal_method,
    )


def receipt_to_pb(receipt: bytes) -> common_pb2.Envelope:
    """A stored consent receipt (DSSE JSON) as an Envelope message."""
    return envelope_to_pb(dsse.Envelope.from_json(receipt))


def consent_event_to_pb(e: ConsentEvent) -> node_pb2.ConsentEvent:
    """One event of a record's history, with its receipt."""
    return node_pb2.ConsentEvent(
        event=e.event.value, actor=e.actor, at=timefmt.fmt(e.at), receipt=receipt_to_pb(e.receipt)
    )


def resident_exchange_to_pb(e: ResidentExchange) -> node_pb2.ResidentExchange:
    """One release that used a resident's data."""
    return node_pb2.ResidentExchange(
        request_id=e.request_id,
        partner=e.partner,
        purpose=e.purpose,
        dataset=e.dataset,
        agreement_id=e.agreement_id,
        agreement_version=e.agreement_version,
        released_at=timefmt.fmt(e.released_at),
        log_index=e.log_index,
    )
